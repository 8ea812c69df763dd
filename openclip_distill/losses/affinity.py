"""TinyCLIP's affinity mimicking (Wu et al., "TinyCLIP: CLIP Distillation via Affinity Mimicking and
Weight Inheritance", ICCV 2023).

The student's image-to-text and text-to-image affinities (row softmaxes of the similarity matrix) mimic
the teacher's, both at one fixed scale ``c``:

    affinity    = 1/2 (H_rows(softmax(c I_t T_t^T), softmax(c I T^T)) + H_rows(softmax(c T_t I_t^T), softmax(c T I^T)))
    contrastive = clip_weight * 1/2 (CE_rows(s I T^T) + CE_rows(s T I^T))      (CLIP's InfoNCE, student scale s)

``H_rows(p, q) = mean over rows of -sum_j p_j log q_j`` is the soft cross-entropy, computed as the
fused similarity KL plus the teacher's entropy (``H(p, q) = KL(p || q) + H(p)``), so with
``impl="chunked"`` or ``"triton"`` no N x N matrix is materialised. Features are the normalised
embeddings the loss receives; the student's own logit scale enters only the contrastive term.

Teacher ensemble (``--distill-teacher A,B``, MobileCLIP): the teacher affinity is the average of the K
teachers' softmaxes, every teacher at the same scale ``c``, and ``H`` uses that average.
"""
import torch
import torch.nn as nn

from ..errors import DistillUsageError
from ..kernels import contrastive_loss, similarity_entropy, similarity_kl_loss
from ..registry import register_loss
from .teacher_members import detached


@register_loss("affinity")
class AffinityMimickingLoss(nn.Module):
    """Soft cross-entropy between teacher and student affinities at a common scale, plus optional InfoNCE."""

    requires_paired_data = True

    def __init__(self, scale=50.0, clip_weight=0.0, impl="auto"):
        super().__init__()
        if not float(scale) > 0:
            raise DistillUsageError(f"--distill-loss-kwargs: affinity scale={scale} must be > 0")
        if float(clip_weight) < 0:
            raise DistillUsageError(f"--distill-loss-kwargs: affinity clip_weight={clip_weight} must be >= 0")
        self.scale, self.clip_weight, self.impl = float(scale), float(clip_weight), impl

    def forward(self, image_features, text_features, logit_scale, dist_image_features, dist_text_features,
                output_dict=False):
        if text_features is None:
            raise DistillUsageError("--distill-loss affinity needs the student's own text features; "
                                    "use --student-text-tower train")
        teacher_i, teacher_t = detached(dist_image_features), detached(dist_text_features)  # tuples: an ensemble
        kl = similarity_kl_loss(image_features, text_features, teacher_i, teacher_t, student_scale=self.scale,
                                teacher_scale=self.scale, bidirectional=True, impl=self.impl)
        entropy = similarity_entropy(teacher_i, teacher_t, self.scale, bidirectional=True)
        if self.clip_weight:
            con = self.clip_weight * contrastive_loss(image_features, text_features, logit_scale, impl=self.impl)
        else:
            # zero, but still connected to the student's scale: every trainable parameter gets a gradient
            # (DistributedDataParallel expects one for each)
            con = (torch.as_tensor(logit_scale, dtype=torch.float32, device=image_features.device) * 0.0).sum()
        out = {"affinity_loss": 0.5 * (kl + entropy), "contrastive_loss": con}
        if output_dict:
            return out
        return out["affinity_loss"] + out["contrastive_loss"]
