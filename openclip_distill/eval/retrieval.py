"""Image <-> text retrieval recall@K.

Image ``i``'s positives are the texts marked in ``positives[i]`` (default: text ``i`` only, i.e.
each image's own caption); ``evaluate_model`` also marks texts whose string equals the image's
caption, since identical captions cannot be told apart. Ties count against the model: a query is a
hit at K when fewer than K negatives score greater than or equal to its best-scoring positive.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch


def _hits(scores: torch.Tensor, pos: torch.Tensor, ks) -> Dict[int, int]:
    neg_inf = torch.finfo(scores.dtype).min
    best_pos = scores.masked_fill(~pos, neg_inf).max(1, keepdim=True).values
    n_above = ((scores >= best_pos) & ~pos).sum(1)
    has_pos = pos.any(1)
    return {k: int(((n_above < k) & has_pos).sum().item()) for k in ks}


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor,
                     ks: Iterable[int] = (1, 5), positives: Optional[torch.Tensor] = None,
                     chunk: int = 1024) -> Dict[str, float]:
    """Recall@K in both directions for N images and M texts (features need not be normalised;
    scores are dot products computed in fp32, in row chunks so N x M never has to fit at once).

    ``positives``: bool (N, M); default the identity (requires N == M). Returns
    ``{"i2t_r<K>": ..., "t2i_r<K>": ...}`` with fractions in [0, 1].
    """
    img = torch.as_tensor(image_features).float()
    txt = torch.as_tensor(text_features).float().to(img.device)
    n, m = img.shape[0], txt.shape[0]
    if positives is None:
        if n != m:
            raise ValueError(f"without positives, need as many texts as images ({n} vs {m})")
        positives = torch.eye(n, dtype=torch.bool, device=img.device)
    positives = torch.as_tensor(positives, dtype=torch.bool, device=img.device)
    if positives.shape != (n, m):
        raise ValueError(f"positives must be ({n}, {m}), got {tuple(positives.shape)}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {ks}")
    i2t = {k: 0 for k in ks}
    for s in range(0, n, chunk):
        h = _hits(img[s:s + chunk] @ txt.T, positives[s:s + chunk], ks)
        for k in ks:
            i2t[k] += h[k]
    t2i = {k: 0 for k in ks}
    for s in range(0, m, chunk):
        h = _hits(txt[s:s + chunk] @ img.T, positives[:, s:s + chunk].T, ks)
        for k in ks:
            t2i[k] += h[k]
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = i2t[k] / n if n else 0.0
    for k in ks:
        out[f"t2i_r{k}"] = t2i[k] / m if m else 0.0
    return out


def recall_from_scores(i2t_scores: torch.Tensor, t2i_scores: torch.Tensor, positives: torch.Tensor,
                       ks: Iterable[int] = (1, 5)) -> Dict[str, float]:
    """Recall@K from given score matrices (e.g. after ITM re-ranking): ``i2t_scores`` (N images, M texts),
    ``t2i_scores`` (M texts, N images), ``positives`` bool (N, M); same rules and keys as
    :func:`retrieval_recall`."""
    ks = [int(k) for k in ks]
    positives = torch.as_tensor(positives, dtype=torch.bool, device=i2t_scores.device)
    n, m = positives.shape
    i2t, t2i = _hits(i2t_scores.float(), positives, ks), _hits(t2i_scores.float(), positives.T, ks)
    return {**{f"i2t_r{k}": i2t[k] / n if n else 0.0 for k in ks},
            **{f"t2i_r{k}": t2i[k] / m if m else 0.0 for k in ks}}
