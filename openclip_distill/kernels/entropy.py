"""Entropy of a (teacher) similarity softmax, computed in row tiles without gradient.

    H_rows(A) = -1/N sum_i sum_j p_ij log p_ij,   p_i = softmax(scale * a_i b^T / tau)

A teacher ensemble (sequences of K features and scales) gives the entropy of the averaged softmax
``p_i = 1/K sum_k softmax(scale_k a_k[i] b_k^T / tau)`` (MobileCLIP's "average after softmax").

Used to turn a fused KL into OpenCLIP's soft cross-entropy: H(p, q) = KL(p || q) + H(p).
Memory is O(tile * M) instead of O(N * M).
"""
import math

import torch

from ..compute_dtype import compute_dtype
from .distributed import gather_rows, gather_sizes, resolve_world


def _entropy_rows(a, b, scale, temperature, tile):
    dtype = compute_dtype(a, b)
    total = a.new_zeros((), dtype=dtype)
    b = b.to(dtype)
    for start in range(0, a.shape[0], tile):
        logits = (scale / temperature) * (a[start:start + tile].to(dtype) @ b.T)
        logp = torch.log_softmax(logits, dim=1)
        total = total - (logp.exp() * logp).sum()
    return total / a.shape[0]


def _mixed_entropy_rows(teachers_a, teachers_b, scales, temperature, tile):
    """``-1/N sum_i sum_j p_ij log p_ij`` with ``p_i = 1/K sum_k softmax(scale_k a_k[i] b_k^T / tau)``."""
    dtype = compute_dtype(*teachers_a, *teachers_b)
    teachers_b = [b.to(dtype) for b in teachers_b]
    total = teachers_a[0].new_zeros((), dtype=dtype)
    for start in range(0, teachers_a[0].shape[0], tile):
        logps = torch.stack([torch.log_softmax((s / temperature) * (a[start:start + tile].to(dtype) @ b.T), dim=1)
                             for a, b, s in zip(teachers_a, teachers_b, scales)])
        logp = torch.logsumexp(logps, dim=0) - math.log(len(teachers_a))
        total = total - (logp.exp() * logp).sum()
    return total / teachers_a[0].shape[0]


def _scale_value(scale) -> float:
    return float(scale.detach().float().reshape(-1)[0]) if torch.is_tensor(scale) else float(scale)


@torch.no_grad()
def similarity_entropy(teacher_a, teacher_b, teacher_scale, *, temperature=1.0, bidirectional=True,
                       tile=2048, distributed=None):
    """Mean row entropy of softmax(scale * a b^T / tau) (+ mean column entropy when bidirectional).

    Under torch.distributed (``distributed`` as in ``similarity_kl_loss``) both sides are gathered
    first, so every rank returns the entropy of the global batch: added to the fused KL, whose mean
    over ranks is the global KL, it gives the global soft cross-entropy.
    """
    if not isinstance(teacher_a, torch.Tensor):  # an ensemble: the entropy of the averaged softmax
        return _similarity_entropy_ensemble(teacher_a, teacher_b, teacher_scale, temperature, bidirectional, tile,
                                            distributed)
    world = resolve_world(distributed)
    if world is not None:
        sizes_a, sizes_b = gather_sizes(world, [teacher_a.shape[0], teacher_b.shape[0]], teacher_a.device)
        teacher_a, teacher_b = gather_rows(world, teacher_a, sizes_a), gather_rows(world, teacher_b, sizes_b)
    scale = _scale_value(teacher_scale)
    ent = _entropy_rows(teacher_a, teacher_b, scale, temperature, tile)
    if bidirectional:
        ent = ent + _entropy_rows(teacher_b, teacher_a, scale, temperature, tile)
    return ent


def _similarity_entropy_ensemble(teachers_a, teachers_b, teacher_scales, temperature, bidirectional, tile, distributed):
    """Mean row (+ column) entropy of the K teachers' averaged softmax (MobileCLIP's ensemble target)."""
    from .functional import ensemble_members
    teachers_a, teachers_b, scales = ensemble_members(teachers_a, teachers_b, teacher_scales)
    if len(teachers_a) == 1:
        return similarity_entropy(teachers_a[0], teachers_b[0], scales[0], temperature=temperature,
                                  bidirectional=bidirectional, tile=tile, distributed=distributed)
    world = resolve_world(distributed)
    if world is not None:  # the entropy of the global batch on every rank, as for one teacher
        sizes_a, sizes_b = gather_sizes(world, [teachers_a[0].shape[0], teachers_b[0].shape[0]], teachers_a[0].device)
        teachers_a = [gather_rows(world, a, sizes_a) for a in teachers_a]
        teachers_b = [gather_rows(world, b, sizes_b) for b in teachers_b]
    scales = [_scale_value(s) for s in scales]
    with torch.autocast(device_type=teachers_a[0].device.type, enabled=False):  # fp32 logits under AMP too
        ent = _mixed_entropy_rows(teachers_a, teachers_b, scales, temperature, tile)
        if bidirectional:
            ent = ent + _mixed_entropy_rows(teachers_b, teachers_a, scales, temperature, tile)
    return ent
