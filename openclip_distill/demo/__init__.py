"""Embedded offline demo: synthetic corpus, demo teacher, and the teacher/student/baseline run.

``python -m openclip_distill.main --demo`` (or ``run_demo()``) runs it end to end on a CPU.
"""
from .corpus import generate_demo_corpus

__all__ = ["generate_demo_corpus", "run_demo", "train_demo_teacher", "get_demo_teacher"]


def __getattr__(name):  # lazy: keep ``import openclip_distill.demo`` light
    if name == "run_demo":
        from .run import run_demo
        return run_demo
    if name in ("train_demo_teacher", "get_demo_teacher"):
        from . import teacher
        return getattr(teacher, name)
    raise AttributeError(name)
