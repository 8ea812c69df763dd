"""Tiled similarity losses in plain PyTorch (any device): never hold the N x M logits.

Both ``autograd.Function``s walk the local rows in chunks of ``chunk_rows``; each chunk is multiplied
against *all* columns in one matmul (so per-row statistics are complete within the chunk) while the
per-column statistics are merged online across chunks (running max starts at -inf). Forward saves only
the inputs and O(N + M) log-sum-exps; backward recomputes each tile and accumulates

    d rows = s * G @ cols,   d cols = s * G^T @ rows,   d s = sum_ij G_ij (rows cols^T)_ij = sum_i rows_i . (G @ cols)_i

where ``G = dL/dS`` for the tile (Inf-CL's recompute-in-backward, without its d % 256 and
one-direction restrictions). Logits and statistics are fp32 whatever the input dtype (fp64 for fp64 inputs,
so tests can compare against the oracle where the arithmetic is exact to fp64 round-off). Tiles are reused
buffers updated in place, so a chunk costs two (InfoNCE) or four (KL) ``chunk_rows x M`` fp32 buffers.

Exponents are clamped at ``EXP_FLOOR`` = -80 before ``exp``: every exponent here is a logit minus a
max or log-sum-exp, so the clamp changes an entry by at most e^-80 ~ 1.8e-35, far below fp32 resolution
of sums that contain exp(0) = 1, while PyTorch's CPU ``exp`` takes a ~10x slower path for arguments
that underflow (at logit scale 100 most of them do).
"""
import torch

from .layout import LossLayout
from .loss_from_stats import complete_column_stats, kl_from_stats, weighted_total
from .online_softmax import log_sum_exp, rescale_running_stats
from .raw_grads import finish_grads

# Rows per tile when the caller gives none (read at call time). 512 keeps the CPU matmul near its peak
# while the tile buffers stay a few % of the N x M logits.
DEFAULT_CHUNK_ROWS = 512
EXP_FLOOR = -80.0


