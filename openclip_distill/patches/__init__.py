"""Check the upstream patch series (``patches/``) against an OpenCLIP source tree.

    python -m openclip_distill.patches check                      # release series on the installed open_clip
    python -m openclip_distill.patches check --source ~/open_clip # main series on a checkout (a copy is patched)

Steps: copy the sources to a temporary folder, apply the series in order (``git am`` in a git checkout,
``git apply`` otherwise), run with that tree first on ``PYTHONPATH`` the series' own tests, OpenCLIP's
loss and task tests, and a comparison of the patched losses' values and gradients with this package's.
"""
from .check import run_check
from .series import SERIES, series_patches

__all__ = ["run_check", "SERIES", "series_patches"]
