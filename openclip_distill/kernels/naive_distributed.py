"""Materialised distributed oracle (``impl="naive"`` under torch.distributed).

OpenCLIP's ``local_loss=True, gather_with_grad=True`` scheme, extended to the similarity KL: every side is
all-gathered with a summing backward; rank r materialises its rows against all columns and its columns
against all rows, in fp32. Same convention as ``distributed.py``: ``mean_r L_r == L_global`` and the
gradient reaching rank r's features is ``world_size * dL_global/dx_r``. Memory O((n_r + m_r) * (N + M)).
"""
import torch
import torch.nn.functional as F

from .distributed import GatherCache, World, gather_sizes
from .naive import mixed_log_softmax_naive
from .scale import scale_tensor as _scale


def _kl_rows_sum(teacher_logits, student_logits):
    """sum_i KL(softmax(A_i) || softmax(B_i)) in fp32."""
    t = F.log_softmax(teacher_logits.float(), dim=1)
    s = F.log_softmax(student_logits.float(), dim=1)
    return (t.exp() * (t - s)).sum()


def contrastive_loss_naive_distributed(world: World, image_features, text_features, logit_scale):
    """Rank r: ``W/(2N) * (sum_{local i} CE(S_i., i) + sum_{local j} CE(S_.j, j))`` on gathered features."""
    (sizes,) = gather_sizes(world, [image_features.shape[0]], image_features.device)
    gather = GatherCache(world, sizes)
    all_images, all_texts = gather(image_features).float(), gather(text_features).float()
    s = _scale(logit_scale, image_features)
    offset = sum(sizes[: world.rank])
    labels = torch.arange(offset, offset + image_features.shape[0], device=image_features.device)
    per_image = s * image_features.float() @ all_texts.T
    per_text = s * text_features.float() @ all_images.T
    total = F.cross_entropy(per_image, labels, reduction="sum") + F.cross_entropy(per_text, labels, reduction="sum")
    return total * (world.size / (2 * sum(sizes)))


def similarity_kl_loss_naive_distributed(world: World, student_a, student_b, teacher_a, teacher_b, *, student_scale,
                                         teacher_scale, temperature=1.0, bidirectional=True):
    """Rank r: ``W/N * sum_{local rows} KL_row + W/M * sum_{local cols} KL_col`` on gathered features."""
    row_sizes, col_sizes = gather_sizes(world, [student_a.shape[0], student_b.shape[0]], student_a.device)
    s = _scale(student_scale, student_a) / temperature
    with torch.no_grad():
        t = _scale(teacher_scale, teacher_a) / temperature
    gather_cols = GatherCache(world, col_sizes)
    with torch.no_grad():
        teacher_logits = t * teacher_a.float() @ gather_cols(teacher_b).float().T
    student_logits = s * student_a.float() @ gather_cols(student_b).float().T
    loss = _kl_rows_sum(teacher_logits, student_logits) * (world.size / sum(row_sizes))
    if bidirectional:
        gather_rows = GatherCache(world, row_sizes)
        with torch.no_grad():
            teacher_logits_t = t * teacher_b.float() @ gather_rows(teacher_a).float().T
        student_logits_t = s * student_b.float() @ gather_rows(student_a).float().T
        loss = loss + _kl_rows_sum(teacher_logits_t, student_logits_t) * (world.size / sum(col_sizes))
    return loss


def similarity_kl_loss_ensemble_naive_distributed(world: World, student_a, student_b, teachers_a, teachers_b, *,
                                                  student_scale, teacher_scales, temperature=1.0, bidirectional=True):
    """Rank r, against a teacher ensemble: the rows of ``similarity_kl_loss_naive_distributed`` with the
    target ``1/K sum_k softmax(A_k)`` (rows, or columns for the column direction) on gathered features."""
    row_sizes, col_sizes = gather_sizes(world, [student_a.shape[0], student_b.shape[0]], student_a.device)
    s = _scale(student_scale, student_a) / temperature
    gather_cols = GatherCache(world, col_sizes)
    with torch.no_grad():
        t = [_scale(ts, a) / temperature for ts, a in zip(teacher_scales, teachers_a)]
        teacher_logits = [tk * a.float() @ gather_cols(b).float().T for tk, a, b in zip(t, teachers_a, teachers_b)]
    student_logits = s * student_a.float() @ gather_cols(student_b).float().T
    loss = _mixed_kl_rows_sum(teacher_logits, student_logits) * (world.size / sum(row_sizes))
    if bidirectional:
        gather_rows = GatherCache(world, row_sizes)
        with torch.no_grad():
            teacher_logits_t = [tk * b.float() @ gather_rows(a).float().T
                                for tk, a, b in zip(t, teachers_a, teachers_b)]
        student_logits_t = s * student_b.float() @ gather_rows(student_a).float().T
        loss = loss + _mixed_kl_rows_sum(teacher_logits_t, student_logits_t) * (world.size / sum(col_sizes))
    return loss


def _mixed_kl_rows_sum(teacher_logits, student_logits):
    """sum_i KL(1/K sum_k softmax(A_k,i) || softmax(B_i)) in fp32."""
    t = mixed_log_softmax_naive(teacher_logits)
    s = F.log_softmax(student_logits.float(), dim=1)
    return (t.exp() * (t - s)).sum()
