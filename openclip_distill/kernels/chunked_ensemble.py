"""Tiled similarity KL against a teacher *ensemble* (MobileCLIP, Vasu et al., CVPR 2024: the target is
the average of the teachers' softmaxes, "average after softmax"), without any N x M matrix per teacher.

With teacher logits ``A_k = t_k * Ta_k Tb_k^T`` (K teachers, each its own width and scale), student
logits ``B = s * Sa Sb^T`` (tau folded into the scales) and

    p_ij  = 1/K sum_k exp(A_k,ij - lse_j A_k,i.)        (mixed row softmax)
    p'_ij = 1/K sum_k exp(A_k,ij - lse_i A_k,.j)        (mixed column softmax)

    f = row_weight * sum_i sum_j p_ij (log p_ij - log q_ij) + col_weight * sum_j sum_i p'_ij (log p'_ij - log q'_ij)
    dL/dB_ij = row_weight * (q_ij - p_ij) + col_weight * (q'_ij - p'_ij)

(q, q' the row/column softmaxes of B). A column softmax needs statistics over *all* rows before any
probability can be mixed, so the forward walks the row chunks twice: pass 1 collects every teacher's and
the student's row and column log-sum-exps (O(K (N + M)) floats), pass 2 recomputes each tile, mixes the K
teachers' probabilities and sums the KL terms (rows only, the KL is summed in pass 1: a row's statistics are
complete within its chunk). The
backward recomputes the tiles once more; the student's gradient needs only the mixed ``p``. A tile costs a
few ``chunk_rows x M`` buffers whatever K is. Distributed (a ``LossLayout`` with ``reduce_column_stats``),
the column statistics of pass 1 and the column KL sums of pass 2 are completed across ranks (O(K M)
floats), as in ``chunked.py``.
"""
import torch

from .chunked import _chunk_rows, _chunks, _compute_dtype, _exp_, _fp32
from .layout import LossLayout
from .loss_from_stats import complete_column_stats, weighted_total
from .online_softmax import log_sum_exp, rescale_running_stats
from .raw_grads import finish_grads


def _logits(rows, mult, cols):
    """``mult * rows cols^T`` in the inputs' dtype (fp32/fp64): the callers switch autocast off, which would
    otherwise run the matmul in 16 bits (logits at scale 100 must stay fp32)."""
    return torch.mm(rows * mult, cols.T)


def _no_autocast(like: torch.Tensor):
    return torch.autocast(device_type=like.device.type, enabled=False)


class _ColumnLSE:
    """Running per-column log-sum-exp over row chunks (online softmax, running max starts at -inf)."""

    def __init__(self, like, num_cols):
        self.max = like.new_full((num_cols,), float("-inf"))
        self.sum = like.new_zeros(num_cols)

    def add(self, tile):
        new_max = torch.maximum(self.max, tile.amax(0))
        rescale_running_stats(self.max, new_max, [self.sum])
        self.sum += _exp_(tile - new_max).sum(0)
        self.max = new_max

    def lse(self):
        return log_sum_exp(self.max, self.sum)


def _row_lse(tile):
    row_max = tile.amax(1)
    return log_sum_exp(row_max, _exp_(tile - row_max[:, None]).sum(1))


def _mixed_probs(teacher_tiles, lse_of):
    """``1/K sum_k exp(A_k - lse_k)`` for one tile; ``lse_of(k)`` broadcasts against the tile. Every
    exponent is floored at ``EXP_FLOOR`` (as in ``chunked.py``: an entry moves by at most e^-80, and the
    mixed probability stays > 0, so its log is finite)."""
    out = None
    for k, a in enumerate(teacher_tiles):
        p = _exp_(a - lse_of(k))
        out = p if out is None else out.add_(p)
    return out.div_(len(teacher_tiles))


def _kl_terms(p, student_log_probs, dim):
    """``sum_dim p (log p - log q)``."""
    return (p * (torch.log(p) - student_log_probs)).sum(dim)


