"""openclip_distill: distill large vision-language models into small OpenCLIP students.

Importing the package registers its student model configs with OpenCLIP and its losses with
the loss registry (``list_losses()``, ``create_distill_loss(name, **kw)``, ``register_loss``).
Teachers (OpenCLIP models or ``hf:`` transformers models) come from ``create_teacher(name, pretrained)``;
smaller BLIPs (DLIP students) from ``build_blip_student(teacher, vision_layers=..., text_layers=...)``.
"""
from .version import __version__
from .errors import DistillUsageError
from .registry import create_distill_loss, list_losses, register_loss
from .models import build_blip_student, list_student_models, register_model_configs
from . import losses  # noqa: F401  (registers the built-in losses)
from .losses import DimeFMLoss, ClipDistillLoss, FeatureDistillLoss
from .teachers import Teacher, create_teacher

register_model_configs()
