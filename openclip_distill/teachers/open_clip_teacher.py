"""OpenCLIP teachers: any OpenCLIP name (``ViT-L-14``, ``hf-hub:...``, ``local-dir:...``) and tag/path.

QuickGELU follows the pretrained tag's config (OpenAI's ViT-L-14 weights need it); the model is put
in ``eval()`` with ``requires_grad=False`` and is never wrapped in DDP/ZeRO.
"""
import logging
from typing import Sequence

import open_clip
import torch
from open_clip_train.precision import get_autocast

from ..compute_dtype import at_least_fp32
from ..data.views import ModelInput
from ..errors import DistillUsageError
from ..models.naming import check_model_name, resolve_pretrained
from ..models.text_tower import text_tower_state_dict
from .base import IMAGE, TEXT, Teacher


def create_frozen_open_clip(name, pretrained, *, device, precision="fp32", cache_dir=None, flag="--distill-teacher"):
    """Build an OpenCLIP model for inference only; returns (model, preprocess_val, tokenizer)."""
    check_model_name(name, flag)
    pretrained, quick_gelu = resolve_pretrained(name, pretrained, f"{flag}-pretrained")
    model_precision = {"fp16": "fp16", "bf16": "bf16"}.get(precision, "fp32")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained, precision=model_precision, device=device, force_quick_gelu=quick_gelu,
            output_dict=True, cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DistillUsageError(
            f"{flag}-pretrained: could not load weights {pretrained!r} for {name} ({reason}); "
            f"without internet, download them beforehand into --cache-dir or pass a local "
            f".pt/.safetensors file") from None
    model.eval().requires_grad_(False)
    logging.info(f"Teacher {name} ({pretrained or 'random init'}), quick_gelu={quick_gelu}, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, frozen")
    return model, preprocess, tokenizer


class OpenCLIPTeacher(Teacher):
    """An OpenCLIP CLIP (both towers) behind the :class:`Teacher` contract."""

    kind = "open_clip"
    modalities = frozenset({IMAGE, TEXT})

    def __init__(self, model, tokenizer, *, name, pretrained=None, device="cpu", precision="fp32"):
        self.model, self.tokenizer = model, tokenizer
        self.name, self.pretrained = name, pretrained
        self.device = torch.device(device)
        self._input = ModelInput.from_model(model).to(self.device)  # OpenCLIP's own size and mean/std
        self.image_size = self._input.image_size
        self.image_mean = tuple(self._input.mean.flatten().tolist())
        self.image_std = tuple(self._input.std.flatten().tolist())
        self._autocast = get_autocast(precision, device_type=self.device.type)
        self._dtype = next(model.parameters()).dtype
        self.logit_scale = float(model.logit_scale.exp().float().reshape(()))
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = None if bias is None else float(bias.float().reshape(()))
        with torch.no_grad(), self._autocast():
            self.embed_dim = int(self.encode_text(["a"]).shape[-1])

    @torch.no_grad()
    def encode_image(self, views: torch.Tensor) -> torch.Tensor:
        pixels = self._input(views.to(self.device, non_blocking=True)).to(self._dtype)  # the model's dtype
        with self._autocast():
            return at_least_fp32(self.model.encode_image(pixels, normalize=True))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            return at_least_fp32(self.model.encode_text(tokens, normalize=True))

    def text_tower_state_dict(self):
        return text_tower_state_dict(self.model)


def create_open_clip_teacher(name, pretrained=None, *, device="cpu", precision="fp32", cache_dir=None) -> OpenCLIPTeacher:
    model, _, tokenizer = create_frozen_open_clip(name, pretrained, device=device, precision=precision,
                                                  cache_dir=cache_dir)
    return OpenCLIPTeacher(model, tokenizer, name=name, pretrained=pretrained, device=device, precision=precision)