def _compute_dtype(*tensors) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (a float64 reference run for tests)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _fp32(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x`` in the compute dtype (fp32 unless a float64 run), without a copy when it already is."""
    return x if x.dtype == dtype else x.to(dtype)


def _chunks(num_rows: int, chunk_rows: int):
    for start in range(0, num_rows, chunk_rows):
        yield start, min(num_rows, start + chunk_rows)


def _tile_buffers(count: int, like: torch.Tensor, chunk_rows: int, num_cols: int):
    rows = max(1, min(chunk_rows, like.shape[0]))
    return [like.new_empty(rows, num_cols) for _ in range(count)]


def _scaled_rows(rows: torch.Tensor, scale: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """``scale * rows`` into a reused (chunk_rows x d) buffer."""
    return torch.mul(rows, scale, out=buffer[: rows.shape[0]])


def _exp_(t: torch.Tensor) -> torch.Tensor:
    """In place ``exp(max(t, EXP_FLOOR))`` (see module docstring)."""
    return t.clamp_min_(EXP_FLOOR).exp_()


def _shifted_exp(x: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = exp(x - shift)`` (broadcast ``shift``), clamped like ``_exp_``."""
    return _exp_(torch.sub(x, shift, out=out))


class ChunkedInfoNCE(torch.autograd.Function):
    """Symmetric InfoNCE on a local block (CLIP, Radford et al. 2021), ``S = s * rows cols^T``:

        f = row_weight * sum_i (lse_j S_ij - S_{i,t(i)})
            + col_weight * sum_{owned j} (lse_i S_ij - S_{t^-1(j),j})
        dL/dS_ij = row_weight * softmax_j(S_i.)_j + col_weight * softmax_i(S_.j)_i
                   - (row_weight + col_weight) [j = t(i)]

    with target ``t(i) = col_start + i``. One process: weights ``1/(2N)``, i.e. OpenCLIP ``ClipLoss``.
    """

    @staticmethod
    def forward(ctx, rows, cols, scale, layout: LossLayout, chunk_rows: int):
        dtype = _compute_dtype(rows, cols)
        left, right = _fp32(rows, dtype), _fp32(cols, dtype)
        num_cols = right.shape[0]
        paired = layout.paired_columns(right, left.shape[0])
        logits, work = _tile_buffers(2, left, chunk_rows, num_cols)
        (scaled,) = _tile_buffers(1, left, chunk_rows, left.shape[1])
        row_lse = left.new_empty(left.shape[0])
        col_max = left.new_full((num_cols,), float("-inf"))
        col_sum = left.new_zeros(num_cols)
        for start, stop in _chunks(left.shape[0], chunk_rows):
            tile, exps = logits[: stop - start], work[: stop - start]
            torch.mm(_scaled_rows(left[start:stop], scale, scaled), right.T, out=tile)
            row_max = tile.amax(1)
            row_lse[start:stop] = log_sum_exp(row_max, _shifted_exp(tile, row_max[:, None], exps).sum(1))
            if layout.has_columns:
                new_max = torch.maximum(col_max, tile.amax(0))
                rescale_running_stats(col_max, new_max, [col_sum])
                col_sum += _shifted_exp(tile, new_max, exps).sum(0)
                col_max = new_max
        col_lse = row_lse.new_empty(0)
        if layout.has_columns:
            (col_max,), ((col_sum,),) = complete_column_stats(layout, [col_max], [[col_sum]])
            col_lse = log_sum_exp(col_max, col_sum)
        target_logits = scale * torch.dot(left.reshape(-1), paired.reshape(-1))
        ctx.save_for_backward(rows, cols, scale, row_lse, col_lse)
        ctx.layout, ctx.chunk_rows = layout, chunk_rows
        return weighted_total(layout, row_lse, col_lse) - (layout.row_weight + layout.col_weight) * target_logits

    @staticmethod
    def backward(ctx, grad_output):
        rows, cols, scale, row_lse, col_lse = ctx.saved_tensors
        layout, chunk_rows = ctx.layout, ctx.chunk_rows
        need_rows, need_cols, need_scale = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(rows, cols)
        left, right = _fp32(rows, dtype), _fp32(cols, dtype)
        logits, grad_tile = _tile_buffers(2, left, chunk_rows, right.shape[0])
        (scaled,) = _tile_buffers(1, left, chunk_rows, left.shape[1])
        d_left = left.new_empty(left.shape) if (need_rows or need_scale) else None
        d_right = torch.zeros_like(right) if need_cols else None
        weight, row_ratio = layout.tile_weights()
        for start, stop in _chunks(left.shape[0], chunk_rows):
            tile, grad = logits[: stop - start], grad_tile[: stop - start]
            torch.mm(_scaled_rows(left[start:stop], scale, scaled), right.T, out=tile)
            _shifted_exp(tile, row_lse[start:stop, None], grad)                      # P
            if layout.has_columns:
                torch.add(_exp_(tile.sub_(col_lse)), grad, alpha=row_ratio, out=grad)  # Q + ratio * P
            if d_left is not None:
                torch.mm(grad, right, out=d_left[start:stop])
            if d_right is not None:
                d_right.addmm_(grad.T, left[start:stop])
        # target logits: -(row_weight + col_weight) on each (i, t(i)), linear in the features
        target_weight = (layout.row_weight + layout.col_weight) / weight
        if d_left is not None:
            d_left.sub_(layout.paired_columns(right, left.shape[0]), alpha=target_weight)
        if d_right is not None:
            d_right[layout.col_start:layout.col_stop].sub_(left, alpha=target_weight)
        return finish_grads(grad_output, weight, scale, left, d_left, d_right, rows, cols, need_rows,
                            need_scale) + (None, None)


class ChunkedSimilarityKL(torch.autograd.Function):
    """DIME-FM similarity KL on a local block (teacher A = a_t * Ta Tb^T, student B = b_s * Sa Sb^T, tau folded in):

        f = row_weight * sum_i KL(softmax(A_i.) || softmax(B_i.))
            + col_weight * sum_{owned j} KL(softmax(A_.j) || softmax(B_.j))
        dL/dB_ij = row_weight * (q_ij - p_ij) + col_weight * (q'_ij - p'_ij)

    with p, q the row softmaxes of A, B and p', q' the column softmaxes. Only B carries gradient.
    """

    @staticmethod
    def forward(ctx, student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                layout: LossLayout, chunk_rows: int):
        s_left, s_right, t_left, t_right = _fp32_views(student_rows, student_cols, teacher_rows, teacher_cols)
        num_rows, num_cols = s_left.shape[0], s_right.shape[0]
        teacher, student, diff, work = _tile_buffers(4, s_left, chunk_rows, num_cols)
        s_scaled, t_scaled = _tile_buffers(1, s_left, chunk_rows, s_left.shape[1]) + _tile_buffers(
            1, t_left, chunk_rows, t_left.shape[1])
        row_kl = s_left.new_empty(num_rows)
        row_lse_t, row_lse_s = s_left.new_empty(num_rows), s_left.new_empty(num_rows)
        col_max_t = s_left.new_full((num_cols,), float("-inf"))
        col_max_s = col_max_t.clone()
        col_sum_t, col_wsum_t, col_sum_s = (s_left.new_zeros(num_cols) for _ in range(3))
        for start, stop in _chunks(num_rows, chunk_rows):
            a, b, d, e = (buf[: stop - start] for buf in (teacher, student, diff, work))
            torch.mm(_scaled_rows(t_left[start:stop], teacher_mult, t_scaled), t_right.T, out=a)
            torch.mm(_scaled_rows(s_left[start:stop], student_mult, s_scaled), s_right.T, out=b)
            torch.sub(a, b, out=d)
            max_t, max_s = a.amax(1), b.amax(1)
            sum_t = _shifted_exp(a, max_t[:, None], e).sum(1)
            wsum_t = e.mul_(d).sum(1)
            sum_s = _shifted_exp(b, max_s[:, None], e).sum(1)
            row_kl[start:stop], row_lse_t[start:stop], row_lse_s[start:stop] = kl_from_stats(
                max_t, sum_t, wsum_t, max_s, sum_s)
            if layout.has_columns:
                new_max_t = torch.maximum(col_max_t, a.amax(0))
                rescale_running_stats(col_max_t, new_max_t, [col_sum_t, col_wsum_t])
                col_sum_t += _shifted_exp(a, new_max_t, e).sum(0)
                col_wsum_t += e.mul_(d).sum(0)
                new_max_s = torch.maximum(col_max_s, b.amax(0))
                rescale_running_stats(col_max_s, new_max_s, [col_sum_s])
                col_sum_s += _shifted_exp(b, new_max_s, e).sum(0)
                col_max_t, col_max_s = new_max_t, new_max_s
        col_kl = col_lse_t = col_lse_s = row_kl.new_empty(0)
        if layout.has_columns:
            (col_max_t, col_max_s), ((col_sum_t, col_wsum_t), (col_sum_s,)) = complete_column_stats(
                layout, [col_max_t, col_max_s], [[col_sum_t, col_wsum_t], [col_sum_s]])
            col_kl, col_lse_t, col_lse_s = kl_from_stats(col_max_t, col_sum_t, col_wsum_t, col_max_s, col_sum_s)
        ctx.save_for_backward(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                              row_lse_t, row_lse_s, col_lse_t, col_lse_s)
        ctx.layout, ctx.chunk_rows = layout, chunk_rows
        return weighted_total(layout, row_kl, col_kl)

    @staticmethod
    def backward(ctx, grad_output):
        (student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
         row_lse_t, row_lse_s, col_lse_t, col_lse_s) = ctx.saved_tensors
        layout, chunk_rows = ctx.layout, ctx.chunk_rows
        need_rows, need_cols = ctx.needs_input_grad[:2]
        need_scale = ctx.needs_input_grad[4]
        s_left, s_right, t_left, t_right = _fp32_views(student_rows, student_cols, teacher_rows, teacher_cols)
        teacher, student, grad_tile, work = _tile_buffers(4, s_left, chunk_rows, s_right.shape[0])
        s_scaled, t_scaled = _tile_buffers(1, s_left, chunk_rows, s_left.shape[1]) + _tile_buffers(
            1, t_left, chunk_rows, t_left.shape[1])
        d_left = s_left.new_empty(s_left.shape) if (need_rows or need_scale) else None
        d_right = torch.zeros_like(s_right) if need_cols else None
        weight, row_ratio = layout.tile_weights()
        for start, stop in _chunks(s_left.shape[0], chunk_rows):
            a, b, g, e = (buf[: stop - start] for buf in (teacher, student, grad_tile, work))
            torch.mm(_scaled_rows(t_left[start:stop], teacher_mult, t_scaled), t_right.T, out=a)
            torch.mm(_scaled_rows(s_left[start:stop], student_mult, s_scaled), s_right.T, out=b)
            _shifted_exp(b, row_lse_s[start:stop, None], g)                    # q  (row softmax of B)
            g.sub_(_shifted_exp(a, row_lse_t[start:stop, None], e))            # q - p
            if layout.has_columns:
                _exp_(b.sub_(col_lse_s))                                       # q' (column softmax of B)
                b.sub_(_shifted_exp(a, col_lse_t, e))                          # q' - p'
                torch.add(b, g, alpha=row_ratio, out=g)                        # (q' - p') + ratio (q - p)
            if d_left is not None:
                torch.mm(g, s_right, out=d_left[start:stop])
            if d_right is not None:
                d_right.addmm_(g.T, s_left[start:stop])
        grads = finish_grads(grad_output, weight, student_mult, s_left, d_left, d_right, student_rows,
                             student_cols, need_rows, need_scale)
        return grads[:2] + (None, None, grads[2], None, None, None)


def _fp32_views(student_rows, student_cols, teacher_rows, teacher_cols):
    """fp32 copies of the four inputs, converting each distinct tensor once (self-similarity, shared teacher)."""
    converted = {}
    dtype = _compute_dtype(student_rows, student_cols, teacher_rows, teacher_cols)

    def get(x):
        if id(x) not in converted:
            converted[id(x)] = _fp32(x, dtype)
        return converted[id(x)]

    return get(student_rows), get(student_cols), get(teacher_rows), get(teacher_cols)


def _chunk_rows(chunk_rows):
    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return chunk_rows


def infonce_chunked(rows, cols, scale, layout: LossLayout, *, chunk_rows: int = None):
    """Tiled symmetric InfoNCE on a local block (see ``ChunkedInfoNCE``)."""
    return ChunkedInfoNCE.apply(rows, cols, scale, layout, _chunk_rows(chunk_rows))


def similarity_kl_chunked(student_rows, student_cols, teacher_rows, teacher_cols, student_mult, teacher_mult,
                          layout: LossLayout, *, chunk_rows: int = None):
    """Tiled DIME-FM similarity KL on a local block (see ``ChunkedSimilarityKL``)."""
    return ChunkedSimilarityKL.apply(student_rows, student_cols, teacher_rows, teacher_cols, student_mult,
                                     teacher_mult, layout, _chunk_rows(chunk_rows))
