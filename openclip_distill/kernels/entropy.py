"""Entropy of a (teacher) similarity softmax, computed in row tiles without gradient.

    H_rows(A) = -1/N sum_i sum_j p_ij log p_ij,   p_i = softmax(scale * a_i b^T / tau)

Used to turn a fused KL into OpenCLIP's soft cross-entropy: H(p, q) = KL(p || q) + H(p).
Memory is O(tile * M) instead of O(N * M).
"""
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


@torch.no_grad()
def similarity_entropy(teacher_a, teacher_b, teacher_scale, *, temperature=1.0, bidirectional=True,
                       tile=2048, distributed=None):
    """Mean row entropy of softmax(scale * a b^T / tau) (+ mean column entropy when bidirectional).

    Under torch.distributed (``distributed`` as in ``similarity_kl_loss``) both sides are gathered
    first, so every rank returns the entropy of the global batch: added to the fused KL, whose mean
    over ranks is the global KL, it gives the global soft cross-entropy.
    """
    world = resolve_world(distributed)
    if world is not None:
        sizes_a, sizes_b = gather_sizes(world, [teacher_a.shape[0], teacher_b.shape[0]], teacher_a.device)
        teacher_a, teacher_b = gather_rows(world, teacher_a, sizes_a), gather_rows(world, teacher_b, sizes_b)
    scale = float(teacher_scale.detach().float().reshape(-1)[0]) if torch.is_tensor(teacher_scale) \
        else float(teacher_scale)
    ent = _entropy_rows(teacher_a, teacher_b, scale, temperature, tile)
    if bidirectional:
        ent = ent + _entropy_rows(teacher_b, teacher_a, scale, temperature, tile)
    return ent
