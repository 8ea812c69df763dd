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
from ..data.loader_spec import LoaderSpec
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
    def logit_scale(self):
        """The teacher's scale (a float), or a tuple with each teacher's for a cached ensemble."""
        scale = self.manifest["logit_scale"]
        return tuple(float(x) for x in scale) if isinstance(scale, list) else float(scale)

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


def get_cached_unpaired_data(spec: LoaderSpec, view_size: int, counters: Optional[SkipCounters] = None,
                             epoch: int = 0) -> CachedUnpairedLoader:
    """Build the cached unpaired loader of ``spec`` (``spec.teacher_cache`` names the cache and its sources;
    ``train_images`` / ``train_texts`` are not read; ``train_num_samples`` None: every cached image)."""
    directory = spec.teacher_cache
    if not directory:
        raise DistillUsageError(f"{FLAG} DIR is required for cached distillation (build it with "
                                f"'python -m openclip_distill.cache --out DIR ...')")
    manifest = load_manifest(directory)
    check_cache_matches(manifest, directory, view_size, spec.distill_teacher)
    if spec.aug_scale is not None and [float(x) for x in spec.aug_scale] != [float(x) for x in manifest["aug_scale"]]:
        logging.warning(f"{FLAG}: the cache's augmentations use scale={tuple(manifest['aug_scale'])}, not the "
                        f"requested {tuple(spec.aug_scale)} (stored augmentations cannot change; rebuild to change them)")
    counters = counters if counters is not None else SkipCounters()
    image_data = get_cached_image_dataset(
        directory, manifest, batch_size=int(spec.batch_size), view_size=view_size, num_samples=spec.train_num_samples,
        workers=int(spec.workers), seed=int(spec.seed), epoch=epoch, world_size=int(spec.world_size),
        rank=int(spec.rank), resampled=bool(spec.dataset_resampled), counters=counters)
    text_stream = get_cached_text_stream(
        directory, manifest, batch_size=spec.sentences_per_step, seed=int(spec.seed), world_size=int(spec.world_size),
        rank=int(spec.rank), workers=int(spec.text_workers), shuffle_buffer=int(spec.text_shuffle_buffer))
    text_stream.set_epoch(epoch)
    return CachedUnpairedLoader(image_data, text_stream, manifest, str(directory))
