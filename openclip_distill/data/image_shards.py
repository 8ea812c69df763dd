"""Image-only (and paired image+caption) webdataset shards producing replayable augmented views.

Pipeline (training), per rank and DataLoader worker::

    shards (::-joined brace/glob patterns)
      -> detshuffle2 by (seed, epoch), split by rank, split by worker   [or ResampledShards2]
      -> tar samples (unreadable shards skipped + counted "bad_shard")
      -> seeded sample shuffle buffer (seed, epoch, rank, worker)
      -> decode the first jpg/jpeg/png/webp member (undecodable -> skipped + "corrupt_image")
      -> view = sample_view_params(..., Generator(view_seed(seed, epoch, key)))   [centre view if not train]
      -> {"image": FloatTensor[3, S, S] in [0, 1], "view": LongTensor[5], "key": str[, "text": str]}
      -> batches of dicts (full batches only in training)
      -> with_epoch(num_batches per worker), as OpenCLIP's get_wds_dataset

The batch order is a deterministic function of (seed, epoch, world size, rank, worker count); the
view of a given sample depends only on (seed, epoch, key), so it is the same for any worker count.
"""
import functools
import io
import math
import random
from itertools import islice
from typing import Optional, Sequence

import torch
import webdataset as wds
from PIL import Image
from open_clip_train.data import (
    DataInfo,
    ResampledShards2,
    SharedEpoch,
    _SAMPLE_SHUFFLE_INITIAL,
    _SAMPLE_SHUFFLE_SIZE,
    _SHARD_SHUFFLE_INITIAL,
    _SHARD_SHUFFLE_SIZE,
    detshuffle2,
    tarfile_to_samples_nothrow,
)

from ..errors import DistillUsageError
from .counters import SkipCounters
from .seeding import derive_seed, worker_id_and_count
from .shard_paths import dataset_size, expand_patterns
from .shuffle_buffer import buffer_shuffle
from .views import apply_view, center_view_params, sample_view_params, view_seed
from .worker_errors import unwrap_worker_errors

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_SHARD_EXAMPLE = "imgs/{00000..00099}.tar"


class _SplitByRank(wds.PipelineStage):
    """Every ``world_size``-th shard starting at ``rank`` (explicit rank, no torch.distributed needed)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def run(self, src):
        return islice(src, self.rank, None, self.world_size)


class _SplitByWorker(wds.PipelineStage):
    def run(self, src):
        worker, num_workers = worker_id_and_count()
        return islice(src, worker, None, num_workers)


class _WorkerShardSeed:
    """Seed for ResampledShards2: distinct per (seed, rank, worker), reproducible (epoch is added by it)."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self) -> int:
        worker, num_workers = worker_id_and_count()
        return derive_seed("image-shards", self.seed, self.rank, worker, num_workers) >> 2


class _SampleShuffle(wds.PipelineStage):
    """Shuffle buffer seeded by (seed, epoch, rank, worker): reproducible, unlike ``wds.shuffle``."""

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: SharedEpoch, rank: int):
        self.bufsize, self.initial, self.seed, self.epoch, self.rank = bufsize, initial, seed, epoch, rank

    def run(self, src):
        worker, num_workers = worker_id_and_count()
        rng = random.Random(derive_seed("image-samples", self.seed, self.epoch.get_value(),
                                        self.rank, worker, num_workers))
        return buffer_shuffle(src, self.bufsize, rng, initial=self.initial)


class _CountShardErrors:
    """webdataset exception handler: count the unreadable shard / tar member and go on."""

    def __init__(self, counters: SkipCounters):
        self.counters = counters

    def __call__(self, exn) -> bool:
        self.counters.add("bad_shard", detail=repr(exn)[:300])
        return True


