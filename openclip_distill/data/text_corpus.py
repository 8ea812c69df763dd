"""Unpaired sentence corpora as an endless, reproducible stream of text batches.

Formats (by extension): ``.txt`` (one sentence per line), ``.jsonl`` (one JSON object per line,
sentence in field ``text_key``), both optionally ``.gz``, and ``.tar`` webdataset shards (one
sentence per ``*.txt`` member). Patterns: ``::``-joined, each a file, directory, brace or glob
pattern.

How the stream is made (constant memory, nothing is loaded whole):

* The corpus is cut into *units*: ~1 MiB byte ranges of uncompressed ``.txt``/``.jsonl`` files
  (a line belongs to the range holding its first byte), whole files for ``.gz`` and ``.tar``.
* Each pass over the corpus shuffles the units with a seed of (seed, epoch, pass) -- the same on
  every rank/worker -- and deals them out: stream ``s`` of ``n`` (``n = world_size x workers``)
  takes units ``s, s+n, ...``; with fewer units than streams every stream reads all units but keeps
  only records ``s, s+n, ...`` of each. Streams therefore never share a sentence.
* A stream reads up to 16 of its units at once, interleaving them at random, through a shuffle
  buffer (``shuffle_buffer`` sentences), and cuts batches of ``batch_size``. When its units are
  used up it starts the next pass with a new shuffle: the stream never ends (it is resampled).
  A share small enough to fit the buffer (or ``SMALL_CORPUS`` sentences) is kept in memory after
  its first pass, and every later pass is a fresh random permutation of it.
* All randomness comes from ``(seed, epoch, rank, worker)``: after ``set_epoch(e)`` a fresh
  ``iter()`` yields exactly the same batches, e.g. in a run resumed at epoch ``e``.

Empty lines, lines without the field, bad JSON and undecodable bytes are skipped and counted
(``empty_text`` / ``bad_text_record``) each time they are read: once per pass, once in total for a
share kept in memory. Unreadable files count as ``bad_shard``.
"""
import gzip
import json
import os
import random
import re
import tarfile
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

from torch.utils.data import DataLoader, IterableDataset

from ..errors import DistillUsageError
from .counters import SkipCounters
from .seeding import derive_seed, worker_id_and_count
from .shard_paths import expand_patterns, is_remote
from .shuffle_buffer import buffer_shuffle
from .stream_share import stream_share, warn_empty_share
from .worker_errors import unwrap_worker_errors

