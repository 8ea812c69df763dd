"""Unpaired images + sentences with precomputed teacher embeddings (``--teacher-cache DIR``).

Same interface as :class:`openclip_distill.data.unpaired.UnpairedLoader`; every batch also carries
the teacher's features, so training never runs the teacher::

    {"image": [B, 3, S, S] in [0, 1], "view": LongTensor[B, 5], "key": list[str],
     "text": list[str], "dist_image_features": [B, D] float32, "dist_text_features": [T, D] float32}

The loader's ``logit_scale`` / ``logit_bias`` are the teacher's (``dist_logit_scale`` /
``dist_logit_bias``: exp'd scale, as a live teacher's targets are).
"""
import logging
from typing import Optional

from ..data.counters import SkipCounters
from ..data.unpaired import UnpairedLoader
from ..errors import DistillUsageError
from .image_replay import get_cached_image_dataset
from .manifest import FLAG, load_manifest
from .text_replay import get_cached_text_stream


class CachedUnpairedLoader(UnpairedLoader):
    """Iterate cached image batches, each with the next cached sentence batch (images define the epoch).

    Quacks like ``UnpairedLoader`` (and OpenCLIP's ``DataInfo``/dataloader): ``len()``,
    ``num_batches``, ``num_samples``, ``set_epoch(e)``, ``dataloader``, ``shared_epoch``, ``sampler``,
    ``counters``; plus ``manifest``, ``cache_dir``, ``logit_scale``, ``logit_bias``.
    """

    def __init__(self, image_data, text_stream, manifest: dict, cache_dir: str):
        super().__init__(image_data, text_stream)
        self.manifest, self.cache_dir = manifest, cache_dir

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"])

    @property
    def logit_bias(self) -> Optional[float]:
        bias = self.manifest.get("logit_bias")
        return None if bias is None else float(bias)

    def _text_batch(self, batch) -> dict:
        return {"text": batch["text"], "dist_text_features": batch["emb"]}


def check_cache_matches(manifest: dict, directory: str, view_size: int, teacher: Optional[str] = None) -> None:
    """One-line errors when the cache cannot serve this run (view size, teacher)."""
    if int(manifest["view_size"]) != int(view_size):
        raise DistillUsageError(
            f"{FLAG}: {directory!r} stores views of {manifest['view_size']} px but this run needs {view_size} px "
            f"(the larger input size of student and teacher); rebuild the cache with --view-size {view_size}")
    if teacher and manifest.get("teacher") and teacher != manifest["teacher"]:
        raise DistillUsageError(
            f"{FLAG}: {directory!r} was built with teacher {manifest['teacher']!r}, not --distill-teacher {teacher!r}; "
            f"pass the matching --distill-teacher or another cache")


def get_cached_unpaired_data(args, view_size: int, counters: Optional[SkipCounters] = None,
                             epoch: int = 0) -> CachedUnpairedLoader:
    """Build the cached unpaired loader from an argparse namespace.

    Reads ``teacher_cache`` (DIR), ``batch_size``, ``text_batch_size`` (None -> ``batch_size``),
    ``train_num_samples`` (None -> every cached image), ``workers``, ``seed``, ``world_size``, ``rank``,
    ``dataset_resampled``; optional ``text_workers`` (0), ``text_shuffle_buffer`` (10000),
    ``distill_teacher`` (checked against the cache's teacher when set). ``--train-images`` /
    ``--train-texts`` are not read: the cache names its sources.
    """
    directory = getattr(args, "teacher_cache", None)
    if not directory:
        raise DistillUsageError(f"{FLAG} DIR is required for cached distillation (build it with "
                                f"'python -m openclip_distill.cache --out DIR ...')")
    manifest = load_manifest(directory)
    check_cache_matches(manifest, directory, view_size, getattr(args, "distill_teacher", None))
    scale = getattr(args, "aug_scale", None)
    if scale is not None and [float(x) for x in scale] != [float(x) for x in manifest["aug_scale"]]:
        logging.warning(f"{FLAG}: the cache's augmentations use scale={tuple(manifest['aug_scale'])}, not the "
                        f"requested {tuple(scale)} (stored augmentations cannot change; rebuild to change them)")
    counters = counters if counters is not None else SkipCounters()
    seed = int(getattr(args, "seed", 0) or 0)
    world_size = int(getattr(args, "world_size", 1) or 1)
    rank = int(getattr(args, "rank", 0) or 0)
    batch_size = int(args.batch_size)
    image_data = get_cached_image_dataset(
        directory, manifest, batch_size=batch_size, view_size=view_size,
        num_samples=getattr(args, "train_num_samples", None), workers=int(getattr(args, "workers", 0) or 0),
        seed=seed, epoch=epoch, world_size=world_size, rank=rank,
        resampled=bool(getattr(args, "dataset_resampled", False)), counters=counters)
    buffer = getattr(args, "text_shuffle_buffer", None)
    text_stream = get_cached_text_stream(
        directory, manifest, batch_size=int(getattr(args, "text_batch_size", None) or batch_size), seed=seed,
        world_size=world_size, rank=rank, workers=int(getattr(args, "text_workers", 0) or 0),
        shuffle_buffer=10000 if buffer is None else int(buffer))
    text_stream.set_epoch(epoch)
    return CachedUnpairedLoader(image_data, text_stream, manifest, str(directory))
