"""``autograd.Function`` wrappers around the fused Triton kernels (Liger-Kernel style: kernels live in
``triton_*_kernels.py``, launching and the O(N + M) host-side merging here).

Forward launches one kernel that computes each tile once and leaves per-program partial softmax
statistics (every slot written by one program); the host merges them (``online_softmax.merge_partial_stats``),
completes column statistics across ranks when distributed, and forms the loss from the statistics
(``loss_from_stats.py``). Only the inputs and fp32 log-sum-exps are saved.

Backward walks the local rows in panels of ``panel_rows`` rows (``PANEL_BYTES`` of gradient tile at most):
one kernel recomputes the panel's tiles and writes the tile gradient ``G`` (without the ~1/N loss weight,
diagonal target folded in) in the operand dtype, every tile owned by one program; two GEMMs reduce it,
``d rows[panel] = G @ cols`` (complete per panel) and ``d cols += G^T @ rows[panel]`` (fp32 running sum),
both with fp32 results. No atomics: two runs give bitwise equal results. Memory beyond inputs and input
gradients: the panel, an fp32 ``M x d`` column accumulator and O(N + M) statistics.

Under ``impl='auto'`` (``fallback=True``) a backward whose kernels fail recomputes with ``chunked``.
"""
import torch

from . import chunked
from .fp32_gemm import addmm_fp32_, matmul_fp32
from .layout import LossLayout
from .loss_from_stats import complete_column_stats, kl_from_stats, weighted_total
from .online_softmax import log_sum_exp, merge_partial_stats
from .triton_autotune import fp32_dot_precision, grid_split, infonce_forward_configs, kl_forward_configs, \
    largest_grid_split
from .triton_infonce_kernels import infonce_grad_panel_kernel, infonce_stats_forward_kernel
from .triton_kl_kernels import MAX_SLOTS, NUM_STATS, similarity_kl_grad_panel_kernel, \
    similarity_kl_stats_forward_kernel
from .triton_support import is_kernel_failure, launch_device, record_triton_failure, triton_interpreter_enabled

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest gradient panel (bytes). 256 MiB = 2048 bf16 rows at M = 65536: the column GEMM's fp32 running sum
# (read and written once per panel) then costs < 1/2 of the panel GEMM's compute time on H100.
PANEL_BYTES = 256 * 2 ** 20


def panel_rows(num_rows: int, num_cols: int, element_size: int) -> int:
    """Rows per backward panel: ``PANEL_BYTES`` of gradient tile, a multiple of 128, at most ``num_rows``."""
    rows = PANEL_BYTES // max(1, num_cols * element_size)
    if rows >= 128:
        rows -= rows % 128
    return max(1, min(num_rows, rows))


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


def _forward_grid(num_rows: int, num_cols: int, device):
    return lambda meta: grid_split(num_rows, num_cols, meta["BLOCK_M"], meta["BLOCK_N"], device)


