"""``autograd.Function`` wrappers around the fused Triton kernels (Liger-Kernel style: kernels live in
``triton_*_kernels.py``, launching and the O(N + M) host-side merging here).

Forward launches one kernel that computes each tile once and leaves per-program partial softmax
statistics; the host merges them (``online_softmax.merge_partial_stats``), completes column statistics
across ranks when distributed, and forms the loss from the statistics (``loss_from_stats.py``). Only the
inputs and fp32 log-sum-exps are saved. Backward launches one kernel that recomputes the tiles and
accumulates fp32 ``G @ cols`` / ``G^T @ rows`` with atomics (summation order, hence the last bits, is
not deterministic).
"""
import torch

from .layout import LossLayout
from .loss_from_stats import complete_column_stats, kl_from_stats, weighted_total
from .online_softmax import log_sum_exp, merge_partial_stats
from .raw_grads import finish_grads
from .triton_autotune import (fp32_dot_precision, grid_split, infonce_forward_configs, kl_forward_configs,
                              largest_grid_split)
from .triton_infonce_kernels import infonce_lse_backward_kernel, infonce_stats_forward_kernel
from .triton_kl_kernels import MAX_SLOTS, NUM_STATS, similarity_kl_backward_kernel, similarity_kl_stats_forward_kernel
from .triton_support import triton_interpreter_enabled

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _operand_pair(left: torch.Tensor, right: torch.Tensor):
    """Both operands of one product in a common kernel dtype, unit stride along features."""
    dtype = torch.promote_types(left.dtype, right.dtype)
    if dtype not in _KERNEL_DTYPES:
        dtype = torch.float32
    same = left is right

    def prepare(x):
        x = x.to(dtype)
        return x if x.stride(-1) == 1 else x.contiguous()

    left = prepare(left)
    return left, (left if same else prepare(right))


def _stats_buffer(num_stats: int, splits: int, length: int, max_slots, like: torch.Tensor) -> torch.Tensor:
    """fp32 [num_stats, splits, length] partial statistics, maxima at -inf and sums at 0."""
    buf = torch.zeros((num_stats, splits, length), device=like.device, dtype=torch.float32)
    for slot in max_slots:
        buf[slot].fill_(float("-inf"))
    return buf


def _grid(num_rows: int, num_cols: int, device):
    return lambda meta: grid_split(num_rows, num_cols, meta["BLOCK_M"], meta["BLOCK_N"], device)


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, device=like.device, dtype=torch.float32)


def _kernel_flags():
    """Compile-time flags shared by every launch."""
    return dict(UPCAST=triton_interpreter_enabled(), FP32_PRECISION=fp32_dot_precision())


class TritonInfoNCE(torch.autograd.Function):
    """Fused symmetric InfoNCE on a local block, ``S = scale * rows cols^T`` (same contract as
    ``chunked.ChunkedInfoNCE``): the kernels handle the log-sum-exp terms, the target logits
    ``S_{i, col_start + i}`` are an O(N d) dot product on the host."""

    @staticmethod
    def forward(ctx, rows, cols, scale, layout: LossLayout):
        left, right = _operand_pair(rows, cols)
        (num_rows, dim), num_cols = left.shape, right.shape[0]
        paired = layout.paired_columns(right, num_rows)
        p_rows, p_cols = largest_grid_split(num_rows, num_cols, infonce_forward_configs(), left.device)
        row_stats = _stats_buffer(2, p_cols, num_rows, (0,), left)
        col_stats = _stats_buffer(2, p_rows, num_cols, (0,), left) if layout.has_columns else _dummy(left)
        infonce_stats_forward_kernel[_grid(num_rows, num_cols, left.device)](
            left, right, scale, row_stats, col_stats, num_rows, num_cols, dim, left.stride(0), right.stride(0),
            row_stats.stride(0), col_stats.stride(0), HAS_COLS=layout.has_columns,
            IS_FP32=left.dtype == torch.float32, **_kernel_flags())
        row_max, (row_sum,) = merge_partial_stats(row_stats[0], [row_stats[1]])
        row_lse = log_sum_exp(row_max, row_sum)
        col_lse = row_lse.new_empty(0)
        if layout.has_columns:
            col_max, (col_sum,) = merge_partial_stats(col_stats[0], [col_stats[1]])
            (col_max,), ((col_sum,),) = complete_column_stats(layout, [col_max], [[col_sum]])
            col_lse = log_sum_exp(col_max, col_sum)
        target_logits = scale * torch.dot(left.float().reshape(-1), paired.float().reshape(-1))
        ctx.save_for_backward(rows, cols, scale, row_lse, col_lse)
        ctx.layout = layout
        return weighted_total(layout, row_lse, col_lse) - (layout.row_weight + layout.col_weight) * target_logits

    @staticmethod
    def backward(ctx, grad_output):
        rows, cols, scale, row_lse, col_lse = ctx.saved_tensors
        layout = ctx.layout
        need_rows, need_cols, need_scale = ctx.needs_input_grad[:3]
        left, right = _operand_pair(rows, cols)
        (num_rows, dim), num_cols = left.shape, right.shape[0]
        need_raw_rows = need_rows or need_scale
        raw_rows = left.new_zeros((num_rows, dim), dtype=torch.float32) if need_raw_rows else _dummy(left)
        raw_cols = left.new_zeros((num_cols, dim), dtype=torch.float32) if need_cols else _dummy(left)
        infonce_lse_backward_kernel[_grid(num_rows, num_cols, left.device)](
            left, right, scale, row_lse, col_lse if layout.has_columns else _dummy(left), raw_rows, raw_cols,
            num_rows, num_cols, dim, left.stride(0), right.stride(0), float(layout.row_weight),
            float(layout.col_weight), HAS_COLS=layout.has_columns, NEED_D_ROWS=need_raw_rows, NEED_D_COLS=need_cols,
            IS_FP32=left.dtype == torch.float32, **_kernel_flags())
        left_fp32, target_weight = left.float(), layout.row_weight + layout.col_weight
        if need_raw_rows:
            raw_rows.sub_(layout.paired_columns(right, num_rows).float(), alpha=target_weight)
        if need_cols:
            raw_cols[layout.col_start:layout.col_stop].sub_(left_fp32, alpha=target_weight)
        grads = finish_grads(grad_output, 1.0, scale, left_fp32, raw_rows if need_raw_rows else None,
                             raw_cols if need_cols else None, rows, cols, need_rows, need_scale)
        return grads + (None,)


