"""Entropy of a (teacher) similarity softmax, computed in row tiles without gradient.

    H_rows(A) = -1/N sum_i sum_j p_ij log p_ij,   p_i = softmax(scale * a_i b^T / tau)

Used to turn a fused KL into OpenCLIP's soft cross-entropy: H(p, q) = KL(p || q) + H(p).
Memory is O(tile * M) instead of O(N * M).
"""
import torch


def _entropy_rows(a, b, scale, temperature, tile):
    total = a.new_zeros((), dtype=torch.float32)
    b = b.float()
    for start in range(0, a.shape[0], tile):
        logits = (scale / temperature) * (a[start:start + tile].float() @ b.T)
        logp = torch.log_softmax(logits, dim=1)
        total = total - (logp.exp() * logp).sum()
    return total / a.shape[0]


@torch.no_grad()
def similarity_entropy(teacher_a, teacher_b, teacher_scale, *, temperature=1.0, bidirectional=True,
                       tile=2048):
    """Mean row entropy of softmax(scale * a b^T / tau) (+ mean column entropy when bidirectional)."""
    scale = float(teacher_scale.detach().float().reshape(-1)[0]) if torch.is_tensor(teacher_scale) \
        else float(teacher_scale)
    ent = _entropy_rows(teacher_a, teacher_b, scale, temperature, tile)
    if bidirectional:
        ent = ent + _entropy_rows(teacher_b, teacher_a, scale, temperature, tile)
    return ent
