"""The demo teacher: a small CLIP (``demo-teacher`` config) trained with the plain CLIP loss on the
demo corpus's ``teacher_pairs`` split, by OpenCLIP's own trainer (``open_clip_train.main.main``).
It stands in for a web-scale pre-trained teacher such as ViT-L/14.

The package ships the result as ``openclip_distill/demo/assets/demo-teacher.pt`` (fp16
state_dict, loadable with ``torch.load(weights_only=True)`` and with
``open_clip.create_model_and_transforms('demo-teacher', pretrained=path)``). It was made with::

    python -m openclip_distill.demo.teacher --out openclip_distill/demo/assets/demo-teacher.pt

i.e. corpus seed 0 (``generate_demo_corpus(root, seed=0)``) and the defaults of
:data:`TEACHER_TRAIN_DEFAULTS`, on CPU. ``get_demo_teacher()`` returns the shipped file, or trains
the teacher once and caches it under ``~/.cache/openclip_distill/demo`` when the asset is absent.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Dict, Optional, Union

import torch

from ..atomic_files import atomic_torch_save

ASSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo-teacher.pt")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "openclip_distill", "demo")
TEACHER_MODEL = "demo-teacher"

# Hyper-parameters of the shipped teacher (OpenCLIP trainer flags).
TEACHER_TRAIN_DEFAULTS: Dict[str, Union[int, float]] = dict(
    epochs=8,
    batch_size=256,
    lr=2e-3,
    wd=0.1,
    warmup=200,
)


@contextmanager
def preserve_logging():
    """OpenCLIP's trainer adds root log handlers (stream + file) and sets *every* logger to INFO
    on each call. Detach the caller's handlers meanwhile (no line printed twice), then drop the
    trainer's and restore handlers and levels, so repeated in-process runs neither duplicate
    lines, leak open files, nor leave library loggers (e.g. torch._dynamo) chatty."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    for h in handlers:  # the trainer brings its own stream handler: avoid printing lines twice
        root.removeHandler(h)
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            try:
                h.close()
            except Exception:  # pragma: no cover
                pass
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        for n, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(n, logging.NOTSET))


def run_open_clip_train(argv, logs: str, name: str) -> str:
    """Run ``open_clip_train.main.main(argv + --logs/--name)`` in-process; return the path of the
    last epoch checkpoint. Raises RuntimeError when OpenCLIP refuses or writes no checkpoint."""
    import openclip_distill  # noqa: F401  (registers the demo model configs with OpenCLIP)
    from open_clip_train.main import main as oc_main

    if os.path.exists(os.path.join(logs, name)):
        raise RuntimeError(f"{os.path.join(logs, name)} exists; OpenCLIP refuses an existing --name")
    threads = torch.get_num_threads()
    with preserve_logging():
        rc = oc_main(list(argv) + ["--logs", logs, "--name", name])
    torch.set_num_threads(threads)
    if rc == -1:
        raise RuntimeError(f"open_clip_train refused the run (see {os.path.join(logs, name)})")
    ckpts = glob.glob(os.path.join(logs, name, "checkpoints", "epoch_*.pt"))
    if not ckpts:
        raise RuntimeError(f"open_clip_train wrote no checkpoint under {os.path.join(logs, name)}")
    return max(ckpts, key=lambda p: int(os.path.basename(p)[6:-3]))


