"""Feature distillation: the student's embeddings regress onto the teacher's (DC-CLIP's first stage).

Per modality m in {image, text}, with ``n(x)`` the row-wise L2 normalisation (``normalize=True``),
``A_m`` a learned linear adapter from the student's embedding width to the teacher's (initialised to
the identity when the widths are equal) and ``d`` the distance:

    L_m = d(A_m(n(f_s)), n(f_t))        L = w_image * L_image + w_text * L_text

    d = smooth_l1:  mean over rows of sum over dimensions of SmoothL1(x - y; beta)    (DC-CLIP's choice)
        mse:        mean over rows of ||x - y||^2
        cosine:     mean over rows of 1 - cos(x, y)

(Per-row sums, not means over every element: on unit-norm embeddings each element is ~1/sqrt(D), and
a mean over D elements shrinks the gradient by D, down to the size of Adam's epsilon.)

With a teacher ensemble (``--distill-teacher A,B``) each ``L_m`` is the mean over the teachers of the
single-teacher term, with one adapter per teacher (a regression target cannot be averaged after a
softmax; the student regresses onto each teacher through its own map).

``adapter=False`` drops ``A_m`` (the student's width must equal the teacher's): both towers then
regress straight onto the teacher's space, so the student's image and text embeddings stay aligned
with each other, while two learned adapters can drift apart and leave that to a later alignment
stage.

The adapters train with the student and are saved in training checkpoints (``loss_state_dict``),
never in the exported student. A zero weight drops that modality from the data too: with
``image_weight=0`` the run needs sentences only (``--train-texts``), with ``text_weight=0`` images only.
"""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DistillUsageError
from ..registry import register_loss
from .teacher_members import adapter_list, mean_over_teachers, student_and_teacher_dims, teacher_members

DISTANCES = ("smooth_l1", "mse", "cosine")


def feature_distance(x: torch.Tensor, y: torch.Tensor, distance: str, beta: float = 1.0) -> torch.Tensor:
    """The mean distance between rows of ``x`` and ``y`` (see the module docstring)."""
    if distance == "smooth_l1":
        return F.smooth_l1_loss(x, y, beta=beta, reduction="none").sum(-1).mean()
    if distance == "mse":
        return F.mse_loss(x, y, reduction="none").sum(-1).mean()
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(x, y, dim=-1)).mean()
    raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")


def make_adapter(student_dim: int, teacher_dim: int) -> nn.Linear:
    """A linear map from the student's width to the teacher's; the identity when they are equal."""
    adapter = nn.Linear(int(student_dim), int(teacher_dim))
    if student_dim == teacher_dim:
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(int(teacher_dim)))
            adapter.bias.zero_()
    return adapter


def make_adapters(student_dim: int, teacher_dims: List[int]) -> nn.Module:
    """One adapter (one teacher), or an ``nn.ModuleList`` with one per teacher of an ensemble."""
    if len(teacher_dims) == 1:
        return make_adapter(student_dim, teacher_dims[0])
    return nn.ModuleList(make_adapter(student_dim, d) for d in teacher_dims)


@register_loss("feature")
class FeatureDistillLoss(nn.Module):
    """``d(A(f_s), f_t)`` per modality with learned adapters; sentence-only or image-only runs allowed."""

    requires_paired_data = False

    def __init__(self, image_weight=1.0, text_weight=1.0, distance="smooth_l1", normalize=True, beta=1.0,
                 adapter=True, student_embed_dim: Optional[int] = None, teacher_embed_dim: Optional[int] = None,
                 impl="auto"):
        super().__init__()
        self.image_weight, self.text_weight = float(image_weight), float(text_weight)
        if distance not in DISTANCES:
            raise DistillUsageError(f"--distill-loss-kwargs: distance={distance!r} is not one of "
                                    f"{', '.join(DISTANCES)}")
        if not self.image_weight and not self.text_weight:
            raise DistillUsageError("--distill-loss-kwargs: feature needs image_weight or text_weight > 0")
        self.distance, self.normalize, self.beta = distance, bool(normalize), float(beta)
        self.impl = impl  # no similarity matrix here; accepted like every loss
        if not isinstance(adapter, bool):
            raise DistillUsageError(f"--distill-loss-kwargs: adapter must be True or False, got {adapter!r}")
        self.adapter = adapter
        s_dim, t_dims = student_and_teacher_dims(student_embed_dim, teacher_embed_dim)
        if not adapter and s_dim and t_dims and any(int(t) != int(s_dim) for t in t_dims):
            raise DistillUsageError(
                f"--distill-loss-kwargs: adapter=False needs the student's embedding width ({s_dim}) to equal the "
                f"teacher's ({', '.join(map(str, t_dims))}); keep the adapter or pick a student of that width")
        with_adapters = bool(s_dim) and adapter
        self.image_adapter = make_adapters(s_dim, t_dims) if (with_adapters and self.image_weight) else None
        self.text_adapter = make_adapters(s_dim, t_dims) if (with_adapters and self.text_weight) else None

    @property
    def modalities(self) -> frozenset:
        return frozenset(m for m, w in (("image", self.image_weight), ("text", self.text_weight)) if w)

    def _term(self, student, teachers, adapters, name):
        """The mean over teachers of ``d(A_k(f_s), f_t,k)`` (one term for one teacher)."""
        if student is None:
            raise DistillUsageError(
                f"--distill-loss feature: {name}_weight > 0 needs the student's own {name} features; "
                + ("use --student-text-tower train" if name == "text" else "pass --train-images"))
        teachers = teacher_members(teachers)
        return mean_over_teachers([self._one_teacher_term(student, t, a, name)
                                   for t, a in zip(teachers, adapter_list(adapters, len(teachers)))])

    def _one_teacher_term(self, student, teacher, adapter, name):
        if self.normalize:
            student, teacher = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        # fp32 at least (bf16/fp16 features under autocast), or the adapter's own dtype
        x = (adapter(student.to(adapter.weight.dtype)) if adapter is not None
             else student.to(torch.promote_types(student.dtype, torch.float32)))
        if x.shape[-1] != teacher.shape[-1]:
            raise DistillUsageError(
                f"--distill-loss feature: student {name} features have {x.shape[-1]} dims, the teacher's "
                f"{teacher.shape[-1]}; " + ("adapter=False needs equal widths" if not self.adapter else
                                            "build the loss with student_embed_dim/teacher_embed_dim (the CLI does)"))
        return feature_distance(x, teacher.detach().to(x.dtype), self.distance, self.beta)

    def forward(self, image_features=None, text_features=None, dist_image_features=None, dist_text_features=None,
                output_dict=False):
        out = {}
        if self.image_weight:
            out["image_loss"] = self.image_weight * self._term(image_features, dist_image_features,
                                                               self.image_adapter, "image")
        if self.text_weight:
            out["text_loss"] = self.text_weight * self._term(text_features, dist_text_features,
                                                             self.text_adapter, "text")
        if output_dict:
            return out
        return sum(out.values())