class _DecodeViews(wds.PipelineStage):
    """Raw webdataset samples -> decoded views (bad samples are skipped and counted)."""

    def __init__(self, *, view_size, seed, epoch: SharedEpoch, train, scale, ratio, hflip_prob,
                 counters: SkipCounters, text_key: Optional[str]):
        self.view_size, self.seed, self.epoch, self.train = view_size, seed, epoch, train
        self.scale, self.ratio, self.hflip_prob = tuple(scale), tuple(ratio), hflip_prob
        self.counters, self.text_key = counters, text_key

    def _text(self, sample, key):
        raw = sample.get(self.text_key)
        if raw is None:
            self.counters.add("missing_text", detail=key)
            return None
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.counters.add("bad_text_record", detail=f"{key}: caption is not UTF-8")
                return None
        text = str(raw).strip()
        if not text:
            self.counters.add("empty_text", detail=key)
            return None
        return text

    def run(self, src):
        epoch = self.epoch.get_value()
        for sample in src:
            key = str(sample.get("__key__", ""))
            out = {}
            if self.text_key is not None:
                text = self._text(sample, key)
                if text is None:
                    continue
                out["text"] = text
            data = next((sample[k] for k in IMAGE_KEYS if sample.get(k) is not None), None)
            if data is None:
                self.counters.add("missing_image", detail=key)
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    width, height = img.size
                    if self.train:
                        gen = torch.Generator()
                        gen.manual_seed(view_seed(self.seed, epoch, key))
                        params = sample_view_params(width, height, gen, self.scale, self.ratio, self.hflip_prob)
                    else:
                        params = center_view_params(width, height)
                    view = apply_view(img, params, self.view_size)
            except Exception as exn:  # any decoder failure: truncated file, bad header, bomb, ...
                self.counters.add("corrupt_image", detail=f"{key}: {exn!r}"[:300])
                continue
            out.update(image=view, view=params, key=key)
            yield out


def collate_views(samples):
    """List of sample dicts -> batch dict (tensors stacked, keys/texts as lists)."""
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "view": torch.stack([s["view"] for s in samples]),
        "key": [s["key"] for s in samples],
    }
    if "text" in samples[0]:
        batch["text"] = [s["text"] for s in samples]
    return batch


class _EpochPipeline(wds.DataPipeline):
    """DataPipeline whose ``with_epoch`` repetition fails loudly instead of spinning forever when a
    pass over this worker's shards yields no batch at all (all samples bad, or fewer than a batch)."""

    flag = "--train-images"
    batch_size = 0

    def iterator(self):
        for _ in range(self.repetitions):
            count = 0
            for item in self.iterator1():
                count += 1
                yield item
            if count == 0:
                if self.repetitions > 1:
                    worker, num_workers = worker_id_and_count()
                    raise DistillUsageError(
                        f"{self.flag}: DataLoader worker {worker}/{num_workers} got no complete batch of "
                        f"{self.batch_size} decodable images from its shards (see the skip counters); "
                        f"check the shards, or use fewer --workers, a smaller --batch-size or more shards")
                return


class _WebLoader(wds.WebLoader):
    """WebLoader whose worker-raised DistillUsageError keeps a one-line message."""

    def __iter__(self):
        return unwrap_worker_errors(super().__iter__())


def _check_args(batch_size, view_size, workers, world_size, rank, flag):
    if int(batch_size) <= 0:
        raise DistillUsageError(f"--batch-size must be positive, got {batch_size}")
    if int(view_size) <= 0:
        raise DistillUsageError(f"{flag}: view size must be positive, got {view_size}")
    if int(workers) < 0:
        raise DistillUsageError(f"--workers must be >= 0, got {workers}")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DistillUsageError(f"{flag}: invalid rank {rank} for world size {world_size}")


