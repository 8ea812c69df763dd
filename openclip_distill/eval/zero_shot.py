"""Zero-shot classification: class embeddings from prompts, and top-k accuracy.

Ties count against the model: the true class is within the top k when fewer than k *other*
classes score greater than **or equal to** it. (A collapsed model that gives every class the same
score therefore scores 0, never 100%.)
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Sequence, Union

import torch
import torch.nn.functional as F


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the number of other classes whose score is >= the true class's score."""
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels, device=logits.device).long()
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    true = logits.gather(1, labels[:, None])
    return (logits >= true).sum(1) - 1


def zero_shot_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                       topk: Union[int, Iterable[int]] = (1, 5)) -> Dict[int, float]:
    """Fraction of rows whose true class is in the top ``k`` (ties count against), per ``k``.

    ``k`` larger than the number of classes is clipped to it. Returns ``{k: fraction in [0, 1]}``;
    an empty input gives 0.0.
    """
    ks = [topk] if isinstance(topk, int) else list(topk)
    rank = true_class_rank(logits, labels)
    n, num_classes = rank.shape[0], torch.as_tensor(logits).shape[1]
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"topk must be >= 1, got {k}")
        kk = min(int(k), num_classes)
        out[int(k)] = float((rank < kk).sum().item()) / n if n else 0.0
    return out


@torch.no_grad()
def embed_texts(encode_texts: Callable, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N, D) fp32 unit-norm embeddings of ``texts``; ``encode_texts``: ``list[str]`` -> ``[n, D]``, called in batches."""
    out = [F.normalize(encode_texts(list(texts[i:i + batch_size])).float(), dim=-1)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def class_embeddings(encode_texts: Callable, classnames: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """(C, D) fp32 unit-norm class embeddings: mean of the normalised prompt embeddings of every
    template (``{c}`` replaced by the class name), normalised again (as OpenCLIP does)."""
    prompts = [t.replace("{c}", c) for c in classnames for t in templates]
    feats = embed_texts(encode_texts, prompts, batch_size)
    return F.normalize(feats.view(len(classnames), len(templates), -1).mean(1), dim=-1)
