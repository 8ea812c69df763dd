"""Training images with cached teacher embeddings: one of the K stored augmentations per image and
epoch, replayed on the original image read from its source shard.

Pipeline (per rank and DataLoader worker), the live loader's (:mod:`openclip_distill.data.image_shards`)
with a join in the middle::

    source shards of the cache (non-empty ones)
      -> detshuffle2 by (seed, epoch), split by rank, split by worker   [or ResampledShards2]
      -> per shard: read its cache shard (views + embeddings by key), stream the source tar, join by key
         (source samples absent from the cache -- undecodable when it was built -- are skipped and
         counted as corrupt_image; a repeated key keeps its first occurrence, as the builder did)
      -> seeded sample shuffle buffer (seed, epoch, rank, worker)
      -> k = chosen_augmentation(seed, epoch, uid, K); image = apply_view(original, views[k], view_size)
      -> {"image", "view", "key" (uid: <cache shard stem>/<__key__>), "dist_image_features" (float32)}
      -> full batches, with_epoch(num_batches per worker)
"""
import io
import json
import os
import re
import tarfile
from typing import Dict, List, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from open_clip_train.data import (
    DataInfo,
    SharedEpoch,
    _SAMPLE_SHUFFLE_INITIAL,
    _SAMPLE_SHUFFLE_SIZE,
    tarfile_to_samples_nothrow,
)

from ..data.counters import SkipCounters
from ..data.image_shards import (IMAGE_KEYS, _check_args, _CountShardErrors, _EpochPipeline, _SampleShuffle,
                                 epoch_loader, train_shard_stages)
from ..data.shard_paths import is_remote
from ..data.views import apply_view
from ..errors import DistillUsageError
from .manifest import FLAG, chosen_augmentation, sample_uid

_TAR_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def read_cache_shard(path: str) -> Dict[str, dict]:
    """``{__key__: {"views": int64 [K, 5], "emb": [K, D] (stored dtype), "width", "height", "url"}}``
    of one cache shard, in file order."""
    records: Dict[str, dict] = {}
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if not member.isfile():
                continue
            m = _TAR_KEY.match(member.name)
            if not m:
                continue
            key, ext = m.group(1), m.group(2)
            data = tf.extractfile(member).read()
            rec = records.setdefault(key, {})
            if ext in ("views.npy", "emb.npy"):
                rec[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
            elif ext == "src.json":
                src = json.loads(data.decode("utf-8"))
                rec.update(width=int(src["width"]), height=int(src["height"]), url=src.get("url"))
    for key, rec in records.items():
        if "views" not in rec or "emb" not in rec or "width" not in rec:
            raise DistillUsageError(f"{FLAG}: cache shard {path!r} has an incomplete record {key!r}; rebuild the cache")
        rec["views"] = rec["views"].astype(np.int64)
    return records


class _JoinCache(wds.PipelineStage):
    """Shard urls -> source samples joined with their cache records."""

    def __init__(self, cache_paths: Dict[str, str], stems: Dict[str, str], counters: SkipCounters, handler):
        self.cache_paths, self.stems, self.counters, self.handler = cache_paths, stems, counters, handler

    def run(self, src):
        for item in src:
            url = item["url"]
            records = read_cache_shard(self.cache_paths[url])
            seen = set()
            for sample in tarfile_to_samples_nothrow([{"url": url}], handler=self.handler):
                key = str(sample.get("__key__", ""))
                if key in seen:
                    continue  # the builder kept the first occurrence (counted there as duplicate_key)
                seen.add(key)
                rec = records.get(key)
                if rec is None:
                    self.counters.add("corrupt_image", detail=f"{key}: not in the teacher cache "
                                                              f"(undecodable when the cache was built)")
                    continue
                data = next((sample[e] for e in IMAGE_KEYS if sample.get(e) is not None), None)
                if data is None:
                    self.counters.add("missing_image", detail=key)
                    continue
                yield {"key": key, "uid": sample_uid(self.stems[url], key), "data": data, **rec}


class _ReplayViews(wds.PipelineStage):
    def __init__(self, *, view_size, seed, epoch: SharedEpoch, counters):
        self.view_size, self.seed, self.epoch, self.counters = view_size, seed, epoch, counters

    def run(self, src):
        epoch = self.epoch.get_value()
        for s in src:
            k = chosen_augmentation(self.seed, epoch, s["uid"], len(s["views"]))
            params = torch.from_numpy(s["views"][k].copy())
            try:
                with Image.open(io.BytesIO(s["data"])) as img:
                    img.load()
                    if tuple(img.size) != (s["width"], s["height"]):
                        raise DistillUsageError(
                            f"{FLAG}: image {s['key']!r} of {s['url']} is {img.size[0]}x{img.size[1]} but the cache "
                            f"recorded {s['width']}x{s['height']}: the source shards changed after the cache was "
                            f"built; rebuild it")
                    view = apply_view(img, params, self.view_size)
            except DistillUsageError:
                raise
            except Exception as exn:
                self.counters.add("corrupt_image", detail=f"{s['key']}: {exn!r}"[:300])
                continue
            yield {"image": view, "view": params, "key": s["uid"],
                   "dist_image_features": torch.from_numpy(np.asarray(s["emb"][k], dtype=np.float32))}


def collate_cached(samples):
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "view": torch.stack([s["view"] for s in samples]),
        "key": [s["key"] for s in samples],
        "dist_image_features": torch.stack([s["dist_image_features"] for s in samples]),
    }