def _build(shards, *, batch_size, view_size, num_samples, workers, seed, epoch, world_size, rank, resampled,
           scale, ratio, hflip_prob, counters, train, text_key, flag) -> DataInfo:
    _check_args(batch_size, view_size, workers, world_size, rank, flag)
    batch_size, view_size, workers = int(batch_size), int(view_size), int(workers)
    world_size, rank, seed = int(world_size), int(rank), int(seed)
    urls = expand_patterns(shards, flag, exts=(".tar",), example=_SHARD_EXAMPLE)
    counters = counters if counters is not None else SkipCounters()

    if num_samples is not None and int(num_samples) <= 0:
        raise DistillUsageError(f"--train-num-samples must be positive, got {num_samples}")
    if num_samples is None:
        num_samples = dataset_size(urls)
        if num_samples is None and train:
            raise DistillUsageError(
                f"{flag}: cannot tell how many samples {len(urls)} shard(s) hold (no sizes.json or __len__ "
                f"beside them); pass --train-num-samples N")
    num_samples = int(num_samples or 0)

    shared_epoch = SharedEpoch(epoch=int(epoch))
    handler = _CountShardErrors(counters)
    decode = _DecodeViews(view_size=view_size, seed=seed, epoch=shared_epoch, train=train, scale=scale,
                          ratio=ratio, hflip_prob=hflip_prob, counters=counters, text_key=text_key)
    to_samples = functools.partial(tarfile_to_samples_nothrow, handler=handler)

    if train:
        stages = train_shard_stages(urls, resampled=resampled, seed=seed, rank=rank, world_size=world_size,
                                    workers=workers, shared_epoch=shared_epoch, flag=flag)
        stages += [
            to_samples,
            _SampleShuffle(_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL, seed, shared_epoch, rank),
            decode,
            wds.batched(batch_size, collation_fn=collate_views, partial=False),
        ]
    else:
        stages = [wds.SimpleShardList(urls), _SplitByRank(rank, world_size), _SplitByWorker(), to_samples, decode,
                  wds.batched(batch_size, collation_fn=collate_views, partial=True)]

    dataset = _EpochPipeline(*stages)
    dataset.flag, dataset.batch_size = flag, batch_size

    if train:
        return epoch_loader(dataset, batch_size=batch_size, num_samples=num_samples, workers=workers,
                            world_size=world_size, counters=counters, urls=urls, shared_epoch=shared_epoch)
    # evaluation: one pass, last batch partial; with several ranks each sees ~1/world_size
    num_batches = math.ceil(num_samples / (batch_size * world_size)) if num_samples else 0
    return _data_info(dataset, workers=workers, num_batches=num_batches, num_samples=num_samples,
                      counters=counters, urls=urls, shared_epoch=shared_epoch)


def train_shard_stages(urls: Sequence[str], *, resampled: bool, seed: int, rank: int, world_size: int, workers: int,
                       shared_epoch: SharedEpoch, flag: str, shards_desc: Optional[str] = None,
                       fix: str = "use more shards, fewer --workers, or --dataset-resampled") -> list:
    """Head of a training pipeline over ``urls``: resampled shards, or a (seed, epoch) shuffle of the
    shard list split by rank then by DataLoader worker (each worker needs at least one shard)."""
    if resampled:
        return [ResampledShards2(list(urls), deterministic=True, worker_seed=_WorkerShardSeed(seed, rank),
                                 epoch=shared_epoch)]
    if len(urls) < max(1, workers) * world_size:
        desc = shards_desc or f"{len(urls)} shard(s)"
        raise DistillUsageError(
            f"{flag}: {desc} for {max(1, workers)} worker(s) x {world_size} rank(s); every DataLoader worker "
            f"needs at least one shard: {fix}")
    return [
        wds.SimpleShardList(list(urls)),
        detshuffle2(bufsize=_SHARD_SHUFFLE_SIZE, initial=_SHARD_SHUFFLE_INITIAL, seed=seed, epoch=shared_epoch),
        _SplitByRank(rank, world_size),
        _SplitByWorker(),
    ]


