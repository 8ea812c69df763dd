"""On-disk layout of a precomputed teacher-embedding cache, and its manifest.

::

    DIR/
      config.json                 build settings (written first; a rerun must use the same ones)
      manifest.json               written last, once every part below exists: the cache is complete
      teacher_text_tower.pt       the teacher's text tower + logit_scale/logit_bias (weights_only;
                                  OpenCLIP teachers only)
      images/<stem>-<hash8>.tar   one webdataset shard per source image shard, a sample per image:
                                      __key__     the image's __key__ in its source shard
                                      views.npy   int32 [K, 5]  (top, left, crop_h, crop_w, flip)
                                      emb.npy     fp16|fp32 [K, D]  teacher image embeddings, normalised
                                      src.json    {"url", "key", "width", "height"}
      images/<stem>-<hash8>.json  per-shard sidecar: source url, sample count, skip counts
      texts/<n:06d>.npy           fp16|fp32 [C, D] teacher text embeddings of sentences n*C ... n*C+C-1
      texts/<n:06d>.jsonl         those C sentences, one JSON string a line (in corpus order)

Output files are written under a temporary name and renamed, so a file with its final name is
complete; a rerun skips those and rebuilds the rest (resume). The ``.json`` sidecar / ``.jsonl``
is renamed before its ``.tar`` / ``.npy``, so the latter is the commit point.

The manifest (``load_manifest``) holds the build settings plus what was built::

    format, version, teacher, teacher_pretrained, teacher_precision, teacher_image_size, embed_dim,
    logit_scale (exp'd, as the loss's dist_logit_scale), logit_bias (or null), view_size,
    augmentations (K), seed, aug_scale, aug_ratio, aug_hflip, dtype, text_key, text_chunk_size,
    source_shards [urls], text_files [paths],
    image_shards [{"cache", "source", "num_samples", "skipped"}], num_images, skipped_images,
    text_chunks [{"embeddings", "sentences", "num_sentences"}], num_sentences, skipped_texts,
    text_tower, created

A teacher ensemble's cache stores the K teachers' embeddings side by side (``embed_dim`` is their total
width, ``logit_scale`` a list) and adds ``members``: each teacher's ``describe()`` (name, weights, kind,
``embed_dim``, ``logit_scale``, ...), in storage order; its text tower is the first teacher's.
"""
import hashlib
import json
import os
from typing import Optional

from ..data.seeding import derive_seed
from ..data.shard_paths import is_remote
from ..errors import DistillUsageError

FORMAT = "openclip_distill.teacher_cache"
VERSION = 1
FLAG = "--teacher-cache"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
TEXT_TOWER_NAME = "teacher_text_tower.pt"
IMAGES_DIR = "images"
TEXTS_DIR = "texts"
DTYPES = {"fp16": "float16", "fp32": "float32"}
VIEW_COLUMNS = 5

# build settings a rerun must repeat exactly (anything else may change between runs)
CONFIG_FIELDS = ("format", "version", "teacher", "teacher_pretrained", "teacher_precision", "view_size",
                 "augmentations", "seed", "aug_scale", "aug_ratio", "aug_hflip", "dtype", "text_key",
                 "text_chunk_size", "source_shards", "text_files")


def source_id(url: str) -> str:
    """How a source shard is named in the cache: its absolute path (local) or its url (remote)."""
    return url if is_remote(url) else os.path.abspath(url)


def cache_shard_stem(url: str) -> str:
    """``<source file stem>-<8 hex digits of the source id>``: unique across source folders."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    stem = base[:-4] if base.lower().endswith(".tar") else base
    stem = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in stem) or "shard"
    digest = hashlib.sha1(source_id(url).encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"


def sample_uid(stem: str, key: str) -> str:
    """A sample's identity in the cache: unique across sources (same ``__key__`` in two sources)."""
    return f"{stem}/{key}"


def cache_view_seed(seed: int, uid: str, k: int) -> int:
    """Seed of the ``k``-th stored augmentation of sample ``uid`` (stable hash, see ``derive_seed``)."""
    return derive_seed("cache-view", int(seed), str(uid), int(k))


def chosen_augmentation(seed: int, epoch: int, uid: str, num_augmentations: int) -> int:
    """Which of the K stored augmentations sample ``uid`` uses in ``epoch``.

    Epochs ``c*K ... c*K+K-1`` walk through a permutation of ``range(K)`` drawn from
    ``(seed, uid, c)``: every stored augmentation is used once per K epochs, in a random order
    that differs between samples and cycles. Deterministic in (seed, epoch, uid).
    """
    import random

    k = int(num_augmentations)
    if k <= 1:
        return 0
    cycle, pos = divmod(int(epoch), k)
    order = list(range(k))
    random.Random(derive_seed("cache-choice", int(seed), str(uid), cycle)).shuffle(order)
    return order[pos]


def text_chunk_names(n: int):
    return f"{n:06d}.npy", f"{n:06d}.jsonl"


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _incomplete(directory: str, what: str) -> DistillUsageError:
    return DistillUsageError(
        f"{FLAG}: {directory!r} is not a complete teacher cache ({what}); build or finish it with "
        f"'python -m openclip_distill.cache --out {directory} ...' (rerun the same command to resume)")


def load_manifest(directory: str, check_files: bool = True) -> dict:
    """Read and check ``DIR/manifest.json``; one-line DistillUsageError naming --teacher-cache
    when the cache is missing, unfinished, of another format, or lost a file."""
    if not directory or not str(directory).strip():
        raise DistillUsageError(f"{FLAG} needs a directory built by 'python -m openclip_distill.cache'")
    directory = str(directory)
    if not os.path.isdir(directory):
        raise DistillUsageError(f"{FLAG}: directory {directory!r} does not exist; build the cache with "
                                f"'python -m openclip_distill.cache --out {directory} ...'")
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exn:
        raise DistillUsageError(f"{FLAG}: cannot read {path!r} ({exn}); rebuild the cache") from None
    if manifest is None:
        raise _incomplete(directory, f"no {MANIFEST_NAME}: the build has not finished")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DistillUsageError(f"{FLAG}: {path!r} is not an openclip_distill teacher-cache manifest")
    if manifest.get("version") != VERSION:
        raise DistillUsageError(f"{FLAG}: {directory!r} has cache format version {manifest.get('version')}, this "
                                f"openclip_distill reads version {VERSION}; rebuild the cache")
    if check_files:
        needed = [os.path.join(directory, manifest["text_tower"])] if manifest.get("text_tower") else []
        needed += [os.path.join(directory, s["cache"]) for s in manifest.get("image_shards", [])]
        for c in manifest.get("text_chunks", []):
            needed += [os.path.join(directory, c["embeddings"]), os.path.join(directory, c["sentences"])]
        missing = [p for p in needed if not os.path.isfile(p)]
        if missing:
            raise _incomplete(directory, f"{len(missing)} file(s) missing, e.g. {missing[0]!r}")
        if not manifest.get("image_shards") or not manifest.get("num_images"):
            raise _incomplete(directory, "it holds no image")
        if not manifest.get("text_chunks") or not manifest.get("num_sentences"):
            raise _incomplete(directory, "it holds no sentence")
    return manifest
