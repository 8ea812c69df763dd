"""The frozen teacher's embeddings of shared views and raw sentences, exactly as in training.

Same path as :meth:`openclip_distill.features.DistillFeatures.teacher_features`: the view (in
[0, 1], ``view_size`` px) goes through ``ModelInput.from_model(teacher)`` (resize + normalise),
is cast to the teacher's parameter dtype and encoded under the teacher's autocast with
``normalize=True``; sentences are tokenised by the teacher's tokenizer. Outputs are float32.
"""
import torch
from open_clip_train.precision import get_autocast

from ..data.views import ModelInput


class TeacherEncoder:
    def __init__(self, teacher, tokenizer, *, device, precision="fp32"):
        self.teacher, self.tokenizer = teacher, tokenizer
        self.device = torch.device(device)
        self.input = ModelInput.from_model(teacher).to(self.device)
        self.autocast = get_autocast(precision, device_type=self.device.type)
        self.dtype = next(teacher.parameters()).dtype

    @property
    def image_size(self):
        return self.input.image_size

    @torch.no_grad()
    def images(self, views: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` views in [0, 1] -> ``[B, D]`` float32, L2-normalised."""
        views = views.to(self.device, non_blocking=True)
        with self.autocast():
            return self.teacher.encode_image(self.input(views).to(self.dtype), normalize=True).float()

    @torch.no_grad()
    def texts(self, texts) -> torch.Tensor:
        """``list[str]`` -> ``[T, D]`` float32, L2-normalised."""
        with self.autocast():
            return self.teacher.encode_text(self.tokenizer(list(texts)).to(self.device), normalize=True).float()

    def logit_scale(self) -> float:
        return float(self.teacher.logit_scale.exp().float().reshape(()))

    def logit_bias(self):
        bias = getattr(self.teacher, "logit_bias", None)
        return None if bias is None else float(bias.float().reshape(()))
