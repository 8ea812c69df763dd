"""Raw Triton kernels for the log-sum-exp half of symmetric InfoNCE (CLIP; tiling as in Inf-CL).

Grid ``(P_r, P_c)``: program (pr, pc) takes row blocks pr, pr + P_r, ... and, for each, column blocks
pc, pc + P_c, ... . For ``S = scale * rows cols^T`` it keeps, in fp32:

* forward: per-row online (max, sum exp) over its column blocks -> ``row_stats[pc, :]`` and per-column
  online (max, sum exp) over its row blocks -> ``col_stats[pr, :]`` (exclusive slots, no atomics); the
  host merges the P_c / P_r partials. S is never stored.
* backward, one panel of rows at a time: recomputes each tile of the panel and writes the loss gradient
  tile ``G = r * exp(S - lse_row) + exp(S - lse_col) - (1 + r) [j = t(i)]`` (``r = row_weight / col_weight``,
  ``t(i) = TARGET_OFFSET + i``; rows only: ``exp(S - lse_row) - [j = t(i)]``) in the operand dtype. Every
  tile has one owner (no atomics); the host reduces the panel with two GEMMs. The loss weight ``col_weight``
  (or ``row_weight``) is *not* in G: at large N it is ~1/N and would push fp16 tiles into subnormals; the
  host applies it to the O(N d) GEMM results. The diagonal target is folded in *before* the cast: for a
  confident row ``p_ii ~ 1`` and ``p_ii - 1`` would vanish if subtracted after rounding to bf16.

Padding is masked to -inf before every max (rows for column stats, columns for row stats).
"""
import triton
import triton.language as tl

from .triton_autotune import FORWARD_FLAGS, GRAD_PANEL_FLAGS, infonce_forward_configs, infonce_grad_panel_configs
from .triton_tiles import logits_tile, store_grad_tile


@triton.autotune(configs=infonce_forward_configs(), key=["N", "M", "D"] + FORWARD_FLAGS,
                 restore_value=["row_stats_ptr", "col_stats_ptr"])
@triton.jit
def infonce_stats_forward_kernel(
        rows_ptr, cols_ptr, scale_ptr, row_stats_ptr, col_stats_ptr,
        N, M, D, stride_rows, stride_cols, row_stats_split_stride, col_stats_split_stride,
        HAS_COLS: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr, FP32_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """row_stats: [2 (max, sum), P_c, N]; col_stats: [2 (max, sum), P_r, M] (fp32)."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    num_pr = tl.num_programs(0)
    num_pc = tl.num_programs(1)
    scale = tl.load(scale_ptr).to(tl.float32)
    for rb in range(pr, tl.cdiv(N, BLOCK_M), num_pr):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for cb in range(pc, tl.cdiv(M, BLOCK_N), num_pc):
            cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < M
            s = logits_tile(rows_ptr, cols_ptr, rows, cols, N, M, D, stride_rows, stride_cols,
                            BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, IS_FP32, FP32_PRECISION) * scale
            s_row = tl.where(col_ok[None, :], s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s_row, axis=1))
            row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(s_row - new_max[:, None]), axis=1)
            row_max = new_max
            if HAS_COLS:
                s_col = tl.where(row_ok[:, None], s, float("-inf"))
                slot = pr * M + cols
                seen = col_ok & (rb != pr)  # first row block of this program: start from (-inf, 0)
                old_max = tl.load(col_stats_ptr + slot, mask=seen, other=float("-inf"))
                old_sum = tl.load(col_stats_ptr + col_stats_split_stride + slot, mask=seen, other=0.0)
                col_max = tl.maximum(old_max, tl.max(s_col, axis=0))
                col_sum = old_sum * tl.exp(old_max - col_max) + tl.sum(tl.exp(s_col - col_max[None, :]), axis=0)
                tl.store(col_stats_ptr + slot, col_max, mask=col_ok)
                tl.store(col_stats_ptr + col_stats_split_stride + slot, col_sum, mask=col_ok)
        slot = pc * N + rows
        tl.store(row_stats_ptr + slot, row_max, mask=row_ok)
        tl.store(row_stats_ptr + row_stats_split_stride + slot, row_sum, mask=row_ok)


@triton.autotune(configs=infonce_grad_panel_configs(), key=["M", "D"] + GRAD_PANEL_FLAGS)
@triton.jit
def infonce_grad_panel_kernel(
        rows_ptr, cols_ptr, scale_ptr, row_lse_ptr, col_lse_ptr, grad_ptr,
        P, M, D, stride_rows, stride_cols, stride_grad, row_ratio, target_weight, target_offset,
        HAS_COLS: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr, FP32_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad[P, M] (operand dtype) = dL/dS / weight for the panel's P rows; grid (row blocks, column blocks)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < P
    col_ok = cols < M
    scale = tl.load(scale_ptr).to(tl.float32)
    s = logits_tile(rows_ptr, cols_ptr, rows, cols, P, M, D, stride_rows, stride_cols,
                    BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, IS_FP32, FP32_PRECISION) * scale
    s = tl.where(row_ok[:, None] & col_ok[None, :], s, float("-inf"))  # padding -> exp(-inf) = 0
    row_lse = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0)
    grad = row_ratio * tl.exp(s - row_lse[:, None])
    if HAS_COLS:
        col_lse = tl.load(col_lse_ptr + cols, mask=col_ok, other=0.0)
        grad += tl.exp(s - col_lse[None, :])
    grad -= tl.where(cols[None, :] == (rows + target_offset)[:, None], target_weight, 0.0)
    store_grad_tile(grad_ptr, grad, rows, cols, P, M, stride_grad)
