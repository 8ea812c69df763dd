"""OpenCLIP's paired contrastive + soft-cross-entropy distillation (``DistillClipLoss``).

    L_con  = 1/2 (CE(s_s I T^T, diag) + CE(s_s T I^T, diag))
    L_dist = 1/2 (H(softmax(s_t I_t T_t^T), softmax(s_s I T^T)) + same over columns)

``H(p, q) = -sum p log q`` is the soft cross-entropy, i.e. KL(p || q) + H(p): computed here as the
fused KL plus the teacher entropy so no N x M matrix needs to be materialised. Unlike OpenCLIP's
version it accepts a teacher logit bias (SigLIP teachers): a per-matrix constant does not change a
softmax, so it is ignored.

Teacher ensemble (``--distill-teacher A,B``, MobileCLIP): the teacher softmax is the average of the K
teachers' softmaxes, each at its own logit scale, and ``H`` is that average's entropy.
"""
import torch.nn as nn

from ..kernels import contrastive_loss, similarity_kl_loss, similarity_entropy
from ..registry import register_loss
from .teacher_members import detached


@register_loss("clip-distill")
class ClipDistillLoss(nn.Module):
    """Paired-data baseline: CLIP contrastive loss plus teacher-softmax distillation."""

    requires_paired_data = True

    def __init__(self, contrastive_weight=1.0, distill_weight=1.0, impl="auto"):
        super().__init__()
        self.contrastive_weight = float(contrastive_weight)
        self.distill_weight = float(distill_weight)
        self.impl = impl

    def forward(self, image_features, text_features, logit_scale, dist_image_features, dist_text_features,
                dist_logit_scale, logit_bias=None, dist_logit_bias=None, output_dict=False):
        con = contrastive_loss(image_features, text_features, logit_scale, impl=self.impl)
        teacher_i, teacher_t = detached(dist_image_features), detached(dist_text_features)  # tuples: an ensemble
        kl = similarity_kl_loss(image_features, text_features, teacher_i, teacher_t,
                                student_scale=logit_scale, teacher_scale=dist_logit_scale,
                                bidirectional=True, impl=self.impl)
        entropy = similarity_entropy(teacher_i, teacher_t, dist_logit_scale, bidirectional=True)
        out = {
            "contrastive_loss": self.contrastive_weight * con,
            "distill_loss": self.distill_weight * 0.5 * (kl + entropy),
        }
        if output_dict:
            return out
        return out["contrastive_loss"] + out["distill_loss"]