def _panel_grid(num_rows: int, num_cols: int):
    return lambda meta: (-(-num_rows // meta["BLOCK_M"]), -(-num_cols // meta["BLOCK_N"]))


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, device=like.device, dtype=torch.float32)


def kernel_flags(*operands):
    """Compile-time flags shared by every launch; torch's TF32 setting is read only for fp32 operands."""
    is_fp32 = any(x.dtype == torch.float32 for x in operands)
    return dict(UPCAST=triton_interpreter_enabled(), FP32_PRECISION=fp32_dot_precision(is_fp32))


def _recompute_with_chunked(fn, inputs, needs, grad_output, extra):
    """Input gradients of ``fn(*inputs, *extra)`` by the chunked implementation (auto's fallback)."""
    leaves = [x.detach().requires_grad_(need) if isinstance(x, torch.Tensor) else x for x, need in zip(inputs, needs)]
    with torch.enable_grad():
        loss = fn(*leaves, *extra)
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        grads = iter(torch.autograd.grad(loss, wanted, grad_output, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


class TritonInfoNCE(torch.autograd.Function):
    """Fused symmetric InfoNCE on a local block, ``S = scale * rows cols^T`` (same contract as
    ``chunked.ChunkedInfoNCE``): the forward kernel computes the log-sum-exps, the target logits
    ``S_{i, col_start + i}`` are an O(N d) dot product on the host."""

    @staticmethod
    def forward(ctx, rows, cols, scale, layout: LossLayout, fallback: bool):
        left, right = _operand_pair(rows, cols)
        (num_rows, dim), num_cols = left.shape, right.shape[0]
        paired = layout.paired_columns(right, num_rows)
        p_rows, p_cols = largest_grid_split(num_rows, num_cols, infonce_forward_configs(), left.device)
        row_stats = _stats_buffer(2, p_cols, num_rows, (0,), left)
        col_stats = _stats_buffer(2, p_rows, num_cols, (0,), left) if layout.has_columns else _dummy(left)
        with launch_device(left.device):
            infonce_stats_forward_kernel[_forward_grid(num_rows, num_cols, left.device)](
                left, right, scale, row_stats, col_stats, num_rows, num_cols, dim, left.stride(0), right.stride(0),
                row_stats.stride(0), col_stats.stride(0), HAS_COLS=layout.has_columns,
                IS_FP32=left.dtype == torch.float32, **kernel_flags(left))
        row_max, (row_sum,) = merge_partial_stats(row_stats[0], [row_stats[1]])
        row_lse = log_sum_exp(row_max, row_sum)
        col_lse = row_lse.new_empty(0)
        if layout.has_columns:
            col_max, (col_sum,) = merge_partial_stats(col_stats[0], [col_stats[1]])
            (col_max,), ((col_sum,),) = complete_column_stats(layout, [col_max], [[col_sum]])
            col_lse = log_sum_exp(col_max, col_sum)
        target_logits = scale * torch.dot(left.float().reshape(-1), paired.float().reshape(-1))
        ctx.save_for_backward(rows, cols, scale, row_lse, col_lse)
        ctx.layout, ctx.fallback = layout, fallback
        return weighted_total(layout, row_lse, col_lse) - (layout.row_weight + layout.col_weight) * target_logits

    @staticmethod
    def backward(ctx, grad_output):
        rows, cols, scale, row_lse, col_lse = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        try:
            grads = _infonce_backward(ctx.layout, rows, cols, scale, row_lse, col_lse, grad_output, *needs)
        except Exception as err:  # noqa: BLE001 -- auto's fallback, re-raised otherwise
            if not (ctx.fallback and is_kernel_failure(err)):
                raise
            record_triton_failure(err)
            grads = _recompute_with_chunked(chunked.ChunkedInfoNCE.apply, (rows, cols, scale), needs, grad_output,
                                            (ctx.layout, chunked.DEFAULT_CHUNK_ROWS))
        return grads + (None, None)


def _reduce_gradient_panels(write_panel, left, right, rows_dtype, cols_dtype, factor, upstream, need_rows,
                            need_cols, need_scale):
    """The backward's two GEMMs over gradient panels (no atomics: every output block has one owner).

    ``write_panel(start, stop, panel)`` launches the kernel that writes ``dL/dS`` for rows
    ``start:stop`` into ``panel`` (the input dtype); then ``rows grad = panel @ right`` (fp32 out) and
    the columns' ``grad += panel^T @ left_rows`` accumulate in fp32; the scale's gradient is
    ``sum(left * raw_rows)``. Returns ``(grad_rows, grad_cols, grad_scale)`` times ``factor``/``upstream``."""
    (num_rows, dim), num_cols = left.shape, right.shape[0]
    grad_rows = left.new_empty((num_rows, dim), dtype=rows_dtype) if need_rows else None
    raw_cols = left.new_zeros((num_cols, dim), dtype=torch.float32) if need_cols else None
    scale_sum = left.new_zeros((), dtype=torch.float32)
    step = panel_rows(num_rows, num_cols, left.element_size())
    panel = left.new_empty((step, num_cols))
    with launch_device(left.device):
        for start in range(0, num_rows, step):
            stop = min(num_rows, start + step)
            grad, panel_left = panel[: stop - start], left[start:stop]
            write_panel(start, stop, grad)
            if need_rows or need_scale:
                raw = matmul_fp32(grad, right)
                if need_scale:
                    scale_sum += torch.dot(panel_left.float().reshape(-1), raw.reshape(-1))
                if need_rows:
                    grad_rows[start:stop] = (raw * factor).to(rows_dtype)
            if need_cols:
                addmm_fp32_(raw_cols, grad.T, panel_left)
    grad_cols = raw_cols.mul_(factor).to(cols_dtype) if need_cols else None
    return grad_rows, grad_cols, (scale_sum * upstream if need_scale else None)


def _infonce_backward(layout, rows, cols, scale, row_lse, col_lse, grad_output, need_rows, need_cols, need_scale):
    left, right = _operand_pair(rows, cols)
    dim, num_cols = left.shape[1], right.shape[0]
    weight, ratio = layout.tile_weights()
    target_weight = (layout.row_weight + layout.col_weight) / weight
    upstream = grad_output.float() * weight
    col_lse_arg = col_lse if layout.has_columns else _dummy(left)

    def write_panel(start, stop, grad):
        infonce_grad_panel_kernel[_panel_grid(stop - start, num_cols)](
            left[start:stop], right, scale, row_lse[start:stop], col_lse_arg, grad, stop - start, num_cols, dim,
            left.stride(0), right.stride(0), grad.stride(0), float(ratio), float(target_weight),
            start + layout.col_start, HAS_COLS=layout.has_columns, IS_FP32=left.dtype == torch.float32,
            **kernel_flags(left))

    return _reduce_gradient_panels(write_panel, left, right, rows.dtype, cols.dtype, scale * upstream, upstream,
                                   need_rows, need_cols, need_scale)


class TritonSimilarityKL(torch.autograd.Function):
    """Fused DIME-FM similarity KL on a local block (same contract as ``chunked.ChunkedSimilarityKL``)."""

    @staticmethod
    def forward(ctx, student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                layout: LossLayout, fallback: bool):
        s_left, s_right = _operand_pair(student_rows, student_cols)
        t_left, t_right = _operand_pair(teacher_rows, teacher_cols)
        num_rows, num_cols = s_left.shape[0], s_right.shape[0]
        p_rows, p_cols = largest_grid_split(num_rows, num_cols, kl_forward_configs(), s_left.device)
        row_stats = _stats_buffer(NUM_STATS, p_cols, num_rows, MAX_SLOTS, s_left)
        col_stats = (_stats_buffer(NUM_STATS, p_rows, num_cols, MAX_SLOTS, s_left) if layout.has_columns
                     else _dummy(s_left))
        with launch_device(s_left.device):
            similarity_kl_stats_forward_kernel[_forward_grid(num_rows, num_cols, s_left.device)](
                s_left, s_right, t_left, t_right, student_mult, teacher_mult, row_stats, col_stats,
                num_rows, num_cols, s_left.shape[1], t_left.shape[1], s_left.stride(0), s_right.stride(0),
                t_left.stride(0), t_right.stride(0), row_stats.stride(0), col_stats.stride(0),
                HAS_COLS=layout.has_columns, S_IS_FP32=s_left.dtype == torch.float32,
                T_IS_FP32=t_left.dtype == torch.float32, **kernel_flags(s_left, t_left))
        row_kl, row_lse_t, row_lse_s = kl_from_stats(*_merged_kl_stats(row_stats))
        col_kl = col_lse_t = col_lse_s = row_kl.new_empty(0)
        if layout.has_columns:
            max_t, sum_t, wsum_t, max_s, sum_s = _merged_kl_stats(col_stats)
            (max_t, max_s), ((sum_t, wsum_t), (sum_s,)) = complete_column_stats(
                layout, [max_t, max_s], [[sum_t, wsum_t], [sum_s]])
            col_kl, col_lse_t, col_lse_s = kl_from_stats(max_t, sum_t, wsum_t, max_s, sum_s)
        ctx.save_for_backward(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                              torch.stack([row_lse_t, row_lse_s]), torch.stack([col_lse_t, col_lse_s]))
        ctx.layout, ctx.fallback = layout, fallback
        return weighted_total(layout, row_kl, col_kl)

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        inputs, (row_lse, col_lse) = saved[:6], saved[6:]
        needs = ctx.needs_input_grad[:6]
        try:
            grads = _kl_backward(ctx.layout, *inputs, row_lse, col_lse, grad_output, needs[0], needs[1], needs[4])
        except Exception as err:  # noqa: BLE001 -- auto's fallback, re-raised otherwise
            if not (ctx.fallback and is_kernel_failure(err)):
                raise
            record_triton_failure(err)
            grads = _recompute_with_chunked(chunked.ChunkedSimilarityKL.apply, inputs,
                                            (needs[0], needs[1], False, False, needs[4], False), grad_output,
                                            (ctx.layout, chunked.DEFAULT_CHUNK_ROWS))
            grads = (grads[0], grads[1], grads[4])
        return grads[:2] + (None, None, grads[2], None, None, None)


def _kl_backward(layout, student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                 row_lse, col_lse, grad_output, need_rows, need_cols, need_scale):
    s_left, s_right = _operand_pair(student_rows, student_cols)
    t_left, t_right = _operand_pair(teacher_rows, teacher_cols)
    dim, num_cols = s_left.shape[1], s_right.shape[0]
    weight, ratio = layout.tile_weights()
    upstream = grad_output.float() * weight
    col_lse_arg = col_lse.contiguous() if layout.has_columns else _dummy(s_left)

    def write_panel(start, stop, grad):
        similarity_kl_grad_panel_kernel[_panel_grid(stop - start, num_cols)](
            s_left[start:stop], s_right, t_left[start:stop], t_right, student_mult, teacher_mult,
            row_lse[:, start:stop].contiguous(), col_lse_arg, grad, stop - start, num_cols, dim, t_left.shape[1],
            s_left.stride(0), s_right.stride(0), t_left.stride(0), t_right.stride(0), grad.stride(0), float(ratio),
            HAS_COLS=layout.has_columns, S_IS_FP32=s_left.dtype == torch.float32,
            T_IS_FP32=t_left.dtype == torch.float32, **kernel_flags(s_left, t_left))

    return _reduce_gradient_panels(write_panel, s_left, s_right, student_rows.dtype, student_cols.dtype,
                                   student_mult * upstream, upstream, need_rows, need_cols, need_scale)


def _merged_kl_stats(stats: torch.Tensor):
    """Merge [5, P, L] partial KL statistics over P -> (max_t, sum_t, wsum_t, max_s, sum_s)."""
    max_t, (sum_t, wsum_t) = merge_partial_stats(stats[0], [stats[1], stats[2]])
    max_s, (sum_s,) = merge_partial_stats(stats[3], [stats[4]])
    return max_t, sum_t, wsum_t, max_s, sum_s


def infonce_triton(rows, cols, scale, layout: LossLayout, *, fallback: bool = False):
    """Fused Triton version of ``chunked.infonce_chunked``; ``fallback``: a failing backward uses chunked."""
    return TritonInfoNCE.apply(rows, cols, scale, layout, fallback)


def similarity_kl_triton(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                         layout: LossLayout, *, fallback: bool = False):
    """Fused Triton version of ``chunked.similarity_kl_chunked``; ``fallback``: a failing backward uses chunked."""
    return TritonSimilarityKL.apply(student_rows, student_cols, teacher_rows, teacher_cols, student_mult,
                                    teacher_mult, layout, fallback)
