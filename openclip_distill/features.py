"""Turn a batch into the keyword inputs of a distillation loss.

The student and the teacher see the *same augmented view* (``batch["image"]``, in [0, 1]); each
model only resizes and normalises it for itself (``ModelInput``). Texts arrive as raw strings and
are tokenised by each model's own tokenizer. The loss receives only the keywords its ``forward``
declares, so user-registered losses can ask for any subset of:

    image_features, text_features, logit_scale, logit_bias            (student, with grad)
    dist_image_features, dist_text_features, dist_logit_scale, dist_logit_bias   (teacher, no grad)
"""
import inspect
from contextlib import nullcontext

import torch
from open_clip_train.precision import get_autocast

from .compute_dtype import at_least_fp32
from .data.views import ModelInput


def loss_input_names(loss) -> set:
    return set(inspect.signature(loss.forward).parameters)


class DistillFeatures:
    """Computes student and teacher features for one batch."""

    def __init__(self, student, teacher, loss, student_tokenizer, teacher_tokenizer, *, device,
                 precision="fp32", teacher_precision=None, train_student_text=False):
        self.student, self.teacher = student, teacher
        unwrapped = student.module if hasattr(student, "module") else student
        self.student_input = ModelInput.from_model(unwrapped).to(device)
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.device = device
        device_type = torch.device(device).type
        self.autocast = get_autocast(precision, device_type=device_type)
        self.input_names = loss_input_names(loss)
        self.paired = bool(getattr(loss, "requires_paired_data", False))
        self.student_text = self.paired or train_student_text
        self.uses_student_scale = bool({"logit_scale", "logit_bias"} & self.input_names)
        if teacher is not None:  # None: teacher outputs come with the batch (openclip_distill.cache)
            self.teacher_input = ModelInput.from_model(teacher).to(device)
            self.teacher_autocast = get_autocast(teacher_precision or precision, device_type=device_type)
            self.teacher_dtype = next(teacher.parameters()).dtype

    @torch.no_grad()
    def teacher_features(self, images, texts) -> dict:
        with self.teacher_autocast():
            out = {
                "dist_image_features": at_least_fp32(self.teacher.encode_image(
                    self.teacher_input(images).to(self.teacher_dtype), normalize=True)),
                "dist_text_features": at_least_fp32(self.teacher.encode_text(
                    self.teacher_tokenizer(texts).to(self.device), normalize=True)),
            }
        out["dist_logit_scale"] = at_least_fp32(self.teacher.logit_scale.exp()).reshape(())
        if getattr(self.teacher, "logit_bias", None) is not None:
            out["dist_logit_bias"] = at_least_fp32(self.teacher.logit_bias).reshape(())
        return out

    def student_features(self, images, texts, grad=True) -> dict:
        tokens = self.student_tokenizer(texts).to(self.device) if self.student_text else None
        pixels = self.student_input(images).to(next(self.student.parameters()).dtype)  # bf16 under ZeRO
        with (nullcontext() if grad else torch.no_grad()), self.autocast():
            out = self.student(image=pixels, text=tokens)
        feats = {"image_features": out["image_features"],
                 "text_features": out["text_features"] if self.student_text else None}
        # clamp inside the forward (not in place after the step): ZeRO keeps fp32 master weights
        feats["logit_scale"] = at_least_fp32(out["logit_scale"]).clamp(max=100.0).reshape(())
        if out.get("logit_bias") is not None:
            feats["logit_bias"] = out["logit_bias"].reshape(())
        return feats

    def batch_teacher_features(self, batch, images) -> dict:
        """The teacher's outputs for ``batch`` (``images`` already on the device)."""
        return self.teacher_features(images, batch["text"])

    def __call__(self, batch) -> dict:
        images = batch["image"].to(self.device, non_blocking=True)
        feats = self.batch_teacher_features(batch, images)
        feats.update(self.student_features(images, batch["text"]))
        return {k: v for k, v in feats.items() if k in self.input_names}
