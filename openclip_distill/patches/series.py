"""The patch series shipped in ``patches/``: which patches, in which order, made against what."""
import os
import re
from pathlib import Path
from typing import List

from ..errors import DistillUsageError

# ``patches/<series>/``: ``main`` is a ``git format-patch`` series against OpenCLIP's main branch,
# ``v3.3`` the patch for the released open_clip_torch 3.3.x this package installs.
SERIES = ("main", "v3.3")

# Commit of mlfoundations/open_clip the main series was made against (also in patches/README.md).
MAIN_BASE_COMMIT = "89fb801f1e6087880e951fc8354b8a2077b79c6d"

_NEW_TEST_FILE = re.compile(r"^\+\+\+ b/(tests/test_[^\s/]+\.py)$", re.MULTILINE)


def patches_root() -> Path:
    """``patches/`` of the source checkout this package runs from (``$OPENCLIP_DISTILL_PATCHES`` overrides)."""
    root = Path(os.environ.get("OPENCLIP_DISTILL_PATCHES") or Path(__file__).resolve().parents[2] / "patches")
    if not root.is_dir():
        raise DistillUsageError(
            f"patches folder {root} not found: run from a source checkout of openclip_distill "
            f"or set OPENCLIP_DISTILL_PATCHES to its patches/ folder")
    return root


def series_patches(series: str) -> List[Path]:
    """The series' ``*.patch`` files in application order (their numbered names)."""
    if series not in SERIES:
        raise DistillUsageError(f"--series {series!r}: choose one of {', '.join(SERIES)}")
    folder = patches_root() / series
    patches = sorted(folder.glob("*.patch"))
    if not patches:
        raise DistillUsageError(f"--series {series}: no *.patch files in {folder}")
    return patches


def series_test_files(patches: List[Path]) -> List[str]:
    """``tests/test_*.py`` files the patches add or change, in first-seen order."""
    seen = []
    for patch in patches:
        for path in _NEW_TEST_FILE.findall(patch.read_text()):
            if path not in seen:
                seen.append(path)
    return seen
