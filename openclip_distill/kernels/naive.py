"""Materialised reference implementations of the similarity-matrix losses.

These build the full N x M logit matrices in fp32 (fp64 for fp64 inputs: the tests' high-precision
reference) and are the oracle every other implementation (``chunked``, ``triton``) is tested against.
"""
import math

import torch
import torch.nn.functional as F

from ..compute_dtype import at_least_fp32
from .scale import scale_dtype


def _scale(scale, like: torch.Tensor):
    if isinstance(scale, torch.Tensor):
        return scale.to(scale_dtype(scale, like)).reshape(())
    return torch.tensor(float(scale), device=like.device, dtype=scale_dtype(scale, like))


def contrastive_loss_naive(image_features, text_features, logit_scale):
    """Symmetric InfoNCE (OpenCLIP ``ClipLoss`` on one process):

        S = s * I T^T,  L = 1/2 (CE(S, diag) + CE(S^T, diag))
    """
    s = _scale(logit_scale, image_features)
    logits = s * at_least_fp32(image_features) @ at_least_fp32(text_features).T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def kl_rows_naive(teacher_logits, student_logits, temperature=1.0):
    """KL_rows(A, B; tau) = mean_i KL(softmax(A_i/tau) || softmax(B_i/tau)) (batchmean, no tau^2)."""
    t = F.log_softmax(at_least_fp32(teacher_logits) / temperature, dim=1)
    s = F.log_softmax(at_least_fp32(student_logits) / temperature, dim=1)
    return (t.exp() * (t - s)).sum(dim=1).mean()


def similarity_kl_loss_naive(student_a, student_b, teacher_a, teacher_b, *, student_scale, teacher_scale,
                             temperature=1.0, bidirectional=True):
    """KL between teacher and student similarity softmaxes (DIME-FM, Sun et al., ICCV 2023):

        A = t_s * teacher_a teacher_b^T,  B = s_s * student_a student_b^T
        KL_rows(A, B; tau)  (+ KL_rows(A^T, B^T; tau) when bidirectional)
    """
    with torch.no_grad():
        teacher_logits = _scale(teacher_scale, teacher_a) * at_least_fp32(teacher_a) @ at_least_fp32(teacher_b).T
    student_logits = _scale(student_scale, student_a) * at_least_fp32(student_a) @ at_least_fp32(student_b).T
    loss = kl_rows_naive(teacher_logits, student_logits, temperature)
    if bidirectional:
        loss = loss + kl_rows_naive(teacher_logits.T, student_logits.T, temperature)
    return loss


def mixed_log_softmax_naive(logits_list, temperature=1.0, dim=1):
    """``log(1/K sum_k softmax(A_k / tau))``: the log of a teacher ensemble's averaged softmax (MobileCLIP,
    Vasu et al., CVPR 2024, "average after softmax"), in log space so no probability underflows."""
    logps = torch.stack([F.log_softmax(at_least_fp32(a) / temperature, dim=dim) for a in logits_list])
    return torch.logsumexp(logps, dim=0) - math.log(len(logits_list))


def kl_rows_ensemble_naive(teacher_logits_list, student_logits, temperature=1.0):
    """KL_rows with the averaged teacher softmax ``p_i = 1/K sum_k softmax(A_k[i] / tau)`` as the target:

        mean_i sum_j p_ij (log p_ij - log q_ij),   q = softmax(B / tau)
    """
    t = mixed_log_softmax_naive(teacher_logits_list, temperature)
    s = F.log_softmax(at_least_fp32(student_logits) / temperature, dim=1)
    return (t.exp() * (t - s)).sum(dim=1).mean()


def similarity_kl_loss_ensemble_naive(student_a, student_b, teachers_a, teachers_b, *, student_scale, teacher_scales,
                                      temperature=1.0, bidirectional=True):
    """Similarity KL against an ensemble of K teachers, each with its own features and logit scale:

        A_k = t_k * teachers_a[k] teachers_b[k]^T,   B = s_s * student_a student_b^T
        KL_rows(mix(A), B; tau)  (+ the same over columns when bidirectional)

    where ``mix`` averages the K softmaxes (rows, or columns for the column direction).
    """
    with torch.no_grad():
        teacher_logits = [_scale(t, a) * at_least_fp32(a) @ at_least_fp32(b).T
                          for a, b, t in zip(teachers_a, teachers_b, teacher_scales)]
    student_logits = _scale(student_scale, student_a) * at_least_fp32(student_a) @ at_least_fp32(student_b).T
    loss = kl_rows_ensemble_naive(teacher_logits, student_logits, temperature)
    if bidirectional:
        loss = loss + kl_rows_ensemble_naive([a.T for a in teacher_logits], student_logits.T, temperature)
    return loss
