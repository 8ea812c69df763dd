"""How well a student reproduces a teacher's sentence-similarity structure.

``pairwise_cosine_spearman(T, S)``: for N sentences embedded by both models (``T``: [N, Dt],
``S``: [N, Ds], any widths), take the cosine similarities of all N(N-1)/2 distinct pairs under each
model and return Spearman's rank correlation between the two lists,

    rho = Pearson(rank(cos_T[i<j]), rank(cos_S[i<j])),

with ties given their average rank (Spearman 1904; the usual metric of sentence-embedding
benchmarks such as STS, and of embedding distillation, e.g. Reimers & Gurevych 2020). It is 1 when
the student orders every pair as the teacher does, whatever the scale of its similarities, and
needs no adapter between the two spaces.
"""
from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-d tensor (float64); tied values share the mean of their ranks."""
    values = values.reshape(-1)
    n = values.numel()
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    # start a new group wherever the sorted value changes
    new_group = torch.ones(n, dtype=torch.bool, device=values.device)
    new_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    n_groups = int(group[-1]) + 1 if n else 0
    rank_sum = torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(0, group, positions)
    count = torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(
        0, group, torch.ones_like(positions))
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = (rank_sum / count)[group]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rho of two equally long 1-d tensors: Pearson correlation of their average ranks."""
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"spearman needs two lists of the same length >= 2, got {x.numel()} and {y.numel()}")
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx = rx - rx.mean()
    ry = ry - ry.mean()
    denom = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    if denom == 0:
        raise ValueError("spearman is undefined when one list is constant")
    return float((rx * ry).sum() / denom)


def pairwise_cosines(emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair i < j of rows (row-major upper triangle), float64."""
    e = emb.detach().to(torch.float64)
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1, device=e.device)
    return sim[i, j]


def pairwise_cosine_spearman(teacher_emb: torch.Tensor, student_emb: torch.Tensor) -> float:
    """Spearman correlation between the teacher's and the student's pairwise cosine similarities
    over the same N >= 3 sentences (rows); see the module docstring."""
    if teacher_emb.ndim != 2 or student_emb.ndim != 2 or len(teacher_emb) != len(student_emb):
        raise ValueError(f"need [N, D] embeddings of the same N sentences, got {tuple(teacher_emb.shape)} "
                         f"and {tuple(student_emb.shape)}")
    if len(teacher_emb) < 3:
        raise ValueError(f"need at least 3 sentences (2 pairs), got {len(teacher_emb)}")
    return spearman(pairwise_cosines(teacher_emb), pairwise_cosines(student_emb))
