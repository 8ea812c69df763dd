"""Online-softmax statistics: merging partial (max, sum) pairs of a log-sum-exp.

A softmax over a set split into parts p is summarised by ``m_p = max_p x`` and ``s_p = sum_p exp(x - m_p)``
(plus optional weighted sums ``w_p = sum_p exp(x - m_p) * v`` sharing the same shift). Parts merge exactly as

    m = max_p m_p,   s = sum_p s_p * exp(m_p - m),   lse = m + log(s)

(Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; the same trick as Flash-Attention
and Inf-CL). A part that saw nothing has ``m_p = -inf, s_p = 0`` and contributes ``exp(-inf) = 0``.
All statistics are fp32.
"""
import torch


def merge_partial_stats(maxima: torch.Tensor, sums, dim: int = 0):
    """Merge partial statistics stacked along ``dim``.

    ``maxima``: partial maxima, ``sums``: list of tensors shaped like ``maxima`` that were shifted by them.
    Returns ``(max, [merged sums])`` with ``dim`` reduced.
    """
    merged_max = maxima.amax(dim)
    factor = torch.exp(maxima - merged_max.unsqueeze(dim))
    return merged_max, [(s * factor).sum(dim) for s in sums]


def rescale_running_stats(running_max: torch.Tensor, new_max: torch.Tensor, sums):
    """In place: re-shift running sums from ``running_max`` to ``new_max`` (``new_max >= running_max``)."""
    factor = torch.exp(running_max - new_max)
    for s in sums:
        s.mul_(factor)


def log_sum_exp(maximum: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``lse = m + log(s)`` from merged statistics."""
    return maximum + torch.log(total)
