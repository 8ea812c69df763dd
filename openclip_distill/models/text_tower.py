"""Reuse the teacher's text tower in the student (DIME-FM's official recipe trains images only).

The student config must declare the same text tower as the teacher (same keys and shapes, e.g.
``DimeFM-ViT-B-32-L14text`` for a ``ViT-L-14`` teacher); its text weights and logit scale are
copied from the teacher and frozen, so the written student is a complete CLIP that plain
OpenCLIP can use for zero-shot classification. Only OpenCLIP teachers have such a tower.
"""
from typing import Dict

import torch

from ..errors import DistillUsageError

SCALE_KEYS = ("logit_scale", "logit_bias")


def _is_image_key(key: str) -> bool:
    return key.startswith("visual.") or key in SCALE_KEYS


def text_tower_keys(model_or_state_dict) -> list:
    """State-dict keys of an OpenCLIP CLIP's text tower (everything but ``visual.*`` and the scales)."""
    sd = model_or_state_dict if isinstance(model_or_state_dict, dict) else model_or_state_dict.state_dict()
    return [k for k in sd if not _is_image_key(k)]


def text_tower_state_dict(model) -> Dict[str, torch.Tensor]:
    """The text tower + logit scale/bias of an OpenCLIP CLIP, as detached CPU copies."""
    sd = model.state_dict()
    keys = text_tower_keys(sd) + [k for k in SCALE_KEYS if k in sd]
    return {k: sd[k].detach().to("cpu").clone().contiguous() for k in keys}


@torch.no_grad()
def adopt_text_tower(student, tower: Dict[str, torch.Tensor], student_name: str, teacher_name: str) -> int:
    """Copy ``tower`` (:func:`text_tower_state_dict` of the teacher) into ``student`` and freeze it.
    Returns the number of copied text-tower tensors."""
    s_sd = student.state_dict()
    keys = text_tower_keys(tower)
    mismatched = [k for k in keys if k not in s_sd or s_sd[k].shape != tower[k].shape]
    if mismatched or set(text_tower_keys(s_sd)) != set(keys):
        example = mismatched[0] if mismatched else sorted(set(text_tower_keys(s_sd)) ^ set(keys))[0]
        raise DistillUsageError(
            f"--student-text-tower teacher: student {student_name!r} has a different text tower than teacher "
            f"{teacher_name!r} (first difference: {example}); pick a student config with the teacher's text_cfg "
            f"and embed_dim (e.g. DimeFM-ViT-B-32-L14text for ViT-L-14) or use --student-text-tower train")
    for k in keys:
        s_sd[k].copy_(tower[k].to(s_sd[k].dtype))
    for k in SCALE_KEYS:
        if k in s_sd and k in tower:
            s_sd[k].copy_(tower[k].reshape(s_sd[k].shape).to(s_sd[k].dtype))
    frozen = set(keys) | set(SCALE_KEYS)
    for name, p in student.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return len(keys)