class TritonSimilarityKL(torch.autograd.Function):
    """Fused DIME-FM similarity KL on a local block (same contract as ``chunked.ChunkedSimilarityKL``)."""

    @staticmethod
    def forward(ctx, student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                layout: LossLayout):
        s_left, s_right = _operand_pair(student_rows, student_cols)
        t_left, t_right = _operand_pair(teacher_rows, teacher_cols)
        num_rows, num_cols = s_left.shape[0], s_right.shape[0]
        p_rows, p_cols = largest_grid_split(num_rows, num_cols, kl_forward_configs(), s_left.device)
        row_stats = _stats_buffer(NUM_STATS, p_cols, num_rows, MAX_SLOTS, s_left)
        col_stats = (_stats_buffer(NUM_STATS, p_rows, num_cols, MAX_SLOTS, s_left) if layout.has_columns
                     else _dummy(s_left))
        similarity_kl_stats_forward_kernel[_grid(num_rows, num_cols, s_left.device)](
            s_left, s_right, t_left, t_right, student_mult, teacher_mult, row_stats, col_stats,
            num_rows, num_cols, s_left.shape[1], t_left.shape[1], s_left.stride(0), s_right.stride(0),
            t_left.stride(0), t_right.stride(0), row_stats.stride(0), col_stats.stride(0),
            HAS_COLS=layout.has_columns, S_IS_FP32=s_left.dtype == torch.float32,
            T_IS_FP32=t_left.dtype == torch.float32, **_kernel_flags())
        row_kl, row_lse_t, row_lse_s = kl_from_stats(*_merged_kl_stats(row_stats))
        col_kl = col_lse_t = col_lse_s = row_kl.new_empty(0)
        if layout.has_columns:
            max_t, sum_t, wsum_t, max_s, sum_s = _merged_kl_stats(col_stats)
            (max_t, max_s), ((sum_t, wsum_t), (sum_s,)) = complete_column_stats(
                layout, [max_t, max_s], [[sum_t, wsum_t], [sum_s]])
            col_kl, col_lse_t, col_lse_s = kl_from_stats(max_t, sum_t, wsum_t, max_s, sum_s)
        lse = torch.cat([row_lse_t, row_lse_s, col_lse_t, col_lse_s])
        ctx.save_for_backward(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult, lse)
        ctx.layout = layout
        return weighted_total(layout, row_kl, col_kl)

    @staticmethod
    def backward(ctx, grad_output):
        student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult, lse = ctx.saved_tensors
        layout = ctx.layout
        need_rows, need_cols = ctx.needs_input_grad[:2]
        need_scale = ctx.needs_input_grad[4]
        s_left, s_right = _operand_pair(student_rows, student_cols)
        t_left, t_right = _operand_pair(teacher_rows, teacher_cols)
        (num_rows, dim), num_cols = s_left.shape, s_right.shape[0]
        need_raw_rows = need_rows or need_scale
        raw_rows = s_left.new_zeros((num_rows, dim), dtype=torch.float32) if need_raw_rows else _dummy(s_left)
        raw_cols = s_left.new_zeros((num_cols, dim), dtype=torch.float32) if need_cols else _dummy(s_left)
        similarity_kl_backward_kernel[_grid(num_rows, num_cols, s_left.device)](
            s_left, s_right, t_left, t_right, student_mult, teacher_mult, lse, raw_rows, raw_cols,
            num_rows, num_cols, dim, t_left.shape[1], s_left.stride(0), s_right.stride(0), t_left.stride(0),
            t_right.stride(0), float(layout.row_weight), float(layout.col_weight), HAS_COLS=layout.has_columns,
            NEED_D_ROWS=need_raw_rows, NEED_D_COLS=need_cols, S_IS_FP32=s_left.dtype == torch.float32,
            T_IS_FP32=t_left.dtype == torch.float32, **_kernel_flags())
        grads = finish_grads(grad_output, 1.0, student_mult, s_left.float(), raw_rows if need_raw_rows else None,
                             raw_cols if need_cols else None, student_rows, student_cols, need_rows, need_scale)
        return grads[:2] + (None, None, grads[2], None, None)


def _merged_kl_stats(stats: torch.Tensor):
    """Merge [5, P, L] partial KL statistics over P -> (max_t, sum_t, wsum_t, max_s, sum_s)."""
    max_t, (sum_t, wsum_t) = merge_partial_stats(stats[0], [stats[1], stats[2]])
    max_s, (sum_s,) = merge_partial_stats(stats[3], [stats[4]])
    return max_t, sum_t, wsum_t, max_s, sum_s


def infonce_triton(rows, cols, scale, layout: LossLayout):
    """Fused Triton version of ``chunked.infonce_chunked``."""
    return TritonInfoNCE.apply(rows, cols, scale, layout)


def similarity_kl_triton(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                         layout: LossLayout):
    """Fused Triton version of ``chunked.similarity_kl_chunked``."""
    return TritonSimilarityKL.apply(student_rows, student_cols, teacher_rows, teacher_cols, student_mult,
                                    teacher_mult, layout)
