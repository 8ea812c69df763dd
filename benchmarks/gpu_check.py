"""One-shot GPU check of the fused similarity-loss kernels (``impl="triton"``): about 5 minutes on one H100/H200.

    python benchmarks/gpu_check.py                               # on a CUDA machine, prints markdown tables
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --dry-run  # CPU, tiny sizes, kernels in the interpreter

Sections (each a table, all in one run):

(a) correctness of the compiled kernels against ``chunked`` (fp32 arithmetic on the same input values) for
    both losses and every mode: InfoNCE; the KL rectangular bidirectional, rows only, ``student_b is
    teacher_b`` (frozen teacher text tower) and self-similarity (bidirectional and rows only); fp32, bf16 and
    fp16 at N = 2048, d = 768, and bf16 at N = 16384. Relative errors ``||triton - chunked|| / ||chunked||``
    per gradient, against the bounds the tests derive (fp32: 1e-4 = 16 x scale 100 x 2^-24 rounded up; 16-bit
    inputs: plus 8 unit round-offs of the dtype for the rounding of the tile gradient and of the result);
(b) bitwise determinism: two runs of each loss (bf16, N = 16384) give identical losses and gradients;
(c) performance, bf16, d = 768: forward+backward time (median of ``--reps`` after one warm-up that also
    autotunes), % of the device's dense bf16 peak counting 8 N^2 d FLOPs for InfoNCE and 12 N^2 d for the KL,
    peak memory beyond the inputs (CUDA allocator), the autotune choice of each kernel, for ``triton`` at
    N = 16384 and 65536 and ``naive``/``chunked`` where they fit (an OOM is reported and skipped).

Exit status 1 when a correctness or determinism check fails. Targets (not asserted): N = 65536 under 1 GB
beyond the inputs, faster than ``naive`` at N = 16384, >= 50% of the bf16 dense peak at N = 65536.
"""
import argparse
import os
import statistics
import sys
import time

# Dense bf16 tensor-core peaks (FLOP/s) by device name fragment; --peak-flops overrides.
BF16_DENSE_PEAKS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)]
KL_MODES = [  # (name, student_b mode, bidirectional, temperature, column fraction)
    ("rect-bi", "own", True, 1.0, 0.75),
    ("rows-only", "own", False, 1.0, 0.75),
    ("teacher_b", "teacher_b", True, 3.0, 0.75),
    ("self-sim", "self", True, 7.0, 1.0),
    ("self-sim-rows", "self", False, 7.0, 1.0),
]
U16 = {"bfloat16": 2.0 ** -9, "float16": 2.0 ** -11}
FP32_RTOL = 1e-4


def rtol(dtype_name: str) -> float:
    return FP32_RTOL + 8 * U16.get(dtype_name, 0.0)


def _clustered(n, d, generator, dtype, device):
    """Unit rows with cosines ~0.5-0.9 (like CLIP embeddings), so softmaxes at scale 100 spread out."""
    import torch
    import torch.nn.functional as F
    center = torch.randn(d, generator=generator)
    x = torch.randn(n, d, generator=generator) + 1.5 * center / center.norm() * d ** 0.5
    return F.normalize(x, dim=-1).to(device=device, dtype=dtype)


