"""A teacher ensemble: ``--distill-teacher A,B --distill-teacher-pretrained a,b`` (MobileCLIP, Vasu et al.,
CVPR 2024, distils from an ensemble of CLIP teachers and averages their softmaxes).

Each member is an ordinary :class:`Teacher` with its own tokenizer, transforms and logit scale; the
ensemble's encoders return one tensor per member (a tuple of K), computed on the same views and
sentences, and the losses average the members' similarity softmaxes ("average after softmax", see
``openclip_distill.kernels.similarity_kl_loss``). A single name builds a plain :class:`Teacher`, so
one-teacher runs are unchanged.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import DistillUsageError
from .base import Teacher

SEPARATOR = ","


def split_teacher_flags(names: str, pretrained: Optional[str]) -> List[Tuple[str, Optional[str]]]:
    """``[(name, pretrained), ...]`` from the comma-separated flags; an empty weights entry means none."""
    members = [n.strip() for n in str(names).split(SEPARATOR)]
    if any(not n for n in members):
        raise DistillUsageError(f"--distill-teacher: {names!r} has an empty teacher name; separate teachers with "
                                f"single commas, e.g. ViT-B-32,ViT-B-16")
    if len(members) == 1:
        return [(members[0], pretrained)]
    weights = [None] * len(members) if pretrained is None else [w.strip() or None for w in pretrained.split(SEPARATOR)]
    if len(weights) != len(members):
        raise DistillUsageError(f"--distill-teacher-pretrained: {len(weights)} weight entries for {len(members)} "
                                f"teachers ({names}); give one per teacher, comma-separated (an empty entry for "
                                f"none)")
    return list(zip(members, weights))


def is_ensemble_name(names: Optional[str]) -> bool:
    return names is not None and SEPARATOR in str(names)


class TeacherEnsemble:
    """K frozen teachers behind the :class:`Teacher` encoders; per-member attributes are tuples.

    Attributes: ``members`` (the teachers), ``name``/``pretrained`` (the flags), ``kind`` ("ensemble"),
    ``modalities`` (those every member has), ``embed_dim`` and ``logit_scale`` (tuples, one per member),
    ``image_size`` (the largest member's: the shared view is cut at that size and each member resizes it).
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[Teacher], name: str, pretrained: Optional[str]):
        if len(members) < 2:
            raise ValueError("a TeacherEnsemble needs at least two teachers")
        self.members = list(members)
        self.name, self.pretrained = name, pretrained
        self.modalities = frozenset.intersection(*(frozenset(m.modalities) for m in self.members))
        self.embed_dim = tuple(int(m.embed_dim) for m in self.members)
        self.logit_scale = tuple(float(m.logit_scale) for m in self.members)
        self.logit_bias = None  # a per-matrix constant: no softmax depends on it
        sizes = [tuple(m.image_size) for m in self.members if m.image_size]
        self.image_size = max(sizes, key=max) if sizes else None
        self.device = self.members[0].device

    def __len__(self):
        return len(self.members)

    def has(self, modality: str) -> bool:
        return modality in self.modalities

    def encode_image(self, views: torch.Tensor) -> tuple:
        """One ``[N, D_k]`` tensor per member, each from the member's own resize and normalisation."""
        return tuple(m.encode_image(views) for m in self.members)

    def encode_text(self, texts: Sequence[str]) -> tuple:
        """One ``[T, D_k]`` tensor per member, each with the member's own tokenizer."""
        return tuple(m.encode_text(texts) for m in self.members)

    def text_tower_state_dict(self):
        """The *first* member's OpenCLIP text tower (``--student-text-tower teacher`` adopts one tower)."""
        return self.members[0].text_tower_state_dict()

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)

    def describe(self) -> dict:
        return {"teacher": self.name, "teacher_pretrained": self.pretrained, "teacher_kind": self.kind,
                "teacher_modalities": sorted(self.modalities), "members": [m.describe() for m in self.members]}

    def __repr__(self) -> str:
        return f"TeacherEnsemble({', '.join(repr(m) for m in self.members)})"
