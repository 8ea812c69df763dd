"""Register the student configs in ``openclip_distill/model_configs`` with OpenCLIP.

Called on ``import openclip_distill`` so that ``open_clip.list_models()`` shows them and every
torchrun rank (each of which imports the package) can build and load them.
"""
from pathlib import Path
from typing import List

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


def list_student_models() -> List[str]:
    """Names of the model configs this package ships."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def register_model_configs() -> None:
    """Add our config folder to OpenCLIP's registry (idempotent)."""
    names = list_student_models()
    if names and all(n in open_clip.list_models() for n in names):
        return
    open_clip.add_model_config(MODEL_CONFIG_DIR)