def epoch_loader(dataset: wds.DataPipeline, *, batch_size: int, num_samples: int, workers: int, world_size: int,
                 counters: SkipCounters, urls: Sequence[str], shared_epoch: SharedEpoch) -> DataInfo:
    """Training ``DataInfo`` over ``dataset``: as OpenCLIP (ceil), every worker yields the same number
    of full batches; an exhausted worker starts its shards over, so a few samples may repeat."""
    global_batch_size = batch_size * world_size
    num_workers = max(1, workers)
    num_worker_batches = math.ceil(math.ceil(num_samples / global_batch_size) / num_workers)
    num_batches = num_worker_batches * num_workers
    return _data_info(dataset.with_epoch(num_worker_batches), workers=workers, num_batches=num_batches,
                      num_samples=num_batches * global_batch_size, counters=counters, urls=urls,
                      shared_epoch=shared_epoch)


def _data_info(dataset, *, workers, num_batches, num_samples, counters, urls, shared_epoch) -> DataInfo:
    dataloader = _WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                            persistent_workers=workers > 0)
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_samples
    dataloader.counters = counters
    dataloader.shards = list(urls)
    return DataInfo(dataloader=dataloader, shared_epoch=shared_epoch)


def get_image_dataset(
        shards: str,
        *,
        batch_size: int,
        view_size: int,
        num_samples: Optional[int] = None,
        workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
        world_size: int = 1,
        rank: int = 0,
        resampled: bool = False,
        scale: Sequence[float] = (0.9, 1.0),
        hflip_prob: float = 0.0,
        counters: Optional[SkipCounters] = None,
        train: bool = True,
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flag: str = "--train-images",
) -> DataInfo:
    """Image-only webdataset loader (other members of a sample are ignored).

    Batches: ``{"image": FloatTensor[B, 3, view_size, view_size] in [0, 1], "view": LongTensor[B, 5],
    "key": list[str]}``. Returns OpenCLIP's ``DataInfo`` (``dataloader.num_batches``,
    ``dataloader.num_samples``, ``dataloader.counters``, ``set_epoch``). Call ``set_epoch(e)`` before
    iterating epoch ``e``. ``train=False``: centre views, no shuffling, partial last batch.
    """
    return _build(shards, batch_size=batch_size, view_size=view_size, num_samples=num_samples, workers=workers,
                  seed=seed, epoch=epoch, world_size=world_size, rank=rank, resampled=resampled, scale=scale,
                  ratio=ratio, hflip_prob=hflip_prob, counters=counters, train=train, text_key=None, flag=flag)


def get_paired_dataset(
        shards: str,
        *,
        batch_size: int,
        view_size: int,
        num_samples: Optional[int] = None,
        workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
        world_size: int = 1,
        rank: int = 0,
        resampled: bool = False,
        scale: Sequence[float] = (0.9, 1.0),
        hflip_prob: float = 0.0,
        counters: Optional[SkipCounters] = None,
        train: bool = True,
        text_key: str = "txt",
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flag: str = "--train-data",
) -> DataInfo:
    """Paired image+caption webdataset loader; like :func:`get_image_dataset` plus ``"text"``.

    ``"text"`` is the raw caption string (member ``text_key``, UTF-8, stripped) so students and
    teachers with different tokenizers can each tokenize it. Samples whose caption is missing
    (``missing_text``), empty (``empty_text``) or not UTF-8 (``bad_text_record``) are skipped.
    """
    if not text_key or not str(text_key).strip():
        raise DistillUsageError(f"{flag}: the caption key must be non-empty (e.g. 'txt')")
    return _build(shards, batch_size=batch_size, view_size=view_size, num_samples=num_samples, workers=workers,
                  seed=seed, epoch=epoch, world_size=world_size, rank=rank, resampled=resampled, scale=scale,
                  ratio=ratio, hflip_prob=hflip_prob, counters=counters, train=train,
                  text_key=str(text_key).strip().lower(), flag=flag)
