"""The teacher's text tower stored beside the cache, so a ``--student-text-tower teacher`` student
can adopt it without instantiating the teacher (OpenCLIP teachers only: others have no such tower)."""
import os
from typing import Dict

import torch

from ..errors import DistillUsageError
from ..models.text_tower import adopt_text_tower
from .manifest import FLAG, TEXT_TOWER_NAME


def load_cached_text_tower(directory: str) -> Dict[str, torch.Tensor]:
    """The teacher's text-tower state dict of a cache (``torch.load(weights_only=True)``)."""
    path = os.path.join(str(directory), TEXT_TOWER_NAME)
    if not os.path.isfile(path):
        raise DistillUsageError(f"{FLAG}: {path!r} is missing (the cache's teacher is not an OpenCLIP model, or the "
                                f"cache is unfinished); use --student-text-tower train, or finish the cache with "
                                f"'python -m openclip_distill.cache --out {directory} ...'")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:  # truncated / foreign file
        raise DistillUsageError(f"{FLAG}: cannot read {path!r} ({type(exn).__name__}); rebuild the cache") from None
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise DistillUsageError(f"{FLAG}: {path!r} is not a text-tower state dict; rebuild the cache")
    return sd


def adopt_cached_text_tower(student, directory: str, student_name: str, teacher_name: str = "") -> int:
    """:func:`openclip_distill.models.text_tower.adopt_text_tower` from the cache's ``teacher_text_tower.pt``:
    copies the text tower + logit scale into ``student`` and freezes them. Returns the number of copied tensors."""
    sd = load_cached_text_tower(directory)
    if not teacher_name:
        from .manifest import load_manifest
        teacher_name = load_manifest(directory, check_files=False).get("teacher", "the cached teacher")
    return adopt_text_tower(student, sd, student_name, teacher_name)