class ChunkedEnsembleSimilarityKL(torch.autograd.Function):
    """Similarity KL with the averaged softmax of K teachers as the target (see the module docstring)."""

    @staticmethod
    def forward(ctx, student_rows, student_cols, student_mult, layout: LossLayout, chunk_rows: int, num_teachers: int,
                *teacher_inputs):
        with _no_autocast(student_rows):
            return ChunkedEnsembleSimilarityKL._forward(ctx, student_rows, student_cols, student_mult, layout,
                                                        chunk_rows, num_teachers, *teacher_inputs)

    @staticmethod
    def _forward(ctx, student_rows, student_cols, student_mult, layout, chunk_rows, num_teachers, *teacher_inputs):
        t_rows, t_cols, t_mults = (teacher_inputs[i * num_teachers:(i + 1) * num_teachers] for i in range(3))
        dtype = _compute_dtype(student_rows, student_cols, *t_rows, *t_cols)
        s_left, s_right = _fp32(student_rows, dtype), _fp32(student_cols, dtype)
        t_left, t_right = [_fp32(x, dtype) for x in t_rows], [_fp32(x, dtype) for x in t_cols]
        num_rows, num_cols = s_left.shape[0], s_right.shape[0]
        columns = layout.has_columns

        # pass 1: row and column log-sum-exps of the student and of every teacher (a row's are complete
        # within its chunk, so without columns its KL term is summed right away and there is no pass 2)
        row_lse_s = s_left.new_empty(num_rows)
        row_lse_t = [s_left.new_empty(num_rows) for _ in range(num_teachers)]
        row_kl = s_left.new_empty(num_rows)
        col_s = _ColumnLSE(s_left, num_cols)
        col_t = [_ColumnLSE(s_left, num_cols) for _ in range(num_teachers)]
        for start, stop in _chunks(num_rows, chunk_rows):
            b = _logits(s_left[start:stop], student_mult, s_right)
            row_lse_s[start:stop] = _row_lse(b)
            if columns:
                col_s.add(b)
            a = []
            for k in range(num_teachers):
                tile = _logits(t_left[k][start:stop], t_mults[k], t_right[k])
                row_lse_t[k][start:stop] = _row_lse(tile)
                if columns:
                    col_t[k].add(tile)  # not kept: pass 2 recomputes it
                else:
                    a.append(tile)
            if not columns:
                p = _mixed_probs(a, lambda k: row_lse_t[k][start:stop, None])
                row_kl[start:stop] = _kl_terms(p, b - row_lse_s[start:stop, None], 1)
        col_lse_s, col_lse_t = row_lse_s.new_empty(0), [row_lse_s.new_empty(0)] * num_teachers
        col_kl = s_left.new_zeros(num_cols if columns else 0)
        if columns:  # over all rows: a cross-rank merge when distributed
            stats = [col_s] + col_t
            maxima, sums = complete_column_stats(layout, [c.max for c in stats], [[c.sum] for c in stats])
            col_lse_s, *col_lse_t = [log_sum_exp(m, s) for m, (s,) in zip(maxima, sums)]

            # pass 2: mix the teachers' probabilities tile by tile and sum the KL terms
            for start, stop in _chunks(num_rows, chunk_rows):
                b = _logits(s_left[start:stop], student_mult, s_right)
                a = [_logits(t_left[k][start:stop], t_mults[k], t_right[k]) for k in range(num_teachers)]
                p = _mixed_probs(a, lambda k: row_lse_t[k][start:stop, None])
                row_kl[start:stop] = _kl_terms(p, b - row_lse_s[start:stop, None], 1)
                col_kl += _kl_terms(_mixed_probs(a, lambda k: col_lse_t[k]), b - col_lse_s, 0)
        if columns and layout.reduce_column_stats is not None:
            # distributed: each column's KL sums over the rows of every rank (a plain sum is a merge of
            # statistics that share the shift 0)
            _, ((col_kl,),) = layout.reduce_column_stats([torch.zeros_like(col_kl)], [[col_kl]])
        ctx.save_for_backward(student_rows, student_cols, student_mult, row_lse_s, col_lse_s, *row_lse_t, *col_lse_t,
                              *teacher_inputs)
        ctx.layout, ctx.chunk_rows, ctx.num_teachers = layout, chunk_rows, num_teachers
        return weighted_total(layout, row_kl, col_kl)

    @staticmethod
    def backward(ctx, grad_output):
        with _no_autocast(grad_output):
            return ChunkedEnsembleSimilarityKL._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        saved = ctx.saved_tensors
        layout, chunk_rows, num_teachers = ctx.layout, ctx.chunk_rows, ctx.num_teachers
        student_rows, student_cols, student_mult, row_lse_s, col_lse_s = saved[:5]
        row_lse_t = saved[5:5 + num_teachers]
        col_lse_t = saved[5 + num_teachers:5 + 2 * num_teachers]
        teacher_inputs = saved[5 + 2 * num_teachers:]
        t_rows, t_cols, t_mults = (teacher_inputs[i * num_teachers:(i + 1) * num_teachers] for i in range(3))
        need_rows, need_cols, need_scale = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(student_rows, student_cols, *t_rows, *t_cols)
        s_left, s_right = _fp32(student_rows, dtype), _fp32(student_cols, dtype)
        t_left, t_right = [_fp32(x, dtype) for x in t_rows], [_fp32(x, dtype) for x in t_cols]
        d_left = s_left.new_empty(s_left.shape) if (need_rows or need_scale) else None
        d_right = torch.zeros_like(s_right) if need_cols else None
        weight, row_ratio = layout.tile_weights()
        for start, stop in _chunks(s_left.shape[0], chunk_rows):
            b = _logits(s_left[start:stop], student_mult, s_right)
            a = [_logits(t_left[k][start:stop], t_mults[k], t_right[k]) for k in range(num_teachers)]
            g = _exp_(b - row_lse_s[start:stop, None]).sub_(
                _mixed_probs(a, lambda k: row_lse_t[k][start:stop, None]))                 # q - p
            if layout.has_columns:
                col_g = _exp_(b - col_lse_s).sub_(_mixed_probs(a, lambda k: col_lse_t[k]))  # q' - p'
                g = col_g.add_(g, alpha=row_ratio)
            if d_left is not None:
                d_left[start:stop] = g @ s_right
            if d_right is not None:
                d_right.addmm_(g.T, s_left[start:stop])
        grads = finish_grads(grad_output, weight, student_mult, s_left, d_left, d_right, student_rows, student_cols,
                             need_rows, need_scale)
        return grads + (None, None, None) + (None,) * len(teacher_inputs)


def similarity_kl_ensemble_chunked(student_rows, student_cols, teachers_rows, teachers_cols, student_mult,
                                   teacher_mults, layout: LossLayout, *, chunk_rows: int = None):
    """Tiled similarity KL against the averaged softmax of ``len(teachers_rows)`` teachers (see
    ``ChunkedEnsembleSimilarityKL``); ``teacher_mults[k]`` is teacher k's scale / tau (a 0-d tensor)."""
    if not len(teachers_rows) == len(teachers_cols) == len(teacher_mults) >= 1:
        raise ValueError(f"an ensemble needs as many teacher row/column features and scales, got "
                         f"{len(teachers_rows)}, {len(teachers_cols)}, {len(teacher_mults)}")
    teachers = [t.detach() for t in (*teachers_rows, *teachers_cols, *teacher_mults)]
    return ChunkedEnsembleSimilarityKL.apply(student_rows, student_cols, student_mult, layout, _chunk_rows(chunk_rows),
                                             len(teachers_rows), *teachers)
