"""DIME-FM losses (Sun et al., ICCV 2023): distillation from *unpaired* images and sentences.

With ``n(x)`` the row-wise L2 normalisation, ``s`` the fixed logit scale (100), teacher features
``v_t`` (images), ``t_t`` (sentences), student image features ``v_s`` and student text side ``t``
(``n(t_t)`` when the student reuses the frozen teacher text tower, else ``n(t_s)``):

    L_vl    =     KL_bi  (s n(v_t) n(t_t)^T,  s n(v_s) t^T        ; tau_vl)
    L_pvl   = 2 * KL_rows(s n(v_t) n(v_t)^T,  s n(v_s) n(v_t)^T   ; tau_pvl)  (+ text analogue)
    L_udist = 2 * KL_rows(s n(v_t) n(v_t)^T,  s n(v_s) n(v_s)^T   ; tau_ud)   (+ text analogue)

``KL_rows`` is the batch-mean row-wise KL(teacher softmax || student softmax), ``KL_bi`` adds the
column direction. Official defaults (sunxm2357/DIME-FM): tau = (1, 3, 7), weights (0.7, 0.3, 0.0).

Teacher ensemble (``--distill-teacher A,B``, MobileCLIP's average after softmax): in L_vl and L_udist
the teacher softmax is the average of the K teachers' softmaxes (``t`` is then the student's own text
side, or the *first* teacher's text features when the student reuses that teacher's text tower);
L_pvl's student logits ``s n(v_s) n(v_t)^T`` contain the teacher's features, so it is the mean over
teachers of the single-teacher term (every teacher's width must then equal the student's).
"""
import torch.nn as nn
import torch.nn.functional as F

from ..compute_dtype import compute_dtype
from ..kernels import similarity_kl_loss
from ..errors import DistillUsageError
from ..registry import register_loss
from .teacher_members import mean_over_teachers, normalized_targets, teacher_dims, teacher_members


def _check_pvl_widths(student_dim, teacher_dim):
    if student_dim != teacher_dim:
        raise DistillUsageError(
            f"--distill-loss dime-fm: student features have {student_dim} dims but the teacher's have "
            f"{teacher_dim}; L_pvl compares them directly: pick a student with the teacher's embed_dim or set "
            f"pvl_weight=0 in --distill-loss-kwargs")


@register_loss("dime-fm")
class DimeFMLoss(nn.Module):
    """Weighted sum of the DIME-FM terms; images and sentences are unrelated batches (any sizes)."""

    requires_paired_data = False

    def __init__(self, vl_weight=0.7, pvl_weight=0.3, udist_weight=0.0, vl_temperature=1.0,
                 pvl_temperature=3.0, udist_temperature=7.0, logit_scale=100.0, impl="auto",
                 student_embed_dim=None, teacher_embed_dim=None):
        super().__init__()
        self.vl_weight = float(vl_weight)
        self.pvl_weight = float(pvl_weight)
        self.udist_weight = float(udist_weight)
        self.vl_temperature = float(vl_temperature)
        self.pvl_temperature = float(pvl_temperature)
        self.udist_temperature = float(udist_temperature)
        self.logit_scale = float(logit_scale)
        self.impl = impl
        if self.pvl_weight and student_embed_dim and teacher_embed_dim:  # known up front: fail before training
            for teacher_dim in teacher_dims(teacher_embed_dim):
                _check_pvl_widths(student_embed_dim, teacher_dim)

    def _kl(self, student_a, student_b, teacher_a, teacher_b, temperature, bidirectional):
        return similarity_kl_loss(
            student_a, student_b, teacher_a, teacher_b, student_scale=self.logit_scale,
            teacher_scale=self.logit_scale, temperature=temperature, bidirectional=bidirectional,
            impl=self.impl)

    def _self_terms(self, student, teacher, temperature, paired_with_teacher):
        """2 * KL_rows(s T T^T, s S X^T) with X = T (L_pvl) or X = S (L_udist).

        An ensemble (``teacher`` a tuple): L_udist's target is the teachers' averaged softmax; L_pvl's student
        logits contain the teacher's features, so it is the mean over teachers of the single-teacher term."""
        if paired_with_teacher:
            return mean_over_teachers([2.0 * self._kl(student, t, t, t, temperature, bidirectional=False)
                                       for t in teacher_members(teacher)])
        return 2.0 * self._kl(student, student, teacher, teacher, temperature, bidirectional=False)

    def forward(self, image_features, dist_image_features, dist_text_features, text_features=None,
                output_dict=False):
        v_s = F.normalize(image_features, dim=-1)
        v_t = normalized_targets(dist_image_features)
        t_t = normalized_targets(dist_text_features)
        t_s = None if text_features is None else F.normalize(text_features, dim=-1)
        zero = v_s.new_zeros((), dtype=compute_dtype(v_s))
        if self.pvl_weight:
            for member in teacher_members(v_t):
                _check_pvl_widths(v_s.shape[1], member.shape[1])

        vl = pvl = udist = zero
        if self.vl_weight:
            # a student on the frozen teacher text tower: with an ensemble, the first teacher's (the one adopted)
            t = teacher_members(t_t)[0] if t_s is None else t_s
            vl = self.vl_weight * self._kl(v_s, t, v_t, t_t, self.vl_temperature, bidirectional=True)
        if self.pvl_weight:
            pvl = self._self_terms(v_s, v_t, self.pvl_temperature, paired_with_teacher=True)
            if t_s is not None:
                pvl = pvl + self._self_terms(t_s, t_t, self.pvl_temperature, paired_with_teacher=True)
            pvl = self.pvl_weight * pvl
        if self.udist_weight:
            udist = self._self_terms(v_s, v_t, self.udist_temperature, paired_with_teacher=False)
            if t_s is not None:
                udist = udist + self._self_terms(t_s, t_t, self.udist_temperature, paired_with_teacher=False)
            udist = self.udist_weight * udist

        if output_dict:
            return {"vl_loss": vl, "pvl_loss": pvl, "udist_loss": udist}
        return vl + pvl + udist
