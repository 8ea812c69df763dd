"""Reuse the teacher's text tower in the student (DIME-FM's official recipe trains images only).

The student config must declare the same text tower as the teacher (same keys and shapes, e.g.
``DimeFM-ViT-B-32-L14text`` for a ``ViT-L-14`` teacher); its text weights and logit scale are
copied from the teacher and frozen, so the written student is a complete CLIP that plain
OpenCLIP can use for zero-shot classification.
"""
import torch

from ..errors import DistillUsageError


def _is_image_key(key: str) -> bool:
    return key.startswith("visual.") or key in ("logit_scale", "logit_bias")


def text_tower_keys(model) -> list:
    return [k for k in model.state_dict() if not _is_image_key(k)]


@torch.no_grad()
def adopt_teacher_text_tower(student, teacher, student_name: str, teacher_name: str) -> int:
    """Copy the teacher's text tower + logit scale into the student and freeze them.
    Returns the number of copied tensors."""
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    keys = text_tower_keys(teacher)
    mismatched = [k for k in keys if k not in s_sd or s_sd[k].shape != t_sd[k].shape]
    if mismatched or set(text_tower_keys(student)) != set(keys):
        example = mismatched[0] if mismatched else sorted(set(text_tower_keys(student)) ^ set(keys))[0]
        raise DistillUsageError(
            f"--student-text-tower teacher: student {student_name!r} has a different text tower than teacher "
            f"{teacher_name!r} (first difference: {example}); pick a student config with the teacher's text_cfg "
            f"and embed_dim (e.g. DimeFM-ViT-B-32-L14text for ViT-L-14) or use --student-text-tower train")
    for k in keys:
        s_sd[k].copy_(t_sd[k].to(s_sd[k].dtype))
    for k in ("logit_scale", "logit_bias"):
        if k in s_sd and k in t_sd:
            s_sd[k].copy_(t_sd[k].reshape(s_sd[k].shape).to(s_sd[k].dtype))
    frozen = set(keys) | {"logit_scale", "logit_bias"}
    for name, p in student.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return len(keys)
