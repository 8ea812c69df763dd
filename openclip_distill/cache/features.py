"""Loss inputs from cached teacher features: :class:`DistillFeatures` without a teacher.

The teacher's outputs come from the batch (``dist_image_features``, ``dist_text_features``, written
by :func:`get_cached_unpaired_data`) and the cache manifest (``dist_logit_scale``,
``dist_logit_bias``); the student side is :meth:`DistillFeatures.student_features` unchanged.
"""
import torch

from ..features import DistillFeatures


class CachedDistillFeatures(DistillFeatures):
    """Drop-in for ``DistillFeatures`` when every batch carries cached teacher features.

    ``batch_teacher_features(batch)`` replaces ``teacher_features(images, texts)`` (which needs a
    teacher and raises here): use it wherever a batch is at hand (e.g. in GradCache).
    """

    def __init__(self, student, loss, student_tokenizer, *, logit_scale: float, logit_bias=None, device,
                 precision="fp32", train_student_text=False):
        super().__init__(student, None, loss, student_tokenizer, None, device=device, precision=precision,
                         train_student_text=train_student_text)
        self.dist_logit_scale = torch.tensor(float(logit_scale), dtype=torch.float32, device=device)
        self.dist_logit_bias = (None if logit_bias is None
                                else torch.tensor(float(logit_bias), dtype=torch.float32, device=device))

    @classmethod
    def from_loader(cls, student, loss, student_tokenizer, loader, **kw):
        """Scale/bias from a :class:`CachedUnpairedLoader` (its manifest)."""
        return cls(student, loss, student_tokenizer, logit_scale=loader.logit_scale, logit_bias=loader.logit_bias,
                   **kw)

    def teacher_features(self, images, texts) -> dict:
        raise RuntimeError("CachedDistillFeatures has no teacher: call batch_teacher_features(batch) "
                           "(the batch carries dist_image_features / dist_text_features)")

    def batch_teacher_features(self, batch, images=None) -> dict:
        out = {
            "dist_image_features": batch["dist_image_features"].to(self.device, torch.float32, non_blocking=True),
            "dist_text_features": batch["dist_text_features"].to(self.device, torch.float32, non_blocking=True),
            "dist_logit_scale": self.dist_logit_scale,
        }
        if self.dist_logit_bias is not None:
            out["dist_logit_bias"] = self.dist_logit_bias
        return out
