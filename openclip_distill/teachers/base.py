"""The teacher contract: a frozen model with its own input spec, behind two ``encode_*`` methods.

Every teacher (an OpenCLIP model, a Hugging Face ``CLIPModel``/``AltCLIPModel``/``SiglipModel``,
a sentence encoder, ...) is wrapped in a :class:`Teacher`. Nothing outside ``openclip_distill.teachers``
calls a teacher model's own ``encode_image``/``encode_text``/``get_*_features`` or imports
``transformers``: the training step, the embedding cache, evaluation and the demo only see this.

    teacher = openclip_distill.create_teacher("hf:path/to/clip", device="cpu", precision="fp32")
    v = teacher.encode_image(views)   # views: [N, 3, H, W] float RGB in [0, 1] -> [N, D] fp32, L2-normalised
    t = teacher.encode_text(["a photo of a cat", ...])                      # -> [T, D] fp32, L2-normalised
"""
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

import torch

from ..data.views import ModelInput

IMAGE, TEXT = "image", "text"


class Teacher:
    """A frozen teacher. Subclasses set the attributes in ``__init__`` and implement the encoders.

    Attributes:
        name, pretrained: what ``create_teacher`` was given (strings, for logs and caches).
        modalities: ``frozenset({"image", "text"})``, or one of them for a single-tower teacher.
        embed_dim: width of the (projected) embeddings both encoders return.
        image_size: ``(height, width)`` the image tower takes, ``None`` without an image tower.
        image_mean, image_std: its RGB normalisation (``None`` without an image tower).
        logit_scale: ``exp(learned log-scale)`` as a float (1.0 when the model has none).
        logit_bias: float or ``None`` (SigLIP has one).
        device: where the model lives; ``encode_*`` accept inputs anywhere and return on ``device``.
        model: the wrapped ``torch.nn.Module`` (in ``eval()``, ``requires_grad=False``).
        kind: a short tag of the adapter (``"open_clip"``, ``"hf-clip"``, ``"hf-sentence"``, ...).
    """

    name: str = ""
    pretrained: Optional[str] = None
    kind: str = ""
    modalities: FrozenSet[str] = frozenset()
    embed_dim: int = 0
    image_size: Optional[Tuple[int, int]] = None
    image_mean: Optional[Sequence[float]] = None
    image_std: Optional[Sequence[float]] = None
    logit_scale: float = 1.0
    logit_bias: Optional[float] = None
    device: torch.device = torch.device("cpu")
    model: torch.nn.Module = None

    # -- encoders ------------------------------------------------------------------------------
    def encode_image(self, views: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` float RGB in [0, 1] (any H, W) -> ``[N, embed_dim]`` float32 (float64 for a
        float64 model), L2-normalised.
        The teacher resizes to its ``image_size`` and normalises with its own mean/std
        (:meth:`image_input`). No gradient."""
        raise ValueError(f"teacher {self.name!r} has no image tower (modalities: {sorted(self.modalities)})")

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``list[str]`` -> ``[T, embed_dim]`` float32, L2-normalised, with the teacher's own tokenizer
        (attention mask included, truncated to its maximum length). No gradient."""
        raise ValueError(f"teacher {self.name!r} has no text tower (modalities: {sorted(self.modalities)})")

    # -- helpers shared by the adapters -------------------------------------------------------
    def image_input(self) -> ModelInput:
        """The resize + normalise step of this teacher's image tower, on ``device``."""
        if self.image_size is None:
            raise ValueError(f"teacher {self.name!r} has no image tower")
        return ModelInput(self.image_size, self.image_mean, self.image_std).to(self.device)

    def has(self, modality: str) -> bool:
        return modality in self.modalities

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def text_tower_state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """An OpenCLIP-format text tower (+ logit scale/bias) a student can adopt
        (``--student-text-tower teacher``), or ``None`` when the teacher is not an OpenCLIP model."""
        return None

    def describe(self) -> dict:
        """Primitive fields describing the teacher (stored in caches and checkpoints)."""
        return {"teacher": self.name, "teacher_pretrained": self.pretrained, "teacher_kind": self.kind,
                "teacher_modalities": sorted(self.modalities), "embed_dim": int(self.embed_dim),
                "teacher_image_size": list(self.image_size) if self.image_size else None,
                "logit_scale": float(self.logit_scale),
                "logit_bias": None if self.logit_bias is None else float(self.logit_bias)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, modalities={sorted(self.modalities)}, "
                f"embed_dim={self.embed_dim}, image_size={self.image_size})")
