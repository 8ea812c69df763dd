"""Whether the Triton implementation can run here (Triton is an optional dependency).

``impl="triton"`` needs an importable ``triton`` and either CUDA tensors or ``TRITON_INTERPRET=1`` set
before Triton is first imported (the interpreter runs the same kernels on CPU tensors, slowly). Note that
``import torch``/``open_clip`` may already import Triton, so set the variable in the environment the
process starts with, not from Python later.

``impl='auto'`` falls back to ``chunked`` (one ``RuntimeWarning`` per process and reason) when the
interpreter variable leaked into a job with CUDA tensors, or when compiling/launching a kernel fails.
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
    if tensor.is_cuda and triton_interpreter_enabled():
        raise RuntimeError("impl='triton' got CUDA tensors while TRITON_INTERPRET=1 is set (the CPU interpreter "
                           "would run on the GPU's data); unset TRITON_INTERPRET, or use impl='auto'/'chunked'")
    if not tensor.is_cuda and not triton_interpreter_enabled():
        raise RuntimeError(f"impl='triton' needs CUDA tensors, got tensors on {tensor.device}; use impl='chunked' "
                           "on CPU, or set TRITON_INTERPRET=1 before importing triton to run the kernels in "
                           "Triton's (slow) CPU interpreter")


def launch_device(device):
    """Context for launching kernels on ``device``: ``torch.cuda.device(device)`` for CUDA, else a no-op.

    Triton launches on the *current* CUDA device; tensors on another GPU would be read from the wrong one."""
    import contextlib

    import torch
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def auto_can_use_triton(tensor) -> bool:
    """Whether ``impl='auto'`` may pick Triton for ``tensor``: CUDA, Triton importable, no leaked interpreter.

    ``TRITON_INTERPRET=1`` in a GPU job would run the CPU interpreter on CUDA tensors (orders of magnitude
    slower, silently): ``auto`` then uses ``chunked`` and warns once."""
    if not tensor.is_cuda or not triton_importable():
        return False
    if triton_interpreter_enabled():
        warn_once("interpreter", "impl='auto': TRITON_INTERPRET=1 is set in a process with CUDA tensors; using "
                                 "impl='chunked' instead of running the Triton CPU interpreter on the GPU's data "
                                 "(unset TRITON_INTERPRET to use the compiled kernels)")
        return False
    return True


_WARNED = set()
_TRITON_FAILED = []


def warn_once(reason: str, message: str) -> None:
    """One ``RuntimeWarning`` per process and reason."""
    import warnings
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def triton_failed_before() -> bool:
    """True once a Triton launch under ``impl='auto'`` failed in this process (``auto`` then stays on chunked)."""
    return bool(_TRITON_FAILED)


def is_kernel_failure(err: BaseException) -> bool:
    """Whether ``auto`` should fall back on ``err``: compile/launch failures yes; usage errors (``ValueError``,
    ``TypeError``) and out-of-memory no (those are the caller's to see, and chunked would not fix them)."""
    import torch
    return not isinstance(err, (ValueError, TypeError, torch.cuda.OutOfMemoryError, MemoryError))


def record_triton_failure(err: BaseException) -> None:
    """Remember a failed ``auto`` Triton launch and warn once (the caller falls back to ``chunked``)."""
    _TRITON_FAILED.append(repr(err))
    warn_once("launch", f"impl='auto': the Triton kernels failed ({type(err).__name__}: {str(err)[:300]}); "
                        "using impl='chunked' for the rest of this process")
