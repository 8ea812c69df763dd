"""The teacher's text tower stored beside the cache, so a ``--student-text-tower teacher`` student
can adopt it without instantiating the teacher."""
import os
from typing import Dict

import torch

from ..errors import DistillUsageError
from ..models.text_tower import adopt_teacher_text_tower, text_tower_keys
from .layout import FLAG, TEXT_TOWER_NAME

SCALE_KEYS = ("logit_scale", "logit_bias")


def text_tower_state_dict(teacher) -> Dict[str, torch.Tensor]:
    """``text_tower_keys(teacher)`` + logit_scale/logit_bias, detached CPU copies."""
    sd = teacher.state_dict()
    keys = list(text_tower_keys(teacher)) + [k for k in SCALE_KEYS if k in sd]
    return {k: sd[k].detach().to("cpu").clone().contiguous() for k in keys}


def save_text_tower(teacher, path: str) -> None:
    """Write the text tower atomically (temp name, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(text_tower_state_dict(teacher), tmp)
    os.replace(tmp, path)


def load_cached_text_tower(directory: str) -> Dict[str, torch.Tensor]:
    """The teacher's text-tower state dict of a cache (``torch.load(weights_only=True)``)."""
    path = os.path.join(str(directory), TEXT_TOWER_NAME)
    if not os.path.isfile(path):
        raise DistillUsageError(f"{FLAG}: {path!r} is missing; rebuild or finish the cache with "
                                f"'python -m openclip_distill.cache --out {directory} ...'")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:  # truncated / foreign file
        raise DistillUsageError(f"{FLAG}: cannot read {path!r} ({type(exn).__name__}); rebuild the cache") from None
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise DistillUsageError(f"{FLAG}: {path!r} is not a text-tower state dict; rebuild the cache")
    return sd


class _StateDictOnly:
    """Just enough of a model for ``adopt_teacher_text_tower``: its ``state_dict()``."""

    def __init__(self, sd):
        self._sd = sd

    def state_dict(self):
        return self._sd


def adopt_cached_text_tower(student, directory: str, student_name: str, teacher_name: str = "") -> int:
    """Like :func:`openclip_distill.models.text_tower.adopt_teacher_text_tower`, from the cache's
    ``teacher_text_tower.pt``: copies the text tower + logit scale into ``student`` and freezes them.
    Returns the number of copied text-tower tensors."""
    sd = load_cached_text_tower(directory)
    if not teacher_name:
        from .layout import load_manifest
        teacher_name = load_manifest(directory, check_files=False).get("teacher", "the cached teacher")
    return adopt_teacher_text_tower(student, _StateDictOnly(sd), student_name, teacher_name)
