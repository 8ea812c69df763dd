"""CLIP-KD's best recipe (Yang et al., "CLIP-KD: An Empirical Study of CLIP Model Distillation", CVPR 2024).

With ``I, T`` the student's normalised image/text features, ``I_t, T_t`` the teacher's, ``s`` the
student's logit scale, ``s_t`` the teacher's, ``CE_rows(X)`` the mean over rows of the cross-entropy
against the diagonal and ``KL_bi(A, B) = KL_rows(A, B) + KL_rows(A^T, B^T)`` (teacher ``A`` as target,
batchmean):

    task = 1/2 (CE_rows(s I T^T) + CE_rows(s T I^T))                 (CLIP's InfoNCE)
    CRD  = 1/2 KL_bi(s_t I_t T_t^T, s I T^T)                         (contrastive relational distillation, tau = 1)
    ICL  = 1/2 (CE_rows(s I T_t^T) + CE_rows(s T I_t^T))             (interactive contrastive learning)
    FD   = mean((P_i I - I_t)^2) + mean((P_t T - T_t)^2)             (feature distillation)
    L    = task_weight * task + crd_weight * CRD + icl_weight * ICL + fd_weight * FD

``P_i, P_t`` are learned linear maps (with bias) from the student's width to the teacher's, identity at
initialisation when the widths match; the means run over the batch and the dimensions. ICL puts student
queries against teacher keys, so it needs one width: when the widths differ it uses the FD maps,
``n(P_i I)`` and ``n(P_t T)`` with ``n`` the row-wise L2 normalisation (CLIP-KD does the same), which
also trains the maps through ICL; when they match it uses ``I`` and ``T`` as they are. The maps train
with the student and are saved in training checkpoints (``loss_state_dict``), never in the exported
student.

Teacher ensemble (``--distill-teacher A,B``, MobileCLIP): CRD's target is the average of the K
teachers' softmaxes (each at its own ``s_t``); ICL and FD put the teacher's features into the student's
logits or regression target, so each is the mean over teachers of the single-teacher term, with one
pair of maps ``P_i, P_t`` per teacher.

Every similarity matrix goes through ``openclip_distill.kernels`` (``impl``), so with
``impl="chunked"`` or ``"triton"`` no N x N matrix is materialised.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DistillUsageError
from ..kernels import contrastive_loss, cross_entropy_rows, similarity_kl_loss
from ..registry import register_loss
from .feature import make_adapters
from .teacher_members import adapter_list, detached, mean_over_teachers, student_and_teacher_dims, teacher_members


@register_loss("clip-kd")
class ClipKDLoss(nn.Module):
    """CLIP-KD: task InfoNCE + CRD + ICL + FD on paired data (see the module docstring)."""

    requires_paired_data = True

    def __init__(self, task_weight=1.0, crd_weight=1.0, icl_weight=1.0, fd_weight=2000.0,
                 student_embed_dim: Optional[int] = None, teacher_embed_dim: Optional[int] = None, impl="auto"):
        super().__init__()
        weights = dict(task_weight=task_weight, crd_weight=crd_weight, icl_weight=icl_weight, fd_weight=fd_weight)
        for name, value in weights.items():
            if float(value) < 0:
                raise DistillUsageError(f"--distill-loss-kwargs: clip-kd {name}={value} must be >= 0")
        if not any(float(v) for v in weights.values()):
            raise DistillUsageError("--distill-loss-kwargs: clip-kd needs at least one weight > 0")
        self.task_weight, self.crd_weight = float(task_weight), float(crd_weight)
        self.icl_weight, self.fd_weight = float(icl_weight), float(fd_weight)
        self.impl = impl
        s_dim, t_dims = student_and_teacher_dims(student_embed_dim, teacher_embed_dim)
        self.widths_differ = bool(s_dim) and any(s_dim != t for t in t_dims)
        needs_maps = bool(s_dim) and bool(self.fd_weight or (self.icl_weight and self.widths_differ))
        self.image_map = make_adapters(s_dim, t_dims) if needs_maps else None
        self.text_map = make_adapters(s_dim, t_dims) if needs_maps else None

    @staticmethod
    def _mapped(x, linear_map, width, name):
        """``P x`` in the map's dtype (fp32 under autocast); ``x`` itself without a map."""
        out = linear_map(x.to(linear_map.weight.dtype)) if linear_map is not None else x
        if out.shape[-1] != width:
            raise DistillUsageError(
                f"--distill-loss clip-kd: student {name} features have {out.shape[-1]} dims, the teacher's "
                f"{width}; build the loss with student_embed_dim/teacher_embed_dim (the CLI does)")
        return out

    def forward(self, image_features, text_features, logit_scale, dist_image_features, dist_text_features,
                dist_logit_scale, output_dict=False):
        if text_features is None:
            raise DistillUsageError("--distill-loss clip-kd needs the student's own text features; "
                                    "use --student-text-tower train")
        teacher_i, teacher_t = detached(dist_image_features), detached(dist_text_features)  # tuples: an ensemble
        zero = image_features.new_zeros((), dtype=torch.float32)
        out = {"task_loss": zero, "crd_loss": zero, "icl_loss": zero, "fd_loss": zero}
        if self.task_weight:
            out["task_loss"] = self.task_weight * contrastive_loss(image_features, text_features, logit_scale,
                                                                   impl=self.impl)
        if self.crd_weight:
            out["crd_loss"] = self.crd_weight * 0.5 * similarity_kl_loss(
                image_features, text_features, teacher_i, teacher_t, student_scale=logit_scale,
                teacher_scale=dist_logit_scale, bidirectional=True, impl=self.impl)
        if self.icl_weight or self.fd_weight:
            members_i, members_t = teacher_members(teacher_i), teacher_members(teacher_t)
            maps = zip(adapter_list(self.image_map, len(members_i)), adapter_list(self.text_map, len(members_t)))
            icl, fd = zip(*(self._teacher_terms(image_features, text_features, logit_scale, ti, tt, pi, pt)
                            for ti, tt, (pi, pt) in zip(members_i, members_t, maps)))
            if self.icl_weight:
                out["icl_loss"] = self.icl_weight * 0.5 * mean_over_teachers(icl)
            if self.fd_weight:
                out["fd_loss"] = self.fd_weight * mean_over_teachers(fd)
        if output_dict:
            return out
        return sum(out.values())

    def _teacher_terms(self, image_features, text_features, logit_scale, teacher_i, teacher_t, image_map, text_map):
        """``(2 ICL, FD)`` against one teacher, unweighted (None where the weight is 0)."""
        width = teacher_i.shape[-1]
        differ = image_features.shape[-1] != width
        mapped_i = mapped_t = icl = fd = None
        if self.fd_weight or (self.icl_weight and differ):
            mapped_i = self._mapped(image_features, image_map, width, "image")
            mapped_t = self._mapped(text_features, text_map, width, "text")
        if self.icl_weight:
            if differ:
                query_i, query_t = F.normalize(mapped_i, dim=-1), F.normalize(mapped_t, dim=-1)
            else:
                query_i = self._mapped(image_features, None, width, "image")
                query_t = self._mapped(text_features, None, width, "text")
            icl = (cross_entropy_rows(query_i, teacher_t, logit_scale, impl=self.impl)
                   + cross_entropy_rows(query_t, teacher_i, logit_scale, impl=self.impl))
        if self.fd_weight:
            fd = (F.mse_loss(mapped_i, teacher_i.to(mapped_i.dtype))
                  + F.mse_loss(mapped_t, teacher_t.to(mapped_t.dtype)))
        return icl, fd
