"""Autotune configurations, autotune keys and grid splitting for the fused similarity-loss kernels.

On GPU the candidate tiles are sized for H100/H200 (228 KB shared memory, 132 SMs, 64K 32-bit registers
per SM; 16-bit inputs use wgmma-sized 64/128 tiles). Every candidate was compiled for sm_90a with Triton's
own compiler and ``ptxas`` and kept only if it spills no registers for bf16, fp16 and fp32 inputs
(``python -m openclip_distill.kernels.compile_report``). Under ``TRITON_INTERPRET=1`` a single tiny
config keeps the CPU interpreter fast and still exercises several ragged blocks on small test shapes.

Forward grid ``(P_r, P_c)``: ``P_r`` programs strided over row blocks, ``P_c`` over column blocks, with
``P_r * P_c`` about ``2 x SMs``. Each program leaves partial softmax statistics for its rows
(``stats x P_c x N`` fp32) and its columns (``stats x P_r x M``). ``P_r / P_c = sqrt(N / M)`` minimises
their sum: ``2 stats sqrt(T N M)`` floats for ``T`` programs, e.g. 42 MB for the KL (5 stats) at
N = M = 65536 and 120 MB at N = 65536, M = 524288 gathered columns.

Autotune keys hold the sizes *and every compile-time variant flag* (``HAS_COLS``, ``IS_FP32``, ...): a
config tuned for one variant is never reused for another (Triton adds the pointer dtypes itself).
"""
import functools
import math

import torch
import triton

from .triton_support import triton_interpreter_enabled

_INTERPRETER_TARGET_PROGRAMS = 4

# Compile-time flags of the kernels that are not tile sizes (part of every autotune key).
FORWARD_FLAGS = ["HAS_COLS", "UPCAST", "IS_FP32", "FP32_PRECISION"]
KL_FORWARD_FLAGS = ["HAS_COLS", "UPCAST", "S_IS_FP32", "T_IS_FP32", "FP32_PRECISION"]
GRAD_PANEL_FLAGS = ["HAS_COLS", "UPCAST", "IS_FP32", "FP32_PRECISION"]
KL_GRAD_PANEL_FLAGS = ["HAS_COLS", "UPCAST", "S_IS_FP32", "T_IS_FP32", "FP32_PRECISION"]


def _configs(shapes):
    if triton_interpreter_enabled():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for m, n, d, w, s in shapes]


# (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages). The forward keeps per-row and per-column running
# statistics besides the fp32 tile(s), the grad panels only the tile(s). Each list holds only shapes that
# compile without register spills for bf16, fp16 and fp32 on sm_90a (see the compile report in BENCHMARKS.md;
# e.g. the KL forward at 64x64x64 with 4 warps spills 208 bytes for bf16, the fp32 InfoNCE grad panel at
# 128x64x64 with 4 warps 492 bytes).
INFONCE_FORWARD_SHAPES = [(128, 64, 64, 8, 3), (64, 64, 64, 4, 3), (64, 128, 32, 8, 3), (128, 64, 32, 8, 3)]
INFONCE_GRAD_PANEL_SHAPES = [(128, 128, 64, 8, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 128, 32, 8, 3)]
KL_FORWARD_SHAPES = [(64, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 8, 4)]
KL_GRAD_PANEL_SHAPES = [(128, 64, 64, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3)]


def infonce_forward_configs():
    return _configs(INFONCE_FORWARD_SHAPES)


def infonce_grad_panel_configs():
    return _configs(INFONCE_GRAD_PANEL_SHAPES)


def kl_forward_configs():
    return _configs(KL_FORWARD_SHAPES)


def kl_grad_panel_configs():
    return _configs(KL_GRAD_PANEL_SHAPES)


@functools.lru_cache(maxsize=None)
def _program_budget(device_index: int) -> int:
    """Target number of programs per launch for the device (2 per SM)."""
    if triton_interpreter_enabled():
        return _INTERPRETER_TARGET_PROGRAMS
    return 2 * torch.cuda.get_device_properties(device_index).multi_processor_count


def split_programs(num_rows: int, num_cols: int, block_m: int, block_n: int, target: int):
    """``(P_r, P_c)`` with ``P_r P_c ~ target`` and ``P_r / P_c ~ sqrt(N / M)`` (smallest partial statistics)."""
    row_blocks, col_blocks = triton.cdiv(num_rows, block_m), triton.cdiv(num_cols, block_n)
    ideal_rows = round(math.sqrt(target * num_rows / max(num_cols, 1)))
    row_programs = max(1, min(row_blocks, ideal_rows, target))
    col_programs = max(1, min(col_blocks, triton.cdiv(target, row_programs)))
    return row_programs, col_programs


def grid_split(num_rows: int, num_cols: int, block_m: int, block_n: int, device: torch.device):
    """``(P_r, P_c)`` for a forward launch with the given tile sizes on ``device``."""
    index = device.index if device.type == "cuda" and device.index is not None else 0
    return split_programs(num_rows, num_cols, block_m, block_n, _program_budget(index))


def largest_grid_split(num_rows: int, num_cols: int, configs, device: torch.device):
    """Element-wise largest ``(P_r, P_c)`` over the autotune candidates (sizes the partial-stat buffers)."""
    splits = [grid_split(num_rows, num_cols, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], device) for c in configs]
    return max(s[0] for s in splits), max(s[1] for s in splits)


def _read_fp32_matmul_precision() -> str:
    """torch's fp32 matmul setting as ``"tf32"`` or ``"ieee"``; prefers the ``fp32_precision`` API (torch >= 2.9).

    Reading the legacy ``allow_tf32`` raises in torch 2.14 once a process has used the new API, so it is
    only the fallback, and no read ever raises out of here (default: ``"ieee"``).
    """
    matmul = torch.backends.cuda.matmul
    try:
        precision = getattr(matmul, "fp32_precision", None)
        if precision in ("tf32", "ieee"):
            return precision
    except Exception:  # noqa: BLE001 -- a setting we cannot read means the default
        pass
    try:
        return "tf32" if matmul.allow_tf32 else "ieee"
    except Exception:  # noqa: BLE001
        return "ieee"


def fp32_dot_precision(is_fp32: bool) -> str:
    """``tl.dot`` ``input_precision`` for a launch; torch's matmul setting is read only for fp32 operands.

    fp32 inputs: 3xTF32 (about fp32-accurate) unless torch allows TF32 matmuls (plain TF32 rounds inputs to
    10 mantissa bits: at logit scale 100 that moves logits by ~0.05). 16-bit inputs ignore the flag, so they
    get a constant (no read of torch's settings, no extra compiled variant).
    """
    if triton_interpreter_enabled() or not is_fp32:
        return "ieee"
    return "tf32" if _read_fp32_matmul_precision() == "tf32" else "tf32x3"