def export_state_dict(checkpoint: str, out_path: str, fp16: bool = True) -> str:
    """Write the ``state_dict`` of an OpenCLIP training checkpoint as a plain dict of tensors
    (floating ones in fp16), readable with ``torch.load(weights_only=True)``."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = ck.get("state_dict", ck)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if fp16:
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_torch_save(sd, out_path)
    return out_path


def teacher_train_argv(corpus: Dict[str, object], *, epochs: int, batch_size: int, lr: float,
                       wd: float, warmup: int, workers: int = 1, seed: int = 0) -> list:
    """OpenCLIP trainer flags for the demo teacher (without --logs / --name)."""
    return [
        "--train-data", str(corpus["teacher_pairs"]),
        "--dataset-type", "webdataset",
        "--train-num-samples", str(corpus["teacher_pairs_count"]),
        "--model", TEACHER_MODEL,
        "--batch-size", str(batch_size),
        "--lr", str(lr), "--wd", str(wd), "--warmup", str(warmup),
        "--epochs", str(epochs),
        "--precision", "fp32",
        "--workers", str(workers),
        "--seed", str(seed),
        "--save-frequency", "1",
        "--log-every-n-steps", "50",
        "--report-to", "",
    ] + ([] if torch.cuda.is_available() else ["--device", "cpu"])


def _as_corpus(corpus, seed: int) -> Dict[str, object]:
    from .corpus import generate_demo_corpus

    if corpus is None:
        corpus = os.path.join(CACHE_DIR, f"corpus-seed{seed}")
    if isinstance(corpus, (str, os.PathLike)):
        corpus = generate_demo_corpus(str(corpus), seed=seed)
    return corpus


def train_demo_teacher(corpus=None, out_path: str = ASSET_PATH, *, seed: int = 0, workers: int = 1,
                       logs: Optional[str] = None, keep_logs: bool = False, **overrides) -> str:
    """Train the demo teacher on ``corpus['teacher_pairs']`` with OpenCLIP's trainer and export
    it to ``out_path`` (fp16 state_dict). ``corpus``: the dict of ``generate_demo_corpus`` or a
    corpus root (generated if needed); ``overrides``: any of :data:`TEACHER_TRAIN_DEFAULTS`."""
    unknown = set(overrides) - set(TEACHER_TRAIN_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown teacher hyper-parameters: {sorted(unknown)}")
    hp = dict(TEACHER_TRAIN_DEFAULTS, **overrides)
    corpus = _as_corpus(corpus, seed)
    own_logs = logs is None
    logs = logs or tempfile.mkdtemp(prefix="demo-teacher-logs-")
    name = f"demo-teacher-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    t0 = time.time()
    logging.info("demo teacher: training %s on %s pairs (%s)", TEACHER_MODEL,
                 corpus["teacher_pairs_count"], hp)
    ckpt = run_open_clip_train(teacher_train_argv(corpus, workers=workers, seed=seed, **hp), logs, name)
    export_state_dict(ckpt, out_path)
    logging.info("demo teacher: trained in %.0f s -> %s", time.time() - t0, out_path)
    if own_logs and not keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    return out_path


def get_demo_teacher(corpus=None, *, seed: int = 0, workers: int = 1, cache_dir: str = CACHE_DIR,
                     logs: Optional[str] = None) -> str:
    """Path of the demo teacher checkpoint: the shipped asset when present (seed 0), else a cached
    one, else train it now (minutes on a CPU) and cache it."""
    if seed == 0 and os.path.isfile(ASSET_PATH):
        return ASSET_PATH
    path = os.path.join(cache_dir, f"demo-teacher-seed{seed}.pt")
    if os.path.isfile(path):
        return path
    return train_demo_teacher(corpus, path, seed=seed, workers=workers, logs=logs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.demo.teacher",
                                description="Train the demo teacher with OpenCLIP's trainer.")
    p.add_argument("--out", default=ASSET_PATH, help="output fp16 state_dict path")
    p.add_argument("--data", default=None, help="demo corpus root (default: the cache dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--logs", default=None, help="keep OpenCLIP's logs/checkpoints here")
    for k, v in TEACHER_TRAIN_DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    hp = {k: getattr(a, k) for k in TEACHER_TRAIN_DEFAULTS}
    out = train_demo_teacher(a.data, a.out, seed=a.seed, workers=a.workers, logs=a.logs,
                             keep_logs=a.logs is not None, **hp)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
