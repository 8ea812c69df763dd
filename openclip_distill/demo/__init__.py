"""Embedded offline demos: synthetic corpora, demo teachers, and the teacher/student/baseline runs.

``python -m openclip_distill.main --demo [dime-fm|dc-clip|dlip]`` (or ``run_named_demo(demo)``) runs one
end to end on a CPU: ``dime-fm`` (:mod:`.run`, the default), ``dc-clip`` (:mod:`.run_dc_clip`) and ``dlip``
(:mod:`.dlip_demo`).
"""
from .corpus import generate_demo_corpus

__all__ = ["generate_demo_corpus", "run_demo", "run_dc_clip_demo", "run_dlip_demo", "run_named_demo", "DEMOS",
           "train_demo_teacher", "get_demo_teacher"]

DEMOS = ("dime-fm", "dc-clip", "dlip")


def run_named_demo(demo: str, **kwargs):
    """Run the demo called ``demo`` (one of :data:`DEMOS`) with ``kwargs`` (logs, name, workers, seed,
    ...); an unknown name is a one-line usage error."""
    from ..errors import DistillUsageError

    if demo == "dime-fm":
        from .run import run_demo
        return run_demo(**kwargs)
    if demo == "dc-clip":
        from .run_dc_clip import run_dc_clip_demo
        return run_dc_clip_demo(**kwargs)
    if demo == "dlip":
        from .dlip_demo import run_dlip_demo
        return run_dlip_demo(**kwargs)
    raise DistillUsageError(f"--demo: unknown demo {demo!r}; choose one of {', '.join(DEMOS)}")


def __getattr__(name):  # lazy: keep ``import openclip_distill.demo`` light
    if name == "run_demo":
        from .run import run_demo
        return run_demo
    if name == "run_dc_clip_demo":
        from .run_dc_clip import run_dc_clip_demo
        return run_dc_clip_demo
    if name == "run_dlip_demo":
        from .dlip_demo import run_dlip_demo
        return run_dlip_demo
    if name in ("train_demo_teacher", "get_demo_teacher"):
        from . import teacher
        return getattr(teacher, name)
    raise AttributeError(name)