def get_cached_image_dataset(directory: str, manifest: dict, *, batch_size: int, view_size: int,
                             num_samples: Optional[int] = None, workers: int = 0, seed: int = 0, epoch: int = 0,
                             world_size: int = 1, rank: int = 0, resampled: bool = False,
                             counters: Optional[SkipCounters] = None) -> DataInfo:
    """Batches ``{"image": [B, 3, S, S] in [0, 1], "view": LongTensor[B, 5], "key": list[str],
    "dist_image_features": [B, D] float32}``; OpenCLIP ``DataInfo`` like ``get_image_dataset``."""
    _check_args(batch_size, view_size, workers, world_size, rank, FLAG)
    batch_size, workers, world_size, rank, seed = int(batch_size), int(workers), int(world_size), int(rank), int(seed)
    shards = [s for s in manifest["image_shards"] if int(s["num_samples"]) > 0]
    missing = [s["source"] for s in shards if not is_remote(s["source"]) and not os.path.isfile(s["source"])]
    if missing:
        raise DistillUsageError(f"{FLAG}: {len(missing)} source image shard(s) of the cache are gone, e.g. "
                                f"{missing[0]!r}; the cache replays views on the original images, so keep the shards "
                                f"where they were when it was built (or rebuild the cache)")
    urls: List[str] = [s["source"] for s in shards]
    cache_paths = {s["source"]: os.path.join(directory, s["cache"]) for s in shards}
    stems = {s["source"]: os.path.splitext(os.path.basename(s["cache"]))[0] for s in shards}
    counters = counters if counters is not None else SkipCounters()
    if num_samples is not None and int(num_samples) <= 0:
        raise DistillUsageError(f"--train-num-samples must be positive, got {num_samples}")
    num_samples = int(num_samples) if num_samples is not None else sum(int(s["num_samples"]) for s in shards)

    shared_epoch = SharedEpoch(epoch=int(epoch))
    head = train_shard_stages(urls, resampled=resampled, seed=seed, rank=rank, world_size=world_size,
                              workers=workers, shared_epoch=shared_epoch, flag=FLAG,
                              shards_desc=f"the cache holds {len(urls)} image shard(s)",
                              fix="use fewer --workers or --dataset-resampled")
    stages = head + [
        _JoinCache(cache_paths, stems, counters, _CountShardErrors(counters)),
        _SampleShuffle(_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL, seed, shared_epoch, rank),
        _ReplayViews(view_size=int(view_size), seed=seed, epoch=shared_epoch, counters=counters),
        wds.batched(batch_size, collation_fn=collate_cached, partial=False),
    ]
    dataset = _EpochPipeline(*stages)
    dataset.flag, dataset.batch_size = FLAG, batch_size

    return epoch_loader(dataset, batch_size=batch_size, num_samples=num_samples, workers=workers,
                        world_size=world_size, counters=counters, urls=urls, shared_epoch=shared_epoch)
