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
from .loader_spec import LoaderSpec
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


def get_unpaired_data(spec: LoaderSpec, view_size: int, counters: Optional[SkipCounters] = None, epoch: int = 0,
                      modalities=("image", "text")) -> UnpairedLoader:
    """Build the unpaired loader of ``spec`` for the ``modalities`` the loss uses. The image and text
    streams share ``counters`` (one is created if None; see ``loader.counters``)."""
    use_images, use_texts = "image" in modalities, "text" in modalities
    if use_images and not spec.train_images:
        raise DistillUsageError("--train-images is required for unpaired distillation "
                                "(image-only webdataset shards, e.g. --train-images 'imgs/{00000..00099}.tar')")
    if use_texts and not spec.train_texts:
        raise DistillUsageError("--train-texts is required for unpaired distillation "
                                "(sentence files, e.g. --train-texts 'sentences/*.txt')")
    if not use_images and not spec.train_num_samples:
        raise DistillUsageError("--train-num-samples N is required when training from sentences alone "
                                "(an epoch is N sentences)")
    counters = counters if counters is not None else SkipCounters()
    image_data = None if not use_images else get_image_dataset(
        spec.train_images, batch_size=int(spec.batch_size), view_size=view_size, num_samples=spec.train_num_samples,
        workers=int(spec.workers), seed=int(spec.seed), epoch=epoch, world_size=int(spec.world_size),
        rank=int(spec.rank), resampled=bool(spec.dataset_resampled), scale=tuple(spec.aug_scale or (0.9, 1.0)),
        hflip_prob=float(spec.aug_hflip), counters=counters, train=True)
    if not use_texts:
        return UnpairedLoader(image_data, None)
    text_stream = get_text_stream(
        spec.train_texts, batch_size=spec.sentences_per_step, seed=int(spec.seed), text_key=spec.text_key or "text",
        world_size=int(spec.world_size), rank=int(spec.rank), workers=int(spec.text_workers),
        shuffle_buffer=int(spec.text_shuffle_buffer), counters=counters)
    text_stream.set_epoch(epoch)
    return UnpairedLoader(image_data, text_stream, text_num_samples=spec.train_num_samples,
                          world_size=int(spec.world_size))
