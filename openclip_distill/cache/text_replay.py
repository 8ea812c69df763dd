"""Cached sentences + teacher text embeddings as an endless, reproducible stream of batches.

The same scheme as :mod:`openclip_distill.data.text_corpus`, with the cache's text chunks as units:
each pass shuffles the chunks with (seed, epoch, pass), deals them to the ``world_size x workers``
streams (with fewer chunks than streams every stream reads every chunk and keeps rows
``s, s+n, ...``), reads each chunk's rows in a fresh random order, interleaves up to 16 chunks at
random, passes the sentences through a seeded shuffle buffer and cuts batches; the stream never ends
(resampled). The row shuffle is what the live stream cannot do: a chunk holds up to
``--text-chunk-size`` consecutive sentences of the corpus, so a corpus written language by language
(all English, then all Chinese) would otherwise reach training in long one-language runs that a
shuffle buffer smaller than the chunk only partly mixes. After ``set_epoch(e)`` a fresh
``iter()`` yields exactly the same batches. Batches: ``{"text": list[str], "emb": [T, D] float32}``.
"""
import json
import os
import random
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..data.seeding import derive_seed, worker_id_and_count
from ..data.shuffle_buffer import buffer_shuffle
from ..data.stream_share import stream_share, warn_empty_share
from ..data.text_corpus import INTERLEAVE, SMALL_CORPUS, TextStream, _interleave
from ..errors import DistillUsageError
from .manifest import FLAG

Chunk = Tuple[str, str, int]  # (embeddings .npy, sentences .jsonl, count)


def read_text_chunk(npy: str, jsonl: str, mmap: bool = True):
    """(sentences, embeddings [C, D] in the stored dtype) of one chunk."""
    with open(jsonl, "r", encoding="utf-8") as f:
        texts = [json.loads(line) for line in f]
    emb = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise DistillUsageError(f"{FLAG}: text chunk {npy!r} holds {emb.shape[0] if emb.ndim else 0} embeddings for "
                                f"{len(texts)} sentences; rebuild the cache")
    return texts, emb


class CachedSentenceStream(IterableDataset):
    def __init__(self, chunks: List[Chunk], *, batch_size: int, seed: int, world_size: int, rank: int,
                 shuffle_buffer: int):
        super().__init__()
        self.chunks, self.batch_size, self.seed = chunks, batch_size, seed
        self.world_size, self.rank, self.shuffle_buffer = world_size, rank, shuffle_buffer
        self.epoch = 0

    def _rows(self, chunk: Chunk, stride: int, offset: int, memo, rng: random.Random) -> Iterator[tuple]:
        """This stream's rows ``offset, offset + stride, ...`` of ``chunk``, in a random order."""
        data = memo.get(chunk[0]) if memo is not None else None
        if data is None:
            data = read_text_chunk(chunk[0], chunk[1], mmap=memo is None)
            if memo is not None:
                memo[chunk[0]] = data
        texts, emb = data
        rows = list(range(offset, len(texts), stride))
        rng.shuffle(rows)
        for i in rows:
            yield texts[i], emb[i]

    def _sentences(self, epoch: int, stream: int, num_streams: int) -> Iterator[tuple]:
        pass_idx, split = 0, True
        while True:
            order = list(range(len(self.chunks)))
            random.Random(derive_seed("cached-text-units", self.seed, epoch, pass_idx)).shuffle(order)
            mine, stride, offset = stream_share(order, stream, num_streams if split else 1)
            share = sum(-(-max(0, self.chunks[i][2] - offset) // stride) for i in mine)
            if share == 0 and split:  # a tiny cache: this stream reads all of it (as the live stream does)
                warn_empty_share(FLAG, stream, num_streams)
                split = False
                continue
            # a share that fits in memory is read once and kept (no re-reading per pass)
            memo = self._memo if share <= max(self.shuffle_buffer, SMALL_CORPUS) else None
            rng = random.Random(derive_seed("cached-text-interleave", self.seed, epoch, stream, num_streams, pass_idx))
            rows_rng = random.Random(derive_seed("cached-text-rows", self.seed, epoch, stream, num_streams, pass_idx))
            readers = (self._rows(self.chunks[i], stride, offset, memo, rows_rng) for i in mine)
            yield from _interleave(readers, INTERLEAVE, rng)
            pass_idx += 1

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_id_and_count()
        num_streams = self.world_size * num_workers
        stream = self.rank * num_workers + worker
        epoch = self.epoch
        self._memo = {}
        rng = random.Random(derive_seed("cached-text-buffer", self.seed, epoch, stream, num_streams))
        texts, embs = [], []
        for text, emb in buffer_shuffle(self._sentences(epoch, stream, num_streams), self.shuffle_buffer, rng):
            texts.append(text)
            embs.append(emb)
            if len(texts) == self.batch_size:
                yield {"text": texts, "emb": torch.from_numpy(np.stack(embs).astype(np.float32))}
                texts, embs = [], []


class CachedTextStream(TextStream):
    """Endless iterable of ``{"text", "emb"}`` batches; ``set_epoch(e)`` re-seeds, and iteration (in
    process or through a DataLoader) works as in :class:`~openclip_distill.data.text_corpus.TextStream`."""


def get_cached_text_stream(directory: str, manifest: dict, *, batch_size: int, seed: int = 0, world_size: int = 1,
                           rank: int = 0, workers: int = 0, shuffle_buffer: int = 10000) -> CachedTextStream:
    if int(batch_size) <= 0:
        raise DistillUsageError(f"the text batch size must be positive, got {batch_size}")
    if int(workers) < 0:
        raise DistillUsageError(f"{FLAG}: the number of text workers must be >= 0, got {workers}")
    chunks = [(os.path.join(directory, c["embeddings"]), os.path.join(directory, c["sentences"]),
               int(c["num_sentences"])) for c in manifest["text_chunks"] if int(c["num_sentences"]) > 0]
    dataset = CachedSentenceStream(chunks, batch_size=int(batch_size), seed=int(seed), world_size=int(world_size),
                                   rank=int(rank), shuffle_buffer=int(shuffle_buffer))
    return CachedTextStream(dataset, int(workers))
