"""Files that are never half written: write to a temporary name in the same folder, flush and fsync,
then rename over the target (``os.replace`` is atomic on POSIX). On an error the temporary file is
removed and the target is left as it was. Every writer of checkpoints, caches and manifests uses this.
"""
import json
import os
from contextlib import contextmanager

import torch

TMP_MARK = ".tmp"


def temp_path_for(path: str) -> str:
    """The temporary name ``path`` is written under (recognisable: ``<path>.tmp<pid>``)."""
    return f"{path}{TMP_MARK}{os.getpid()}"


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``."""
    tmp = temp_path_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_open(path: str, mode: str = "wb", **kw):
    """``open(path, mode)`` that only replaces ``path`` once the ``with`` block succeeded."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f


def atomic_torch_save(obj, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def write_json_atomic(path: str, obj) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
