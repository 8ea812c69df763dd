"""Raw Triton kernels for the DIME-FM similarity KL (teacher A = t * Ta Tb^T, student B = s * Sa Sb^T).

Same grid and partial-statistics scheme as ``triton_infonce_kernels.py``; one pass over the feature dims
computes the teacher and the student tile of the same (rows, cols) block, so A and B are never stored.

* forward, per row and (partially) per column, fp32: ``m_A, s_A = sum exp(A - m_A), w_A = sum exp(A - m_A)(A - B),
  m_B, s_B``; then ``KL = w_A / s_A - lse_A + lse_B`` (see ``loss_from_stats.py``).
* backward, one panel of rows at a time: each program owns one tile of
  ``G = r (q - p) + (q' - p')`` (p, q row softmaxes of A, B; p', q' column softmaxes; ``r = row_weight /
  col_weight``; rows only: ``G = q - p``), written in the student operand dtype; the host reduces the panel
  with the GEMMs ``G @ Sb`` and ``G^T @ Sa`` and applies the loss weight (~1/N) to their O(N d) results, never
  to G (fp16 subnormals). No atomics. Teachers get no gradient.
"""
import triton
import triton.language as tl

from .triton_autotune import KL_FORWARD_FLAGS, KL_GRAD_PANEL_FLAGS, kl_forward_configs, kl_grad_panel_configs
from .triton_tiles import logits_tile, store_grad_tile

# Statistic slots along the first axis of the stats buffers (host and kernel).
NUM_STATS = 5
MAX_SLOTS = (0, 3)
MAX_T = tl.constexpr(0)
SUM_T = tl.constexpr(1)
WSUM_T = tl.constexpr(2)
MAX_S = tl.constexpr(3)
SUM_S = tl.constexpr(4)


@triton.jit
def _online_update(old_max, old_sum, tile, axis: tl.constexpr):
    """Merge a -inf-masked tile into running (max, sum exp) along ``axis``; returns (max, sum, exp tile, factor)."""
    if axis == 1:
        new_max = tl.maximum(old_max, tl.max(tile, axis=1))
        exps = tl.exp(tile - new_max[:, None])
    else:
        new_max = tl.maximum(old_max, tl.max(tile, axis=0))
        exps = tl.exp(tile - new_max[None, :])
    factor = tl.exp(old_max - new_max)
    return new_max, old_sum * factor + tl.sum(exps, axis=axis), exps, factor


@triton.autotune(configs=kl_forward_configs(), key=["N", "M", "D_S", "D_T"] + KL_FORWARD_FLAGS,
                 restore_value=["row_stats_ptr", "col_stats_ptr"])
