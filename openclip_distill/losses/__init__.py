"""Distillation losses, registered by name (``list_losses()``)."""
from .dime_fm import DimeFMLoss
from .clip_distill import ClipDistillLoss
from .feature import FeatureDistillLoss
from .contrastive import ContrastiveLoss
from .clip_kd import ClipKDLoss
from .affinity import AffinityMimickingLoss
from .dlip import DlipLoss
