"""The student side of a distillation step: an OpenCLIP CLIP with its own tokenizer and input size.

The loader hands every model the same augmented view in [0, 1]; the student resizes and normalises
it for itself (``ModelInput``) and tokenises raw sentences with its own tokenizer, so teacher and
student never have to share a tokenizer or an image transform.
"""
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
from open_clip_train.precision import get_autocast

from .compute_dtype import at_least_fp32
from .data.views import ModelInput

# the student's outputs a loss may declare (besides the teacher's ``dist_*`` targets)
STUDENT_OUTPUTS = ("image_features", "text_features", "logit_scale", "logit_bias")


class OpenCLIPStudent:
    """Calls an OpenCLIP CLIP (``output_dict=True``; possibly wrapped by an engine) on shared views and
    raw sentences. ``model`` may be replaced by the engine's wrapper after construction."""

    def __init__(self, model, tokenizer, *, device, precision="fp32"):
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.input = ModelInput.from_model(model).to(self.device)  # unwraps DDP / DeepSpeed itself
        self.autocast = get_autocast(precision, device_type=self.device.type)

    @property
    def image_size(self):
        return self.input.image_size

    def __call__(self, images: Optional[torch.Tensor], texts: Optional[Sequence[str]], *, grad: bool = True) -> dict:
        """Student outputs for ``images`` (views in [0, 1], or None) and ``texts`` (strings, or None):
        normalised ``image_features`` / ``text_features`` for the inputs given, the logit scale
        (clamped at 100 inside the forward: ZeRO keeps fp32 master weights) and the bias if any."""
        tokens = self.tokenizer(list(texts)).to(self.device) if texts is not None else None
        pixels = None
        if images is not None:  # the parameters' dtype: bf16 under ZeRO
            pixels = self.input(images.to(self.device, non_blocking=True)).to(next(self.model.parameters()).dtype)
        with (nullcontext() if grad else torch.no_grad()), self.autocast():
            out = self.model(image=pixels, text=tokens)
        feats = {}
        if pixels is not None:
            feats["image_features"] = out["image_features"]
        if tokens is not None:
            feats["text_features"] = out["text_features"]
        feats["logit_scale"] = at_least_fp32(out["logit_scale"]).clamp(max=100.0).reshape(())
        if out.get("logit_bias") is not None:
            feats["logit_bias"] = out["logit_bias"].reshape(())
        return feats
