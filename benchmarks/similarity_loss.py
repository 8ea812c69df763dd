"""Benchmark the similarity-matrix losses: forward+backward time, peak memory, share of matmul peak.

    python benchmarks/similarity_loss.py --impls naive,chunked --sizes 2048,4096,8192 --dims 512 \
        --dtypes float32 --device cpu --loss both
    python benchmarks/similarity_loss.py --loss kl-ensemble --teachers 2 ...   # the KL against a teacher ensemble

For every (loss, N = M, d, dtype) and implementation it prints

* ``fwd+bwd ms``: median over ``--reps`` timed runs after ``--warmup`` runs (CUDA: synchronised). The
  implementations of one configuration are timed in one process, *interleaved* rep by rep, so that a
  shared machine's changing load hits all of them alike,
* ``peak MiB``: memory the loss needed above its inputs. CUDA: ``max_memory_allocated`` minus what was
  allocated before the call. CPU: each configuration runs in a fresh subprocess (glibc told to mmap every
  allocation >= 128 KiB, so freed memory leaves the RSS); the kernel's RSS high-water mark is reset
  (``/proc/self/clear_refs``) after a tiny warm-up call (one-time lazy initialisations) and after the inputs
  exist, and ``VmHWM - VmRSS`` is read after one fwd+bwd, input gradients included (the same for every
  implementation),
* ``x naive``: time and memory relative to ``naive`` measured in the same run,
* ``TFLOP/s`` and ``% peak``: useful work counted as 8 N M d FLOPs for InfoNCE (S, recomputed S, two
  gradient matmuls) and 12 N M d for the KL (teacher and student tiles twice, two gradient matmuls),
  against ``--peak-flops`` (CUDA default: H100 SXM dense bf16 989e12) or, on CPU, the best rate of a
  4096^3 matmul of that dtype measured in the same run.

A naive configuration that runs out of memory is reported as ``OOM`` (on CPU it is not started when its
estimated footprint exceeds the available memory) and the run continues.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

H100_BF16_DENSE_FLOPS = 989e12
NAIVE_LOGIT_MATRICES = {"infonce": 6, "kl": 12, "kl-ensemble": 16}  # rough count of live fp32 N x M tensors
ENSEMBLE_SCALES = (100.0, 50.0, 30.0, 20.0)  # teacher k's logit scale in "kl-ensemble" (K = --teachers)

from machine import describe_device  # benchmarks/machine.py (scripts run from benchmarks/)


def _teachers(loss: str) -> int:
    """K of a "kl-ensemble:K" configuration (1 otherwise)."""
    return int(loss.split(":")[1]) if loss.startswith("kl-ensemble") else 1


def _flops(loss: str, n: int, m: int, d: int) -> float:
    """Useful work: 8 N M d (InfoNCE), 4 (K + 1) N M d + 4 N M d for the KL against K teachers (each
    teacher's and the student's tile twice, two gradient matmuls; 12 N M d for one teacher)."""
    return (8 if loss == "infonce" else 4 * (_teachers(loss) + 1) + 4) * n * m * d


def _make_inputs(loss, n, d, dtype, device):
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device="cpu").manual_seed(0)

    def unit(rows):
        return F.normalize(torch.randn(rows, d, generator=g), dim=-1).to(device=device, dtype=dtype)

    if loss == "infonce":
        return dict(images=unit(n).requires_grad_(), texts=unit(n).requires_grad_(),
                    scale=torch.tensor(100.0, device=device, requires_grad=True))
    if loss.startswith("kl-ensemble"):
        k = _teachers(loss)
        return dict(student_a=unit(n).requires_grad_(), student_b=unit(n).requires_grad_(),
                    teacher_a=[unit(n) for _ in range(k)], teacher_b=[unit(n) for _ in range(k)],
                    scale=torch.tensor(100.0, device=device, requires_grad=True))
    return dict(student_a=unit(n).requires_grad_(), student_b=unit(n).requires_grad_(), teacher_a=unit(n),
                teacher_b=unit(n), scale=torch.tensor(100.0, device=device, requires_grad=True))


def _step(loss, impl, inputs):
    from openclip_distill.kernels import contrastive_loss, similarity_kl_loss
    if loss == "infonce":
        out = contrastive_loss(inputs["images"], inputs["texts"], inputs["scale"], impl=impl, distributed=False)
    else:
        k = _teachers(loss)
        out = similarity_kl_loss(inputs["student_a"], inputs["student_b"], inputs["teacher_a"], inputs["teacher_b"],
                                 student_scale=inputs["scale"], impl=impl, distributed=False,
                                 teacher_scale=list(ENSEMBLE_SCALES[:k]) if loss.startswith("kl-ensemble") else 100.0)
    out.backward()
    for x in inputs.values():
        if torch_is_tensor(x):
            x.grad = None


def torch_is_tensor(x) -> bool:
    import torch
    return isinstance(x, torch.Tensor)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _is_oom(err: BaseException) -> bool:
    import torch
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err))


def measure_memory(loss, impl, n, d, dtype_name, device):
    """Peak bytes one fwd+bwd needs above its inputs (see module docstring), or ``{'error': 'OOM'}``."""
    import torch
    _step(loss, impl, _make_inputs(loss, 8, d, getattr(torch, dtype_name), device))  # one-time lazy inits
    inputs = _make_inputs(loss, n, d, getattr(torch, dtype_name), device)
    try:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            _step(loss, impl, inputs)
            torch.cuda.synchronize()
            return {"peak_bytes": torch.cuda.max_memory_allocated() - before}
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        _step(loss, impl, inputs)
        return {"peak_bytes": (_proc_status_kib("VmHWM") - before) * 1024}
    except Exception as err:  # noqa: BLE001 -- only OOMs are reported, the rest re-raised
        if _is_oom(err):
            return {"error": "OOM"}
        raise


def measure_times(loss, impls, n, d, dtype_name, device, warmup, reps):
    """Median fwd+bwd milliseconds per implementation, timed interleaved; ``None`` for one that OOMs."""
    import torch
    inputs = _make_inputs(loss, n, d, getattr(torch, dtype_name), device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    live, times = list(impls), {impl: [] for impl in impls}
    for rep in range(warmup + reps):
        for impl in list(live):
            try:
                sync()
                start = time.perf_counter()
                _step(loss, impl, inputs)
                sync()
            except Exception as err:  # noqa: BLE001
                if not _is_oom(err):
                    raise
                live.remove(impl)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            if rep >= warmup:
                times[impl].append(time.perf_counter() - start)
    return {impl: (1e3 * statistics.median(times[impl]) if impl in live else None) for impl in impls}


def run_child(kind, args):
    """Run ``measure_memory`` / ``measure_times`` in a fresh interpreter and return its JSON answer."""
    env = dict(os.environ)
    if kind == "memory":  # freed memory must leave the RSS; timing runs keep glibc's defaults
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    import torch
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(torch.get_num_threads()), "--child",
           json.dumps([kind] + list(args))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode in (-9, 137):  # killed by the kernel's OOM killer
        return {"error": "OOM"}
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_matmul_peak(dtype_name: str, size: int = 4096, reps: int = 3) -> float:
    """Best FLOP/s of a size^3 matmul in this process (the CPU's practical matmul peak)."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * size ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impls", default="naive,chunked", help="comma list from naive,chunked,triton")
    parser.add_argument("--sizes", default="2048,4096,8192", help="comma list of N (= M)")
    parser.add_argument("--dims", default="512", help="comma list of feature widths d")
    parser.add_argument("--dtypes", default="float32", help="comma list from float32,bfloat16,float16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loss", choices=["infonce", "kl", "both", "kl-ensemble"], default="both",
                        help="kl-ensemble: the KL against --teachers teachers (MobileCLIP's average after softmax)")
    parser.add_argument("--teachers", type=int, default=2, help="K of --loss kl-ensemble (at most 4)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="matmul peak in FLOP/s (default: 989e12 on CUDA, measured on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); children inherit it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.child:
        kind, *child_args = json.loads(args.child)
        print(json.dumps((measure_memory if kind == "memory" else measure_times)(*child_args)))
        return

    impls = args.impls.split(",")
    losses = ["infonce", "kl"] if args.loss == "both" else [args.loss]
    if args.loss == "kl-ensemble":
        if not 1 <= args.teachers <= len(ENSEMBLE_SCALES):
            parser.error(f"--teachers must be in 1..{len(ENSEMBLE_SCALES)}")
        losses = [f"kl-ensemble:{args.teachers}"]
    on_cuda = args.device.startswith("cuda")
    print(f"device: {describe_device(args.device)}")
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    peaks = {}
    for dtype_name in args.dtypes.split(","):
        peaks[dtype_name] = args.peak_flops or (H100_BF16_DENSE_FLOPS if on_cuda else cpu_matmul_peak(dtype_name))
        print(f"matmul peak used for {dtype_name}: {peaks[dtype_name] / 1e9:.1f} GFLOP/s"
              + ("" if args.peak_flops or on_cuda else " (measured, 4096^3 matmul)"))
    header = ("| loss | impl | N | d | dtype | fwd+bwd ms | peak MiB | time x naive | mem x naive | TFLOP/s "
              "| % peak |\n|---|---|---|---|---|---|---|---|---|---|---|")
    print(header)
    for loss in losses:
        for dtype_name in args.dtypes.split(","):
            for d in map(int, args.dims.split(",")):
                for n in map(int, args.sizes.split(",")):
                    results = {}
                    for impl in impls:
                        est = NAIVE_LOGIT_MATRICES[loss.split(":")[0]] * n * n * 4
                        if impl == "triton" and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                            results[impl] = {"error": "n/a (triton needs --device cuda)"}
                        elif impl == "naive" and not on_cuda and est > 0.8 * _available_bytes():
                            results[impl] = {"error": f"OOM (est. {est / 2**30:.1f} GiB)"}
                        elif on_cuda:  # the CUDA allocator tracks its own peak: no fresh process needed
                            results[impl] = measure_memory(loss, impl, n, d, dtype_name, args.device)
                        else:
                            results[impl] = run_child("memory", [loss, impl, n, d, dtype_name, args.device])
                    timed = [impl for impl in impls if "error" not in results[impl]]
                    time_args = [loss, timed, n, d, dtype_name, args.device, args.warmup, args.reps]
                    times = measure_times(*time_args) if on_cuda else run_child("times", time_args)
                    for impl in timed:
                        if times[impl] is None:
                            results[impl] = {"error": "OOM"}
                        else:
                            results[impl]["ms"] = times[impl]
                    for impl in impls:
                        print(_row(loss, impl, n, d, dtype_name, results[impl], results.get("naive"),
                                   peaks[dtype_name]), flush=True)
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")


def _row(loss, impl, n, d, dtype_name, res, naive, peak):
    cells = [loss, impl, str(n), str(d), dtype_name]
    if "error" in res:
        return "| " + " | ".join(cells + [res["error"]] + ["-"] * 5) + " |"
    rate = _flops(loss, n, n, d) / (res["ms"] / 1e3)
    if naive and "error" not in naive:
        t_ratio = f"{res['ms'] / naive['ms']:.2f}"
        m_ratio = f"{res['peak_bytes'] / naive['peak_bytes']:.3f}" if naive["peak_bytes"] > 0 else "-"
    else:
        t_ratio = m_ratio = "-"
    cells += [f"{res['ms']:.0f}", f"{res['peak_bytes'] / 2**20:.0f}", t_ratio, m_ratio, f"{rate / 1e12:.3f}",
              f"{100 * rate / peak:.1f}"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