FLAG = "--train-texts"
TEXT_FORMATS = {".txt": "txt", ".txt.gz": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".tar": "tar"}
_EXAMPLE = "sentences/*.txt::more/part-{000..009}.jsonl"
UNIT_BYTES = 1 << 20  # byte range of one unit of an uncompressed file
INTERLEAVE = 16  # units a stream reads at the same time
SMALL_CORPUS = 4096  # a stream share of at most max(this, shuffle_buffer) sentences is kept in memory
_TAR_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def text_format(path: str) -> Optional[str]:
    lower = path.lower()
    for ext in sorted(TEXT_FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return TEXT_FORMATS[ext]
    return None


class _NoCounters:
    def add(self, reason, n=1, detail=""):
        pass


# --------------------------------------------------------------------------------------------
# record parsing


def _parse_txt(raw: bytes, counters) -> Optional[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        counters.add("bad_text_record", detail="line is not UTF-8")
        return None
    text = text.lstrip("\ufeff").strip()
    if not text:
        counters.add("empty_text")
        return None
    return text


def _parse_jsonl(raw: bytes, text_key: str, counters) -> Optional[str]:
    if not raw.strip():
        counters.add("empty_text")
        return None
    try:
        record = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except (UnicodeDecodeError, ValueError) as exn:
        counters.add("bad_text_record", detail=f"bad JSON: {exn}"[:200])
        return None
    if not isinstance(record, dict) or text_key not in record:
        counters.add("bad_text_record", detail=f"no field {text_key!r}")
        return None
    value = record[text_key]
    if not isinstance(value, str):
        counters.add("bad_text_record", detail=f"field {text_key!r} is not a string")
        return None
    text = value.strip()
    if not text:
        counters.add("empty_text")
        return None
    return text


# --------------------------------------------------------------------------------------------
# units: (path, format, start, end); start/end byte range for plain text files, (0, -1) = whole file

Unit = Tuple[str, str, int, int]


def _file_units(path: str, fmt: str) -> List[Unit]:
    if fmt == "tar" or path.lower().endswith(".gz"):
        return [(path, fmt, 0, -1)]
    size = os.path.getsize(path)
    if size == 0:
        return [(path, fmt, 0, -1)]
    return [(path, fmt, start, min(start + UNIT_BYTES, size)) for start in range(0, size, UNIT_BYTES)]


def _unit_lines(path: str, start: int, end: int) -> Iterator[bytes]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        if end < 0:
            yield from f
            return
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line holding byte start-1 belongs to the previous unit
        pos = f.tell()
        while pos < end:
            raw = f.readline()
            if not raw:
                return
            yield raw
            pos += len(raw)


def _tar_texts(path: str, exts: Sequence[str]) -> Iterator[bytes]:
    with tarfile.open(path, "r|*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            match = _TAR_KEY.match(member.name)
            if not match or match.group(2).lower() not in exts:
                continue
            f = tf.extractfile(member)
            yield f.read() if f is not None else b""


def _read_unit(unit: Unit, text_key: str, stride: int, offset: int, counters) -> Iterator[str]:
    """Sentences of records ``offset, offset + stride, ...`` of one unit (bad records counted)."""
    path, fmt, start, end = unit
    try:
        if fmt == "tar":
            records = _tar_texts(path, ("txt", text_key.lower()))
        else:
            records = _unit_lines(path, start, end)
        for i, raw in enumerate(records):
            if i % stride != offset:
                continue
            text = _parse_jsonl(raw, text_key, counters) if fmt == "jsonl" else _parse_txt(raw, counters)
            if text is not None:
                yield text
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exn:
        counters.add("bad_shard", detail=f"{path}: {exn!r}"[:300])


def _interleave(readers: Iterator[Iterator[str]], width: int, rng: random.Random) -> Iterator[str]:
    """Draw from up to ``width`` readers at once, picking the next reader at random."""
    active = []
    for reader in readers:
        active.append(reader)
        if len(active) >= width:
            break
    while active:
        i = rng.randrange(len(active))
        text = next(active[i], None)
        if text is None:
            active.pop(i)
            nxt = next(readers, None)
            if nxt is not None:
                active.append(nxt)
            continue
        yield text


class SentenceStream(IterableDataset):
    """The endless batch stream of one rank (split further across DataLoader workers if any)."""

    def __init__(self, units: List[Unit], *, batch_size: int, seed: int, text_key: str, world_size: int,
                 rank: int, shuffle_buffer: int, counters):
        super().__init__()
        self.units, self.batch_size, self.seed, self.text_key = units, batch_size, seed, text_key
        self.world_size, self.rank, self.shuffle_buffer, self.counters = world_size, rank, shuffle_buffer, counters
        self.epoch = 0

    def _sentences(self, epoch: int, stream: int, num_streams: int) -> Iterator[str]:
        split = num_streams > 1
        pass_idx = 0
        cache_limit = max(self.shuffle_buffer, SMALL_CORPUS)
        while True:
            order = list(range(len(self.units)))
            random.Random(derive_seed("text-units", self.seed, epoch, pass_idx)).shuffle(order)
            mine, stride, offset = stream_share(order, stream, num_streams if split else 1)
            rng = random.Random(derive_seed("text-interleave", self.seed, epoch, stream, num_streams, pass_idx))
            readers = (_read_unit(self.units[i], self.text_key, stride, offset, self.counters) for i in mine)
            count, cache = 0, []
            for text in _interleave(readers, INTERLEAVE, rng):
                count += 1
                if cache is not None:
                    if count <= cache_limit:
                        cache.append(text)
                    else:
                        cache = None  # too large to keep: later passes re-read the files
                yield text
            if cache:
                # a small share: keep it in memory and serve later passes as fresh permutations
                # instead of re-reading the files thousands of times to fill the shuffle buffer
                while True:
                    pass_idx += 1
                    random.Random(derive_seed("text-small", self.seed, epoch, stream, num_streams,
                                              pass_idx)).shuffle(cache)
                    yield from cache
            if count == 0:
                if split:  # this stream's share holds no sentence (tiny corpus): read the whole corpus instead
                    warn_empty_share(FLAG, stream, num_streams)
                    split = False
                    continue
                raise DistillUsageError(f"{FLAG}: a full pass over the corpus found no sentence "
                                        f"(see the skip counters); check the files and --text-key")
            pass_idx += 1

    def __iter__(self) -> Iterator[List[str]]:
        worker, num_workers = worker_id_and_count()
        num_streams = self.world_size * num_workers
        stream = self.rank * num_workers + worker
        epoch = self.epoch
        rng = random.Random(derive_seed("text-buffer", self.seed, epoch, stream, num_streams))
        batch = []
        for text in buffer_shuffle(self._sentences(epoch, stream, num_streams), self.shuffle_buffer, rng):
            batch.append(text)
            if len(batch) == self.batch_size:
                yield batch
                batch = []


class TextStream:
    """Endless iterable of ``list[str]`` batches; see the module docstring.

    ``set_epoch(e)`` re-seeds; every ``iter()`` starts the stream of the current epoch from its
    beginning. With ``workers > 0`` the batches come from a (non-persistent) DataLoader, started at
    each ``iter()``.
    """

    def __init__(self, dataset: IterableDataset, workers: int, files: Sequence[str] = ()):
        self.dataset, self.workers, self.files = dataset, workers, list(files)
        self.batch_size = dataset.batch_size
        self.counters = getattr(dataset, "counters", None)

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = int(epoch)

    def __iter__(self) -> Iterator[List[str]]:
        if self.workers <= 0:
            return iter(self.dataset)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.workers, persistent_workers=False)
        return unwrap_worker_errors(loader)


def _first_sentence(units: List[Unit], text_key: str) -> Optional[str]:
    quiet = _NoCounters()
    for unit in units:
        for text in _read_unit(unit, text_key, 1, 0, quiet):
            return text
    return None


def get_text_stream(
        patterns: str,
        *,
        batch_size: int,
        seed: int = 0,
        text_key: str = "text",
        world_size: int = 1,
        rank: int = 0,
        workers: int = 0,
        shuffle_buffer: int = 10000,
        counters: Optional[SkipCounters] = None,
) -> TextStream:
    """Build the endless sentence-batch stream for ``--train-texts`` (see the module docstring)."""
    if int(batch_size) <= 0:
        raise DistillUsageError(f"the text batch size must be positive, got {batch_size}")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DistillUsageError(f"{FLAG}: invalid rank {rank} for world size {world_size}")
    if int(workers) < 0:
        raise DistillUsageError(f"{FLAG}: the number of text workers must be >= 0, got {workers}")
    if not text_key or not str(text_key).strip():
        raise DistillUsageError(f"{FLAG}: --text-key must be a non-empty field name (e.g. 'text')")
    exts = tuple(TEXT_FORMATS)
    files = expand_patterns(patterns, FLAG, exts=exts, example=_EXAMPLE)
    remote = [f for f in files if is_remote(f)]
    if remote:
        raise DistillUsageError(f"{FLAG}: remote URLs are not supported ({remote[0]!r}); copy the corpus to a "
                                f"local or mounted file system")
    unknown = [f for f in files if text_format(f) is None]
    if unknown:
        raise DistillUsageError(f"{FLAG}: unsupported file type {unknown[0]!r} ({len(unknown)} file(s)); use "
                                f"{', '.join(exts)} (one sentence per line / JSON objects with field "
                                f"{text_key!r} / webdataset shards with .txt members)")
    units = [u for f in files for u in _file_units(f, text_format(f))]
    if _first_sentence(units, str(text_key)) is None:
        raise DistillUsageError(f"{FLAG}: the {len(files)} file(s) matching {patterns!r} hold no sentence "
                                f"(all lines empty, or no JSON field {text_key!r}); pass a non-empty corpus or "
                                f"fix --text-key")
    counters = counters if counters is not None else SkipCounters()
    dataset = SentenceStream(units, batch_size=int(batch_size), seed=int(seed), text_key=str(text_key),
                             world_size=int(world_size), rank=int(rank), shuffle_buffer=int(shuffle_buffer),
                             counters=counters)
    return TextStream(dataset, int(workers), files)
