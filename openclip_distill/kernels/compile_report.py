"""Offline compile report of the fused similarity-loss kernels for a GPU target (no GPU, no driver needed).

    python -m openclip_distill.kernels.compile_report [--arch sm_90a] [--dims 768] [--dtypes bf16,fp32]
                                                      [--kernels NAME,...] [--configs all|first]

Compiles every kernel x autotune config x dtype with Triton's own compiler (``triton.compile`` on the
kernel's source for ``GPUTarget("cuda", arch, 32)``) and the ``ptxas`` bundled with Triton, and prints one
markdown row per variant: registers per thread, spill bytes (stores + loads, from ``ptxas -v``), shared
memory (Triton's allocation), whether the tile products use Hopper tensor-core MMA (``wgmma`` in the PTX),
and the kinds of atomics in the PTX (``atom.*``/``red.*``; none expected). The variant compiled is the one
a launch would build: all flags as on a GPU (``HAS_COLS`` set, the heavier bidirectional variant; fp32
operands with 3xTF32), pointers 16-byte aligned, and the feature width ``d`` and row strides specialised as
multiples of 16 when ``d`` is (the code depends on ``d`` only through that; every d % 16 == 0 shares one
binary). Exit status 1 when a kernel fails to compile (2 with ``--fail-on-spills`` when one spills).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

KERNELS = ("infonce_stats_forward_kernel", "infonce_grad_panel_kernel", "similarity_kl_stats_forward_kernel",
           "similarity_kl_grad_panel_kernel")
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32", "float32": "fp32"}
_FEATURE_POINTERS = {"rows_ptr", "cols_ptr", "s_rows_ptr", "s_cols_ptr", "t_rows_ptr", "t_cols_ptr", "grad_ptr"}
_FLOAT_SCALARS = {"row_ratio", "target_weight"}
_WIDTH_ARGS = re.compile(r"^(D|D_S|D_T|stride_.*)$")


def _kernel(name):
    from . import triton_infonce_kernels, triton_kl_kernels
    module = triton_infonce_kernels if name.startswith("infonce") else triton_kl_kernels
    return getattr(module, name)


def _constexpr_values(fn, dtype):
    is_fp32 = dtype == "fp32"
    flags = dict(HAS_COLS=True, UPCAST=False, IS_FP32=is_fp32, S_IS_FP32=is_fp32, T_IS_FP32=is_fp32,
                 FP32_PRECISION="tf32x3" if is_fp32 else "ieee")
    return {name: flags[name] for name, p in zip(fn.arg_names, fn.params) if p.is_constexpr and name in flags}


def compile_variant(name, config, dtype, dim, arch):
    """Compile one variant; returns the compiled kernel (``asm`` holds ``ptx`` and ``cubin``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = _kernel(name).fn
    constexprs = {**_constexpr_values(fn, dtype), **config.kwargs}
    signature, attrs = {}, {}
    for index, (arg, param) in enumerate(zip(fn.arg_names, fn.params)):
        if param.is_constexpr:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{dtype}" if arg in _FEATURE_POINTERS else "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif arg in _FLOAT_SCALARS:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
            if dim % 16 == 0 and _WIDTH_ARGS.match(arg):
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn, signature, constexprs, attrs)
    target = GPUTarget("cuda", int(arch.removeprefix("sm_").rstrip("a")), 32)
    return triton.compile(source, target=target, options=dict(num_warps=config.num_warps,
                                                              num_stages=config.num_stages))


def ptxas_usage(ptx: str, arch: str):
    """(registers, spill store bytes + spill load bytes) from the bundled ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas
    capability = int(arch.removeprefix("sm_").rstrip("a"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={arch}", path, "-o",
                               os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    registers = int(re.search(r"Used (\d+) registers", proc.stderr).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
    return registers, int(spills.group(1)) + int(spills.group(2))


def atomic_kinds(ptx: str):
    return sorted(set(re.findall(r"\b((?:atom|red)(?:\.[a-z0-9_]+)+)", ptx)))


def report_rows(kernels, dtypes, dims, arch, configs="all"):
    """Yield one dict per (kernel, config, dtype, d); ``error`` set when compiling failed."""
    for name in kernels:
        candidates = _kernel(name).configs
        if configs == "first":
            candidates = candidates[:1]
        for config in candidates:
            tile = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D"))
            label = f"{tile} w{config.num_warps} s{config.num_stages}"
            for dtype in dtypes:
                compiled = {}
                for dim in dims:
                    row = dict(kernel=name, config=label, dtype=dtype, dim=dim)
                    key = dim % 16 == 0
                    try:
                        if key not in compiled:
                            kernel = compile_variant(name, config, dtype, dim, arch)
                            ptx = kernel.asm["ptx"]
                            registers, spills = ptxas_usage(ptx, arch)
                            compiled[key] = dict(registers=registers, spill_bytes=spills,
                                                 shared=kernel.metadata.shared, wgmma="wgmma.mma_async" in ptx,
                                                 atomics=atomic_kinds(ptx))
                        row.update(compiled[key])
                    except Exception as err:  # noqa: BLE001 -- reported, exit status 1
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                    yield row


def format_row(row) -> str:
    cells = [row["kernel"], row["config"], row["dtype"], str(row["dim"])]
    if "error" in row:
        return "| " + " | ".join(cells + [f"FAILED: {row['error']}", "-", "-", "-", "-"]) + " |"
    cells += [str(row["registers"]), str(row["spill_bytes"]), str(row["shared"]), "yes" if row["wgmma"] else "no",
              ", ".join(row["atomics"]) or "none"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| kernel | config (BLOCK_M x N x D, warps, stages) | dtype | d | registers | spill bytes | shared bytes "
          "| wgmma | atomics |\n|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sm_90a", help="target, e.g. sm_90a (H100/H200), sm_80 (A100)")
    parser.add_argument("--dims", default="768", help="comma list of feature widths d")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma list from bf16,fp16,fp32")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma list from " + ",".join(KERNELS))
    parser.add_argument("--configs", choices=["all", "first"], default="all", help="every autotune config or the first")
    parser.add_argument("--fail-on-spills", action="store_true", help="exit 2 when a variant spills registers")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"sm_\d+a?", args.arch):
        parser.error(f"--arch must look like sm_90a or sm_80, got {args.arch!r}")
    unknown = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; use bf16, fp16, fp32")
    kernels = args.kernels.split(",")
    if set(kernels) - set(KERNELS):
        parser.error(f"--kernels: unknown {sorted(set(kernels) - set(KERNELS))}; use {', '.join(KERNELS)}")
    os.environ.pop("TRITON_INTERPRET", None)  # the configs of the compiled kernels, not the interpreter's
    import triton
    print(f"Triton {triton.__version__}, target {args.arch}, offline (no GPU)")
    print(HEADER)
    failed = spilled = False
    for row in report_rows(kernels, [DTYPES[d] for d in args.dtypes.split(",")], [int(d) for d in
                                                                                   args.dims.split(",")],
                           args.arch, args.configs):
        print(format_row(row), flush=True)
        failed |= "error" in row
        spilled |= row.get("spill_bytes", 0) > 0
    if failed:
        return 1
    return 2 if spilled and args.fail_on_spills else 0


if __name__ == "__main__":
    sys.exit(main())
