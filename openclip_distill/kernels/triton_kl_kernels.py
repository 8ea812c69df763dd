"""Raw Triton kernels for the DIME-FM similarity KL (teacher A = t * Ta Tb^T, student B = s * Sa Sb^T).

Same grid and partial-statistics scheme as ``triton_infonce_kernels.py``; one pass over the feature dims
computes the teacher and the student tile of the same (rows, cols) block, so A and B are never stored.

* forward, per row and (partially) per column, fp32: ``m_A, s_A = sum exp(A - m_A), w_A = sum exp(A - m_A)(A - B),
  m_B, s_B``; then ``KL = w_A / s_A - lse_A + lse_B`` (see ``loss_from_stats.py``).
* backward: ``G = row_weight (q - p) + col_weight (q' - p')`` (p, q row softmaxes of A, B; p', q' column
  softmaxes) and atomic fp32 ``G @ Sb``, ``G^T @ Sa``. Teachers get no gradient.
"""
import triton
import triton.language as tl

from .triton_autotune import kl_backward_configs, kl_forward_configs
from .triton_tiles import accumulate_grad_dots, logits_tile

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


@triton.autotune(configs=kl_forward_configs(), key=["N", "M", "D_S", "D_T"],
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


@triton.autotune(configs=kl_backward_configs(), key=["N", "M", "D_S", "D_T"],
                 reset_to_zero=["d_rows_ptr", "d_cols_ptr"])
@triton.jit
def similarity_kl_backward_kernel(
        s_rows_ptr, s_cols_ptr, t_rows_ptr, t_cols_ptr, s_mult_ptr, t_mult_ptr, lse_ptr, d_rows_ptr, d_cols_ptr,
        N, M, D_S, D_T, stride_s_rows, stride_s_cols, stride_t_rows, stride_t_cols, row_weight, col_weight,
        HAS_COLS: tl.constexpr, NEED_D_ROWS: tl.constexpr, NEED_D_COLS: tl.constexpr, UPCAST: tl.constexpr,
        S_IS_FP32: tl.constexpr, T_IS_FP32: tl.constexpr, FP32_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """lse: fp32 [row lse_A (N), row lse_B (N), col lse_A (M), col lse_B (M)] concatenated.
    d_rows += G @ Sb, d_cols += G^T @ Sa with G = dL/dB (fp32 accumulators)."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    num_pr = tl.num_programs(0)
    num_pc = tl.num_programs(1)
    s_mult = tl.load(s_mult_ptr).to(tl.float32)
    t_mult = tl.load(t_mult_ptr).to(tl.float32)
    for rb in range(pr, tl.cdiv(N, BLOCK_M), num_pr):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        row_lse_t = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        row_lse_s = tl.load(lse_ptr + N + rows, mask=row_ok, other=0.0)
        for cb in range(pc, tl.cdiv(M, BLOCK_N), num_pc):
            cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < M
            a = logits_tile(t_rows_ptr, t_cols_ptr, rows, cols, N, M, D_T, stride_t_rows, stride_t_cols,
                            BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, T_IS_FP32, FP32_PRECISION) * t_mult
            b = logits_tile(s_rows_ptr, s_cols_ptr, rows, cols, N, M, D_S, stride_s_rows, stride_s_cols,
                            BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, S_IS_FP32, FP32_PRECISION) * s_mult
            valid = row_ok[:, None] & col_ok[None, :]
            a = tl.where(valid, a, float("-inf"))  # padding: every softmax entry below is exp(-inf) = 0
            b = tl.where(valid, b, float("-inf"))
            grad = row_weight * (tl.exp(b - row_lse_s[:, None]) - tl.exp(a - row_lse_t[:, None]))
            if HAS_COLS:
                col_lse_t = tl.load(lse_ptr + 2 * N + cols, mask=col_ok, other=0.0)
                col_lse_s = tl.load(lse_ptr + 2 * N + M + cols, mask=col_ok, other=0.0)
                grad += col_weight * (tl.exp(b - col_lse_s[None, :]) - tl.exp(a - col_lse_t[None, :]))
            accumulate_grad_dots(grad, s_rows_ptr, s_cols_ptr, d_rows_ptr, d_cols_ptr, rows, cols, N, M, D_S,
                                 stride_s_rows, stride_s_cols, NEED_D_ROWS, NEED_D_COLS, BLOCK_D, UPCAST, S_IS_FP32,
                                 FP32_PRECISION)
