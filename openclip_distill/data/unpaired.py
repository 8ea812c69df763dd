"""Unpaired images + sentences for DIME-FM-style distillation.

Images and sentences in a step are unrelated batches from two independent streams. The images
define the epoch (``num_batches`` image batches); the sentence stream is endless (resampled), so
nothing is truncated the way ``zip(image_loader, text_loader)`` would truncate to the shorter one.

A loss that uses one modality only trains from that stream alone: images alone (the image shards
define the epoch), or sentences alone (the epoch is ``--train-num-samples`` sentences per rank
group, i.e. ``num_samples // (batch_size * world_size)`` batches per rank).
"""
from typing import Iterator, Optional

from open_clip_train.data import DataInfo

from ..errors import DistillUsageError
from .counters import SkipCounters
from .image_shards import get_image_dataset
from .text_corpus import get_text_stream


class UnpairedLoader:
    """Iterate ``{"image", "view", "key", "text"}`` batches: one image batch + the next text batch.

    Quacks like both OpenCLIP's ``DataInfo`` (``.dataloader``, ``.set_epoch``, ``.shared_epoch``,
    ``.sampler``) and its dataloader (``len()``, ``.num_batches``, ``.num_samples``), so
    ``data["train"] = UnpairedLoader(...)`` fits OpenCLIP-style loops. Call ``set_epoch(e)`` before
    each epoch: it sets the image shuffle/augmentation epoch and re-seeds the text stream, so a run
    resumed at epoch ``e`` sees the same images and sentences as an uninterrupted one.
    """

    sampler = None

    def __init__(self, image_data: Optional[DataInfo], text_stream, *, text_num_samples: Optional[int] = None,
                 world_size: int = 1):
        if image_data is None and text_stream is None:
            raise ValueError("UnpairedLoader needs image data, a text stream, or both")
        self.image_data = image_data
        self.text_stream = text_stream
        if image_data is None:
            if not text_num_samples:
                raise ValueError("a sentence-only loader needs text_num_samples (--train-num-samples)")
            self._text_batches = max(1, int(text_num_samples) // (text_stream.batch_size * int(world_size)))
            self._text_samples = self._text_batches * text_stream.batch_size * int(world_size)

    @property
    def dataloader(self) -> "UnpairedLoader":
        return self

    @property
    def shared_epoch(self):
        return None if self.image_data is None else self.image_data.shared_epoch

    @property
    def num_batches(self) -> int:
        return self._text_batches if self.image_data is None else self.image_data.dataloader.num_batches

    @property
    def num_samples(self) -> int:
        return self._text_samples if self.image_data is None else self.image_data.dataloader.num_samples

    @property
    def counters(self) -> Optional[SkipCounters]:
        if self.image_data is None:
            return self.text_stream.counters
        return getattr(self.image_data.dataloader, "counters", None)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        if self.image_data is not None:
            self.image_data.set_epoch(epoch)
        if self.text_stream is not None:
            self.text_stream.set_epoch(epoch)

    def _text_batch(self, batch) -> dict:
        """The part of a text-stream batch a step carries (a plain list of sentences here)."""
        return {"text": batch}

    def __iter__(self) -> Iterator[dict]:
        texts = iter(self.text_stream) if self.text_stream is not None else None
        if self.image_data is None:
            for _ in range(self._text_batches):
                yield self._text_batch(next(texts))
            return
        for batch in self.image_data.dataloader:
            out = dict(batch)
            if texts is not None:
                out.update(self._text_batch(next(texts)))
            yield out


def get_unpaired_data(args, view_size: int, counters: Optional[SkipCounters] = None, epoch: int = 0,
                      modalities=("image", "text")) -> UnpairedLoader:
    """Build the unpaired loader from an argparse namespace, for the ``modalities`` the loss uses.

    Reads ``train_images``, ``train_texts``, ``text_key``, ``batch_size``, ``text_batch_size`` (None ->
    ``batch_size``), ``train_num_samples``, ``workers``, ``seed``, ``world_size``, ``rank``,
    ``dataset_resampled``, ``aug_scale``; optional: ``aug_hflip`` (flip probability, default 0),
    ``text_workers`` (default 0), ``text_shuffle_buffer`` (default 10000). The image and text
    streams share ``counters`` (one is created if None; see ``loader.counters``).
    """
    use_images, use_texts = "image" in modalities, "text" in modalities
    if use_images and not getattr(args, "train_images", None):
        raise DistillUsageError("--train-images is required for unpaired distillation "
                                "(image-only webdataset shards, e.g. --train-images 'imgs/{00000..00099}.tar')")
    if use_texts and not getattr(args, "train_texts", None):
        raise DistillUsageError("--train-texts is required for unpaired distillation "
                                "(sentence files, e.g. --train-texts 'sentences/*.txt')")
    if not use_images and not getattr(args, "train_num_samples", None):
        raise DistillUsageError("--train-num-samples N is required when training from sentences alone "
                                "(an epoch is N sentences)")
    counters = counters if counters is not None else SkipCounters()
    batch_size = int(args.batch_size)
    text_batch_size = getattr(args, "text_batch_size", None) or batch_size
    scale = getattr(args, "aug_scale", None) or (0.9, 1.0)
    image_data = None if not use_images else get_image_dataset(
        args.train_images,
        batch_size=batch_size,
        view_size=view_size,
        num_samples=getattr(args, "train_num_samples", None),
        workers=int(getattr(args, "workers", 0) or 0),
        seed=int(getattr(args, "seed", 0) or 0),
        epoch=epoch,
        world_size=int(getattr(args, "world_size", 1) or 1),
        rank=int(getattr(args, "rank", 0) or 0),
        resampled=bool(getattr(args, "dataset_resampled", False)),
        scale=tuple(scale),
        hflip_prob=float(getattr(args, "aug_hflip", 0.0) or 0.0),
        counters=counters,
        train=True,
    )
    if not use_texts:
        return UnpairedLoader(image_data, None)
    text_stream = get_text_stream(
        args.train_texts,
        batch_size=int(text_batch_size),
        seed=int(getattr(args, "seed", 0) or 0),
        text_key=getattr(args, "text_key", None) or "text",
        world_size=int(getattr(args, "world_size", 1) or 1),
        rank=int(getattr(args, "rank", 0) or 0),
        workers=int(getattr(args, "text_workers", 0) or 0),
        shuffle_buffer=10000 if getattr(args, "text_shuffle_buffer", None) is None else int(args.text_shuffle_buffer),
        counters=counters,
    )
    text_stream.set_epoch(epoch)
    return UnpairedLoader(image_data, text_stream, text_num_samples=getattr(args, "train_num_samples", None),
                          world_size=int(getattr(args, "world_size", 1) or 1))
