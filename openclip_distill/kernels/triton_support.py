"""Whether the Triton implementation can run here (Triton is an optional dependency).

``impl="triton"`` needs an importable ``triton`` and either CUDA tensors or ``TRITON_INTERPRET=1`` set
before Triton is first imported (the interpreter runs the same kernels on CPU tensors, slowly). Note that
``import torch``/``open_clip`` may already import Triton, so set the variable in the environment the
process starts with, not from Python later.
"""
import functools
import os


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import time
        return False
    return True


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_triton_usable(tensor) -> None:
    """Raise a ``RuntimeError`` saying why ``impl='triton'`` cannot run on ``tensor``."""
    if not triton_importable():
        raise RuntimeError("impl='triton' needs the 'triton' package, which is not importable here; "
                           "use impl='chunked' (any device) or impl='auto'")
    if not tensor.is_cuda and not triton_interpreter_enabled():
        raise RuntimeError(f"impl='triton' needs CUDA tensors, got tensors on {tensor.device}; use impl='chunked' "
                           "on CPU, or set TRITON_INTERPRET=1 before importing triton to run the kernels in "
                           "Triton's (slow) CPU interpreter")
