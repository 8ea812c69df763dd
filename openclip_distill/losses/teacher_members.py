"""Teacher inputs of a loss, for one teacher or an ensemble (MobileCLIP, Vasu et al., CVPR 2024).

With ``--distill-teacher A,B`` every ``dist_*`` input is a tuple with one entry per teacher; with one
teacher a plain tensor. Two rules make every loss work with both:

* a similarity-KL term takes the tuple as it is: ``openclip_distill.kernels.similarity_kl_loss`` (and
  ``similarity_entropy``) average the teachers' softmaxes, "average after softmax";
* a term whose *student* logits or regression target contain teacher features (DIME-FM's P-VL, CLIP-KD's
  ICL and FD, the ``feature`` loss) cannot be mixed after a softmax: it is the mean over teachers of the
  single-teacher term, each teacher with its own adapter when the widths differ.

With one teacher the mean over one term is that term (``sum([x]) / 1 == x`` exactly), so single-teacher
runs compute the same numbers as before.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


def teacher_members(features: Features) -> List[torch.Tensor]:
    """The per-teacher tensors: ``[features]`` for one teacher, the list of an ensemble's."""
    return list(features) if isinstance(features, (tuple, list)) else [features]


def map_members(fn, features: Features) -> Features:
    """``fn`` applied to every teacher's tensor, keeping the structure (a tensor or a tuple)."""
    if isinstance(features, (tuple, list)):
        return tuple(fn(f) for f in features)
    return fn(features)


def detached(features: Features) -> Features:
    """Teacher features without gradient (the structure kept)."""
    return map_members(lambda f: f.detach(), features)


def normalized_targets(features: Features) -> Features:
    """Detached, row-wise L2-normalised teacher features (the structure kept)."""
    return map_members(lambda f: F.normalize(f.detach(), dim=-1), features)


def teacher_dims(teacher_embed_dim) -> Optional[List[int]]:
    """The teachers' widths as a list (an int for one teacher, a sequence for an ensemble), None unknown."""
    if teacher_embed_dim is None:
        return None
    if isinstance(teacher_embed_dim, (tuple, list)):
        return [int(d) for d in teacher_embed_dim]
    return [int(teacher_embed_dim)]


def mean_over_teachers(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1/K sum_k terms[k]`` (the term itself for K = 1)."""
    return sum(terms) / len(terms)


def adapter_list(adapters: Optional[nn.Module], count: int) -> List[Optional[nn.Module]]:
    """Per-teacher adapters of a loss: an ``nn.ModuleList`` (ensemble), one module (one teacher) or None
    (no adapters: ``count`` Nones)."""
    if adapters is None:
        return [None] * count
    out = list(adapters) if isinstance(adapters, nn.ModuleList) else [adapters]
    if len(out) != count:
        raise ValueError(f"the loss was built for {len(out)} teacher(s) but receives {count}; build it with "
                         f"teacher_embed_dim listing every teacher's width (the CLI does)")
    return out


def student_and_teacher_dims(student_embed_dim, teacher_embed_dim):
    """``(student width, [teacher widths])``, each filled from the other when one is unknown (one teacher)."""
    t_dims = teacher_dims(teacher_embed_dim)
    if t_dims is None and student_embed_dim:
        t_dims = [int(student_embed_dim)]
    s_dim = student_embed_dim or (t_dims[0] if t_dims and len(t_dims) == 1 else None)
    return s_dim, t_dims