@triton.jit
def similarity_kl_stats_forward_kernel(
        s_rows_ptr, s_cols_ptr, t_rows_ptr, t_cols_ptr, s_mult_ptr, t_mult_ptr, row_stats_ptr, col_stats_ptr,
        N, M, D_S, D_T, stride_s_rows, stride_s_cols, stride_t_rows, stride_t_cols,
        row_stat_stride, col_stat_stride,
        HAS_COLS: tl.constexpr, UPCAST: tl.constexpr, S_IS_FP32: tl.constexpr, T_IS_FP32: tl.constexpr,
        FP32_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """row_stats: [5, P_c, N]; col_stats: [5, P_r, M] (slots MAX_T, SUM_T, WSUM_T, MAX_S, SUM_S)."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    num_pr = tl.num_programs(0)
    num_pc = tl.num_programs(1)
    s_mult = tl.load(s_mult_ptr).to(tl.float32)
    t_mult = tl.load(t_mult_ptr).to(tl.float32)
    for rb in range(pr, tl.cdiv(N, BLOCK_M), num_pr):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        max_t = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        max_s = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        sum_t = tl.zeros((BLOCK_M,), dtype=tl.float32)
        wsum_t = tl.zeros((BLOCK_M,), dtype=tl.float32)
        sum_s = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for cb in range(pc, tl.cdiv(M, BLOCK_N), num_pc):
            cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < M
            a = logits_tile(t_rows_ptr, t_cols_ptr, rows, cols, N, M, D_T, stride_t_rows, stride_t_cols,
                            BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, T_IS_FP32, FP32_PRECISION) * t_mult
            b = logits_tile(s_rows_ptr, s_cols_ptr, rows, cols, N, M, D_S, stride_s_rows, stride_s_cols,
                            BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, S_IS_FP32, FP32_PRECISION) * s_mult
            diff = a - b  # finite everywhere (padding loads as 0); masked exps are 0
            max_t, sum_t, exps, factor = _online_update(max_t, sum_t, tl.where(col_ok[None, :], a, float("-inf")), 1)
            wsum_t = wsum_t * factor + tl.sum(exps * diff, axis=1)
            max_s, sum_s, exps, factor = _online_update(max_s, sum_s, tl.where(col_ok[None, :], b, float("-inf")), 1)
            if HAS_COLS:
                slot = pr * M + cols
                seen = col_ok & (rb != pr)  # first row block of this program: start from (-inf, 0)
                old_max_t = tl.load(col_stats_ptr + MAX_T * col_stat_stride + slot, mask=seen, other=float("-inf"))
                old_sum_t = tl.load(col_stats_ptr + SUM_T * col_stat_stride + slot, mask=seen, other=0.0)
                old_wsum_t = tl.load(col_stats_ptr + WSUM_T * col_stat_stride + slot, mask=seen, other=0.0)
                old_max_s = tl.load(col_stats_ptr + MAX_S * col_stat_stride + slot, mask=seen, other=float("-inf"))
                old_sum_s = tl.load(col_stats_ptr + SUM_S * col_stat_stride + slot, mask=seen, other=0.0)
                c_max_t, c_sum_t, exps, factor = _online_update(
                    old_max_t, old_sum_t, tl.where(row_ok[:, None], a, float("-inf")), 0)
                c_wsum_t = old_wsum_t * factor + tl.sum(exps * diff, axis=0)
                c_max_s, c_sum_s, exps, factor = _online_update(
                    old_max_s, old_sum_s, tl.where(row_ok[:, None], b, float("-inf")), 0)
                tl.store(col_stats_ptr + MAX_T * col_stat_stride + slot, c_max_t, mask=col_ok)
                tl.store(col_stats_ptr + SUM_T * col_stat_stride + slot, c_sum_t, mask=col_ok)
                tl.store(col_stats_ptr + WSUM_T * col_stat_stride + slot, c_wsum_t, mask=col_ok)
                tl.store(col_stats_ptr + MAX_S * col_stat_stride + slot, c_max_s, mask=col_ok)
                tl.store(col_stats_ptr + SUM_S * col_stat_stride + slot, c_sum_s, mask=col_ok)
        slot = pc * N + rows
        tl.store(row_stats_ptr + MAX_T * row_stat_stride + slot, max_t, mask=row_ok)
        tl.store(row_stats_ptr + SUM_T * row_stat_stride + slot, sum_t, mask=row_ok)
        tl.store(row_stats_ptr + WSUM_T * row_stat_stride + slot, wsum_t, mask=row_ok)
        tl.store(row_stats_ptr + MAX_S * row_stat_stride + slot, max_s, mask=row_ok)
        tl.store(row_stats_ptr + SUM_S * row_stat_stride + slot, sum_s, mask=row_ok)


@triton.autotune(configs=kl_grad_panel_configs(), key=["M", "D_S", "D_T"] + KL_GRAD_PANEL_FLAGS)
@triton.jit
def similarity_kl_grad_panel_kernel(
        s_rows_ptr, s_cols_ptr, t_rows_ptr, t_cols_ptr, s_mult_ptr, t_mult_ptr, row_lse_ptr, col_lse_ptr, grad_ptr,
        P, M, D_S, D_T, stride_s_rows, stride_s_cols, stride_t_rows, stride_t_cols, stride_grad, row_ratio,
        HAS_COLS: tl.constexpr, UPCAST: tl.constexpr, S_IS_FP32: tl.constexpr, T_IS_FP32: tl.constexpr,
        FP32_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad[P, M] = dL/dB / weight for the panel's P rows; grid (row blocks, column blocks).

    row_lse: fp32 [2, P] (teacher, student) of the panel's rows, stride P; col_lse: fp32 [2, M]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < P
    col_ok = cols < M
    s_mult = tl.load(s_mult_ptr).to(tl.float32)
    t_mult = tl.load(t_mult_ptr).to(tl.float32)
    a = logits_tile(t_rows_ptr, t_cols_ptr, rows, cols, P, M, D_T, stride_t_rows, stride_t_cols,
                    BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, T_IS_FP32, FP32_PRECISION) * t_mult
    b = logits_tile(s_rows_ptr, s_cols_ptr, rows, cols, P, M, D_S, stride_s_rows, stride_s_cols,
                    BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, S_IS_FP32, FP32_PRECISION) * s_mult
    valid = row_ok[:, None] & col_ok[None, :]
    a = tl.where(valid, a, float("-inf"))  # padding: every softmax entry below is exp(-inf) = 0
    b = tl.where(valid, b, float("-inf"))
    row_lse_t = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0)
    row_lse_s = tl.load(row_lse_ptr + P + rows, mask=row_ok, other=0.0)
    grad = row_ratio * (tl.exp(b - row_lse_s[:, None]) - tl.exp(a - row_lse_t[:, None]))
    if HAS_COLS:
        col_lse_t = tl.load(col_lse_ptr + cols, mask=col_ok, other=0.0)
        col_lse_s = tl.load(col_lse_ptr + M + cols, mask=col_ok, other=0.0)
        grad += tl.exp(b - col_lse_s[None, :]) - tl.exp(a - col_lse_t[None, :])
    store_grad_tile(grad_ptr, grad, rows, cols, P, M, stride_grad)
