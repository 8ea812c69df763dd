"""Loss values from O(N + M) softmax statistics (shared by the ``chunked`` and ``triton`` implementations).

KL of one softmax row (teacher logits a, student logits b, p = softmax(a)):

    KL(p || softmax(b)) = sum_j p_j (a_j - b_j) - lse(a) + lse(b) = w_a / s_a - lse(a) + lse(b)

with ``s_a = sum_j exp(a_j - m_a)`` and ``w_a = sum_j exp(a_j - m_a) (a_j - b_j)`` (DIME-FM's KL_rows
rewritten so one pass over a tile suffices; the weighted sum merges like ``s_a``).
"""
import torch

from .layout import LossLayout
from .online_softmax import log_sum_exp


def complete_column_stats(layout: LossLayout, maxima, sums):
    """Column statistics over *all* rows: identity on one process, a cross-rank merge otherwise."""
    if layout.reduce_column_stats is None:
        return maxima, sums
    return layout.reduce_column_stats(maxima, sums)


def kl_from_stats(max_a, sum_a, wsum_a, max_b, sum_b):
    """Per-row ``KL(softmax(a) || softmax(b))`` plus both log-sum-exps (all fp32)."""
    lse_a = log_sum_exp(max_a, sum_a)
    lse_b = log_sum_exp(max_b, sum_b)
    return wsum_a / sum_a - lse_a + lse_b, lse_a, lse_b


def weighted_total(layout: LossLayout, row_terms: torch.Tensor, col_terms) -> torch.Tensor:
    """``row_weight * sum(row_terms) + col_weight * sum(owned col_terms)`` as a 0-d fp32 tensor."""
    total = row_terms.sum() * layout.row_weight
    if layout.has_columns:
        total = total + col_terms[layout.col_start:layout.col_stop].sum() * layout.col_weight
    return total