def make_infonce(n, d, dtype, device, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    images = _clustered(n, d, g, dtype, device).requires_grad_()
    texts = _clustered(n, d, g, dtype, device).requires_grad_()
    scale = torch.tensor(100.0, device=device, requires_grad=True)
    return dict(images=images, texts=texts, scale=scale)


def make_kl(mode, n, d, dtype, device, seed=0):
    import torch
    name, student_b_mode, bidirectional, temperature, col_fraction = mode
    g = torch.Generator().manual_seed(seed)
    m = max(1, int(n * col_fraction))
    student_a = _clustered(n, d, g, dtype, device).requires_grad_()
    teacher_a = _clustered(n, d, g, dtype, device)
    wrt = dict(student_a=student_a)
    if student_b_mode == "own":
        student_b = _clustered(m, d, g, dtype, device).requires_grad_()
        teacher_b = _clustered(m, d, g, dtype, device)
        wrt["student_b"] = student_b
    elif student_b_mode == "teacher_b":
        teacher_b = _clustered(m, d, g, dtype, device)
        student_b = teacher_b
    else:
        student_b, teacher_b = student_a, teacher_a
    wrt["scale"] = torch.tensor(100.0, device=device, requires_grad=True)
    args = (student_a, student_b, teacher_a, teacher_b)
    kwargs = dict(teacher_scale=100.0, temperature=temperature, bidirectional=bidirectional)
    return args, kwargs, wrt


def run_infonce(inputs, impl):
    """(loss, {name: grad}) of one forward+backward."""
    import torch
    from openclip_distill.kernels import contrastive_loss
    loss = contrastive_loss(inputs["images"], inputs["texts"], inputs["scale"], impl=impl, distributed=False)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return loss.detach(), dict(zip(inputs, grads))


def run_kl(case, impl):
    import torch
    from openclip_distill.kernels import similarity_kl_loss
    args, kwargs, wrt = case
    loss = similarity_kl_loss(*args, student_scale=wrt["scale"], impl=impl, distributed=False, **kwargs)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return loss.detach(), dict(zip(wrt, grads))


def relative_error(got, want) -> float:
    got, want = got.double(), want.double()
    ref = want.norm().item()
    return (got - want).norm().item() / ref if ref > 0 else (got - want).norm().item()


def correctness(sizes, dtypes, big_n, dim, device):
    """Section (a): rows of (loss, mode, dtype, N, loss error, max gradient error, bound, ok)."""
    rows = []
    plan = [(n, dt) for n in sizes for dt in dtypes] + ([(big_n, "bfloat16")] if big_n else [])
    for n, dtype_name in plan:
        import torch
        dtype = getattr(torch, dtype_name)
        cases = [("infonce", "paired", lambda impl: run_infonce(make_infonce(n, dim, dtype, device), impl))]
        cases += [("kl", mode[0], (lambda impl, mode=mode: run_kl(make_kl(mode, n, dim, dtype, device), impl)))
                  for mode in KL_MODES]
        for loss_name, mode_name, run in cases:
            got_loss, got = run("triton")
            want_loss, want = run("chunked")
            loss_err = abs(got_loss.item() - want_loss.item()) / max(1.0, abs(want_loss.item()))
            grad_err = max(relative_error(got[k], want[k]) for k in want)
            bound = rtol(dtype_name)
            ok = loss_err <= FP32_RTOL and grad_err <= bound
            rows.append((loss_name, mode_name, dtype_name, n, loss_err, grad_err, bound, ok))
            print(f"| {loss_name} | {mode_name} | {dtype_name} | {n} | {loss_err:.2e} | {grad_err:.2e} | {bound:.1e} "
                  f"| {'ok' if ok else 'FAIL'} |", flush=True)
    return rows


def determinism(n, dim, device):
    """Section (b): two triton runs, bitwise."""
    import torch
    results = []
    for loss_name in ("infonce", "kl"):
        def once():
            if loss_name == "infonce":
                return run_infonce(make_infonce(n, dim, torch.bfloat16, device), "triton")
            return run_kl(make_kl(KL_MODES[0], n, dim, torch.bfloat16, device), "triton")
        (l1, g1), (l2, g2) = once(), once()
        same = torch.equal(l1, l2) and all(torch.equal(g1[k], g2[k]) for k in g1)
        results.append((loss_name, same))
        print(f"| {loss_name} | bfloat16 | {n} | {'bitwise equal' if same else 'DIFFERENT'} |", flush=True)
    return results


def _is_oom(err) -> bool:
    import torch
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _autotune_choices():
    from openclip_distill.kernels import triton_infonce_kernels as ik
    from openclip_distill.kernels import triton_kl_kernels as kk
    kernels = [ik.infonce_stats_forward_kernel, ik.infonce_grad_panel_kernel, kk.similarity_kl_stats_forward_kernel,
               kk.similarity_kl_grad_panel_kernel]
    out = []
    for kernel in kernels:
        config = getattr(kernel, "best_config", None)
        if config is not None:
            tile = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D"))
            out.append(f"{kernel.fn.__name__.replace('_kernel', '')}: {tile} w{config.num_warps} s{config.num_stages}")
    return out


def time_and_memory(loss_name, impl, n, dim, device, reps):
    """(median ms, peak bytes beyond the inputs) of forward+backward, or an error string."""
    import torch
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    try:
        if loss_name == "infonce":
            inputs = make_infonce(n, dim, torch.bfloat16, device)
            step = lambda: run_infonce(inputs, impl)  # noqa: E731
        else:
            case = make_kl(KL_MODES[0][:4] + (1.0,), n, dim, torch.bfloat16, device)
            step = lambda: run_kl(case, impl)  # noqa: E731
        step()  # warm-up: compiles and autotunes
        sync()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        times = []
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() - before if on_cuda else None
        return 1e3 * statistics.median(times), peak
    except Exception as err:  # noqa: BLE001 -- OOMs are reported, the rest re-raised
        if not _is_oom(err):
            raise
        if on_cuda:
            torch.cuda.empty_cache()
        return "OOM", None


def performance(sizes, impls_by_size, dim, device, reps, peak_flops):
    for loss_name in ("infonce", "kl"):
        flops_per = 8 if loss_name == "infonce" else 12
        for n in sizes:
            for impl in impls_by_size(n):
                ms, peak = time_and_memory(loss_name, impl, n, dim, device, reps)
                if isinstance(ms, str):
                    print(f"| {loss_name} | {impl} | {n} | {ms} | - | - | - |", flush=True)
                    continue
                rate = flops_per * n * n * dim / (ms / 1e3)
                pct = f"{100 * rate / peak_flops:.1f}" if peak_flops else "n/a"
                mem = f"{peak / 2 ** 20:.0f}" if peak is not None else "n/a"
                print(f"| {loss_name} | {impl} | {n} | {ms:.2f} | {rate / 1e12:.1f} | {pct} | {mem} |", flush=True)
    for line in _autotune_choices():
        print(f"autotune choice (last key) {line}")


def device_peak(device: str, override):
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    import torch
    name = torch.cuda.get_device_name(device)
    for fragment, peak in BF16_DENSE_PEAKS:
        if fragment in name:
            return peak
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, kernels in Triton's interpreter (checks the script, not the GPU)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per configuration")
    parser.add_argument("--peak-flops", type=float, default=None, help="dense bf16 peak of the device (FLOP/s)")
    parser.add_argument("--sections", default="a,b,c", help="comma list of sections to run (a, b, c)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"a", "b", "c"}:
        parser.error(f"--sections: unknown {sorted(sections - {'a', 'b', 'c'})}; use a, b, c")
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--dry-run runs the kernels in Triton's interpreter: start it with TRITON_INTERPRET=1 in "
                         "the environment (Triton reads it when first imported)")
        device, dim, sizes, big_n, det_n, perf_sizes = "cpu", 24, [24], 0, 20, [32]
    else:
        import torch
        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --dry-run (with TRITON_INTERPRET=1) to check the script on CPU")
        if os.environ.get("TRITON_INTERPRET") == "1":
            parser.error("TRITON_INTERPRET=1 is set: unset it to check the compiled kernels")
        device, dim, sizes, big_n, det_n, perf_sizes = "cuda", args.dim, [2048], 16384, 16384, [16384, 65536]
    import torch
    start = time.time()
    peak = device_peak(device, args.peak_flops)
    name = torch.cuda.get_device_name(device) if device == "cuda" else "CPU (dry run, Triton interpreter)"
    import triton
    print(f"device: {name}; torch {torch.__version__}, triton {triton.__version__}; d = {dim}; "
          f"bf16 dense peak used: {peak / 1e12:.0f} TFLOP/s" if peak else f"device: {name}; peak unknown")
    failures = 0
    if "a" in sections:
        print("\n(a) triton vs chunked\n\n| loss | mode | dtype | N | loss rel. err | max grad rel. err | bound | |\n"
              "|---|---|---|---|---|---|---|---|")
        rows = correctness(sizes, ["float32", "bfloat16", "float16"], big_n, dim, device)
        failures += sum(not r[-1] for r in rows)
        print(f"[{time.time() - start:.0f} s]")
    if "b" in sections:
        print("\n(b) determinism\n\n| loss | dtype | N | two runs |\n|---|---|---|---|")
        failures += sum(not same for _, same in determinism(det_n, dim, device))
        print(f"[{time.time() - start:.0f} s]")
    if "c" in sections:
        print("\n(c) performance, bfloat16 (fwd+bwd)\n\n| loss | impl | N | ms | TFLOP/s | % peak | peak MiB beyond inputs |"
              "\n|---|---|---|---|---|---|---|")
        performance(perf_sizes, lambda n: ["triton", "chunked", "naive"], dim, device, args.reps, peak)
        print(f"[{time.time() - start:.0f} s]")
    print(f"\n{failures} check(s) failed" if failures else "\nall checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
