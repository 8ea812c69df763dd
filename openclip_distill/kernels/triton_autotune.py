"""Autotune configurations and grid splitting for the fused similarity-loss kernels.

On GPU the candidate tiles are sized for H100 (228 KB shared memory, 132 SMs; 16-bit inputs use
wgmma-sized 64/128 tiles). Under ``TRITON_INTERPRET=1`` a single tiny config keeps the CPU interpreter
fast and still exercises multiple, ragged blocks on small test shapes.

Grid: ``(P_r, P_c)`` programs, ``P_r = min(row blocks, R)`` strided over row blocks and ``P_c`` splitting the
column blocks so that ``P_r * P_c`` reaches about ``2 x SMs`` even for small N. The forward's partial
statistics therefore take ``stats x (P_c N + P_r M)`` fp32 (transient, freed after the forward).
"""
import functools

import torch
import triton

from .triton_support import triton_interpreter_enabled

_INTERPRETER_ROW_PROGRAMS, _INTERPRETER_TARGET_PROGRAMS = 2, 4


def _configs(shapes):
    if triton_interpreter_enabled():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for m, n, d, w, s in shapes]


def infonce_forward_configs():
    return _configs([(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3),
                     (64, 64, 64, 4, 3), (128, 256, 32, 8, 3)])


def infonce_backward_configs():
    return _configs([(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 3), (128, 128, 32, 8, 3),
                     (64, 64, 128, 4, 2)])


def kl_forward_configs():
    # Two fp32 accumulators (teacher and student tile) per program: smaller tiles than InfoNCE.
    return _configs([(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 3), (128, 128, 32, 8, 3),
                     (64, 64, 128, 4, 2)])


def kl_backward_configs():
    return _configs([(64, 64, 64, 4, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 32, 4, 4)])


@functools.lru_cache(maxsize=None)
def _program_budget(device_index: int):
    """(max row programs, target total programs) for the device."""
    if triton_interpreter_enabled():
        return _INTERPRETER_ROW_PROGRAMS, _INTERPRETER_TARGET_PROGRAMS
    sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    return 2 * sms, 2 * sms


def grid_split(num_rows: int, num_cols: int, block_m: int, block_n: int, device: torch.device):
    """``(P_r, P_c)`` for a launch with the given tile sizes."""
    max_rows, target = _program_budget(device.index if device.type == "cuda" and device.index is not None else 0)
    row_blocks, col_blocks = triton.cdiv(num_rows, block_m), triton.cdiv(num_cols, block_n)
    row_programs = max(1, min(row_blocks, max_rows))
    col_programs = max(1, min(col_blocks, triton.cdiv(target, row_programs)))
    return row_programs, col_programs


def largest_grid_split(num_rows: int, num_cols: int, configs, device: torch.device):
    """Element-wise largest ``(P_r, P_c)`` over the autotune candidates (sizes the partial-stat buffers)."""
    splits = [grid_split(num_rows, num_cols, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], device) for c in configs]
    return max(s[0] for s in splits), max(s[1] for s in splits)


def fp32_dot_precision() -> str:
    """``tl.dot`` precision for fp32 inputs: 3xTF32 (about fp32-accurate) unless TF32 matmuls are allowed.

    Plain TF32 rounds inputs to 10 mantissa bits: at logit scale 100 that moves logits by ~0.05.
    """
    if triton_interpreter_enabled():
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
