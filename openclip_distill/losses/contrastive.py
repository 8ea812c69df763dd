"""Contrastive alignment on paired data (CLIP's symmetric InfoNCE; DC-CLIP's second stage).

With ``I, T`` the student's normalised image/text features of N pairs and ``s`` its logit scale:

    L_con = 1/2 (CE(s I T^T, diag) + CE(s T I^T, diag))

plus, with ``distill_weight > 0``, a term that keeps the teacher's similarity structure while
aligning (``I_t, T_t`` the teacher's features, ``s_t`` its scale, KL teacher || student, batch mean,
rows and columns):

    L_keep = distill_weight * 1/2 (KL_rows(s_t I_t T_t^T, s I T^T) + KL_rows(s_t T_t I_t^T, s T I^T))

Both go through ``openclip_distill.kernels`` (no N x N matrix with ``impl="chunked"``/``"triton"``).
"""
import torch.nn as nn

from ..kernels import contrastive_loss, similarity_kl_loss
from ..registry import register_loss


@register_loss("contrastive")
class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE with the student's own logit scale, optionally keeping the teacher's structure."""

    requires_paired_data = True

    def __init__(self, distill_weight=0.0, impl="auto"):
        super().__init__()
        self.distill_weight = float(distill_weight)
        self.impl = impl

    def forward(self, image_features, text_features, logit_scale, dist_image_features=None,
                dist_text_features=None, dist_logit_scale=None, output_dict=False):
        out = {"contrastive_loss": contrastive_loss(image_features, text_features, logit_scale, impl=self.impl)}
        if self.distill_weight:
            kl = similarity_kl_loss(image_features, text_features, dist_image_features.detach(),
                                    dist_text_features.detach(), student_scale=logit_scale,
                                    teacher_scale=dist_logit_scale, bidirectional=True, impl=self.impl)
            out["distill_loss"] = self.distill_weight * 0.5 * kl
        if output_dict:
            return out
        return sum(out.values())
