"""Build a precomputed teacher-embedding cache (``python -m openclip_distill.cache``).

For every image of ``--train-images`` (identified by its source shard and ``__key__``) and each of
K = ``--cache-augmentations`` augmentations, the view parameters are drawn from
``cache_view_seed(seed, uid, k)`` with :func:`sample_view_params` and the teacher embeds
``apply_view(image, params, view_size)`` through the same path training uses
(the teacher's ``encode_image`` on views in [0, 1]). Params and embeddings are stored per source shard; every sentence of
``--train-texts`` is stored in corpus order with its teacher embedding; the teacher's text tower is
saved beside them. A teacher ensemble (``--distill-teacher A,B``) stores every teacher's embeddings side
by side and lists the teachers (widths, logit scales) under the manifest's ``members``.
Layout and manifest: :mod:`openclip_distill.cache.manifest`.

Resumable (finished files are skipped, temp files are ignored and replaced) and shardable: process
``I`` of ``N`` (``--shard-index/--num-shards``, or torchrun's RANK/WORLD_SIZE) takes image shards
and text chunks ``I, I+N, ...``. Whichever process finds everything done writes the manifest
(rerunning any process after the others finished does too).
"""
import argparse
import io
import json
import logging
import os
import random
import sys
import time
from datetime import datetime, timezone
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from open_clip_train.data import tarfile_to_samples_nothrow
from open_clip_train.params import ParseKwargs

from ..data.counters import SkipCounters
from ..data.image_shards import IMAGE_KEYS
from ..data.seeding import worker_id_and_count
from ..data.shard_paths import dataset_size, expand_patterns
from ..data.tar_writer import TarShardWriter
from ..data.text_corpus import _read_unit, get_text_stream
from ..data.views import apply_view, sample_view_params
from ..data.worker_errors import unwrap_worker_errors
from ..atomic_files import atomic_open, atomic_torch_save, write_json_atomic
from ..errors import DistillUsageError
from ..teachers import IMAGE, TEXT, TeacherEnsemble, create_teacher
from ..params import PRECISIONS
from .manifest import (CONFIG_FIELDS, CONFIG_NAME, DTYPES, FORMAT, IMAGES_DIR, MANIFEST_NAME, TEXT_TOWER_NAME,
                     TEXTS_DIR, VERSION, cache_shard_stem, cache_view_seed, read_json, sample_uid, source_id,
                     text_chunk_names)

_SHARD_EXAMPLE = "imgs/{00000..00099}.tar"
BUILD_SKIP_REASONS = ("duplicate_key",)
_AUG_KEYS = {"scale": "scale", "ratio": "ratio", "hflip": "hflip", "hflip_prob": "hflip"}


class _Parser(argparse.ArgumentParser):
    """argparse errors become one-line DistillUsageErrors (``--help`` still prints and exits)."""

    def error(self, message):
        raise DistillUsageError(f"{message} (see python -m openclip_distill.cache --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m openclip_distill.cache", allow_abbrev=False,
        description="Precompute a frozen teacher's embeddings of K stored augmentations per image (and of every "
                    "sentence), for training with --teacher-cache DIR.")
    p.add_argument("--distill-teacher", required=True,
                   help="Teacher: any OpenCLIP model name, or hf:<repo id or local dir> (a transformers CLIP-family "
                        "model); several, comma-separated, for an ensemble.")
    p.add_argument("--distill-teacher-pretrained", default=None,
                   help="Teacher weights: a pretrained tag or a local .pt/.safetensors (default: random init, "
                        "seeded by --seed like the trainer); comma-separated, one per teacher, for an ensemble.")
    p.add_argument("--distill-teacher-precision", default=None, choices=PRECISIONS,
                   help="Teacher precision (default: amp on CUDA, fp32 on CPU). Use the one training would use.")
    p.add_argument("--cache-dir", default=None, help="Where OpenCLIP looks for / downloads pretrained weights.")
    p.add_argument("--train-images", required=True, help="Image webdataset shards (brace/glob, '::'-joined).")
    p.add_argument("--train-texts", required=True, help="Sentence corpora (.txt/.jsonl[.gz]/.tar, '::'-joined).")
    p.add_argument("--text-key", default="text", help="Field of the sentence in .jsonl corpora.")
    p.add_argument("--out", required=True, help="Output directory of the cache.")
    p.add_argument("--cache-augmentations", type=int, required=True, help="K: augmentations stored per image.")
    p.add_argument("--view-size", type=int, default=None,
                   help="Side of the stored views in px (default: the teacher's image size; training must request "
                        "the same size, i.e. max(student, teacher)).")
    p.add_argument("--aug-cfg", nargs="*", default={}, action=ParseKwargs,
                   help="Replayable augmentation: scale=(0.9,1.0) ratio=(0.75,1.3333) hflip=0.0")
    p.add_argument("--cache-dtype", default="fp16", choices=tuple(DTYPES), help="Storage dtype of embeddings.")
    p.add_argument("--batch-size", type=int, default=256, help="Views (or sentences) per teacher forward.")
    p.add_argument("--text-chunk-size", type=int, default=65536, help="Sentences per texts/<n>.npy file.")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding images.")
    p.add_argument("--device", default=None, help="Teacher device (default: cuda if available, else cpu).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the stored augmentations (and of a random teacher).")
    p.add_argument("--num-shards", type=int, default=None, help="Split the work over N processes (default: "
                                                                "WORLD_SIZE or 1).")
    p.add_argument("--shard-index", type=int, default=None, help="This process's index in [0, N) (default: RANK "
                                                                 "or 0).")
    return p


def _aug(cfg: dict):
    """(scale, ratio, hflip) from ``--aug-cfg``; only replayable geometric augmentations."""
    unknown = [k for k in cfg if k not in _AUG_KEYS]
    if unknown:
        raise DistillUsageError(f"--aug-cfg: {unknown[0]!r} cannot be stored and replayed; the cache supports "
                                f"scale=(min,max), ratio=(min,max) and hflip=P")
    out = {"scale": (0.9, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.0}
    for k, v in cfg.items():
        out[_AUG_KEYS[k]] = v
    for name in ("scale", "ratio"):
        v = out[name]
        ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
        if not ok or not 0 < v[0] <= v[1] or (name == "scale" and v[1] > 1):
            raise DistillUsageError(f"--aug-cfg: {name} must be a pair (min, max) with 0 < min <= max"
                                    f"{' <= 1' if name == 'scale' else ''}, got {v!r}; e.g. {name}=(0.9,1.0)")
        out[name] = [float(v[0]), float(v[1])]
    h = out["hflip"]
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 <= h <= 1:
        raise DistillUsageError(f"--aug-cfg: hflip is a flip probability in [0, 1], got {h!r}")
    out["hflip"] = float(h)
    return out


def _sharding(args):
    n = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1) or 1)
    i = args.shard_index if args.shard_index is not None else int(os.environ.get("RANK", 0) or 0)
    if n < 1:
        raise DistillUsageError(f"--num-shards must be >= 1, got {n}")
    if not 0 <= i < n:
        raise DistillUsageError(f"--shard-index must be in [0, {n}) for --num-shards {n}, got {i}")
    return n, i


def parse_build_args(argv):
    args = build_parser().parse_args(argv)
    if args.cache_augmentations < 1:
        raise DistillUsageError(f"--cache-augmentations must be >= 1, got {args.cache_augmentations}")
    if args.view_size is not None and args.view_size < 1:
        raise DistillUsageError(f"--view-size must be a positive number of pixels, got {args.view_size}")
    for flag in ("batch_size", "text_chunk_size"):
        if getattr(args, flag) < 1:
            raise DistillUsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.workers < 0:
        raise DistillUsageError(f"--workers must be >= 0, got {args.workers}")
    if not args.text_key or not args.text_key.strip():
        raise DistillUsageError("--text-key must be a non-empty field name (e.g. 'text')")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DistillUsageError(f"--out: {args.out!r} exists and is not a directory; pass a directory")
    args.aug = _aug(args.aug_cfg or {})
    args.num_shards, args.shard_index = _sharding(args)
    return args


# --------------------------------------------------------------------------------------------
# images


class _ShardViews(IterableDataset):
    """Per DataLoader worker: whole shards (``i::workers``), in order; for each decodable image its K
    views and params, then a ``done`` record with the shard's count and skips."""

    def __init__(self, jobs, *, k, view_size, seed, aug, counters):
        super().__init__()
        self.jobs, self.k, self.view_size, self.seed, self.aug, self.counters = jobs, k, view_size, seed, aug, counters

    def _views(self, img, uid):
        width, height = img.size
        views, params = [], []
        for k in range(self.k):
            gen = torch.Generator()
            gen.manual_seed(cache_view_seed(self.seed, uid, k))
            p = sample_view_params(width, height, gen, self.aug["scale"], self.aug["ratio"], self.aug["hflip"])
            params.append(p)
            views.append(apply_view(img, p, self.view_size))
        return torch.stack(views), torch.stack(params)

    def _shard(self, job):
        skipped: Dict[str, int] = {}

        def skip(reason, detail):
            skipped[reason] = skipped.get(reason, 0) + 1
            self.counters.add(reason, detail=detail)

        def on_error(exn):
            skip("bad_shard", f"{job['source']}: {exn!r}"[:300])
            return True

        seen, count = set(), 0
        for sample in tarfile_to_samples_nothrow([{"url": job["source"]}], handler=on_error):
            key = str(sample.get("__key__", ""))
            if key in seen:
                skip("duplicate_key", f"{job['source']}: {key}")
                continue
            seen.add(key)
            data = next((sample[e] for e in IMAGE_KEYS if sample.get(e) is not None), None)
            if data is None:
                skip("missing_image", key)
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    size = img.size
                    views, params = self._views(img, sample_uid(job["stem"], key))
            except Exception as exn:  # any decoder failure
                skip("corrupt_image", f"{key}: {exn!r}"[:300])
                continue
            count += 1
            yield {"kind": "sample", "job": job["index"], "key": key, "width": size[0], "height": size[1],
                   "views": views, "params": params}
        yield {"kind": "done", "job": job["index"], "count": count, "skipped": skipped}

    def __iter__(self):
        worker, num_workers = worker_id_and_count()
        for job in self.jobs[worker::num_workers]:
            yield from self._shard(job)


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class _ShardWriter:
    """Streams one output shard (:class:`TarShardWriter`); ``commit`` writes the sidecar first, then
    publishes the shard."""

    def __init__(self, job, dtype):
        self.job, self.dtype = job, dtype
        self.writer = TarShardWriter(job["tar"])

    @property
    def count(self) -> int:
        return self.writer.count

    def add(self, key, width, height, params, emb):
        src = {"url": self.job["source"], "key": key, "width": int(width), "height": int(height)}
        self.writer.add_sample({"__key__": key, "views.npy": _npy_bytes(params.numpy().astype(np.int32)),
                                "emb.npy": _npy_bytes(emb.numpy().astype(self.dtype)),
                                "src.json": json.dumps(src)})

    def commit(self, count, skipped):
        if count != self.count:
            self.writer.abort()
            raise RuntimeError(f"internal error: shard {self.job['source']} had {count} samples, wrote {self.count}")
        write_json_atomic(self.job["sidecar"], {"source": self.job["source"], "cache": self.job["rel_tar"],
                                                "num_samples": count, "skipped": skipped})
        self.writer.commit()

    def abort(self):
        self.writer.abort()


class _Progress:
    """tqdm when installed (and stderr is a terminal), else a log line every 30 s."""

    def __init__(self, total, desc, unit):
        self.desc, self.unit, self.total, self.n, self.last = desc, unit, total, 0, time.time()
        self.start = self.last
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def update(self, n):
        self.n += n
        if self.bar is not None and not self.bar.disable:
            self.bar.update(n)
        elif time.time() - self.last > 30:
            self.last = time.time()
            rate = self.n / max(1e-9, self.last - self.start)
            logging.info(f"{self.desc}: {self.n}{'/' + str(self.total) if self.total else ''} {self.unit} "
                         f"({rate:.1f} {self.unit}/s)")

    def close(self):
        if self.bar is not None:
            self.bar.close()
        logging.info(f"{self.desc}: {self.n} {self.unit} in {time.time() - self.start:.1f} s")


def _image_jobs(out, urls):
    jobs = []
    for index, url in enumerate(urls):
        stem = cache_shard_stem(url)
        rel_tar = f"{IMAGES_DIR}/{stem}.tar"
        jobs.append({"index": index, "source": source_id(url), "url": url, "stem": stem, "rel_tar": rel_tar,
                     "tar": os.path.join(out, rel_tar), "sidecar": os.path.join(out, IMAGES_DIR, f"{stem}.json")})
    return jobs


def _job_done(job) -> bool:
    return os.path.isfile(job["tar"]) and os.path.isfile(job["sidecar"])


def _remove_stale_temps(directory, prefixes):
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if ".tmp" in name and any(name.startswith(p) for p in prefixes):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def _build_images(args, teacher, jobs, counters):
    # this process owns these shards: temp files of theirs are leftovers of a killed run
    _remove_stale_temps(os.path.join(args.out, IMAGES_DIR), [os.path.basename(j["tar"]) for j in jobs])
    todo = [j for j in jobs if not _job_done(j)]
    if len(todo) < len(jobs):
        logging.info(f"images: {len(jobs) - len(todo)} of this process's {len(jobs)} shard(s) already cached, skipped")
    if not todo:
        return
    size = dataset_size([j["url"] for j in todo])
    progress = _Progress(size, "teacher cache: images", "img")
    dataset = _ShardViews(todo, k=args.cache_augmentations, view_size=args.view_size, seed=args.seed, aug=args.aug,
                          counters=counters)
    workers = min(args.workers, len(todo))
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)
    dtype = np.dtype(DTYPES[args.cache_dtype])
    writers: Dict[int, _ShardWriter] = {}
    pending: List[dict] = []
    by_index = {j["index"]: j for j in todo}

    def flush():
        if not pending:
            return
        views = torch.cat([s["views"] for s in pending])
        emb = torch.cat([stored_embeddings(teacher.encode_image(views[i:i + args.batch_size])).cpu()
                         for i in range(0, len(views), args.batch_size)])
        k = args.cache_augmentations
        for i, s in enumerate(pending):
            if s["job"] not in writers:
                writers[s["job"]] = _ShardWriter(by_index[s["job"]], dtype)
            writers[s["job"]].add(s["key"], s["width"], s["height"], s["params"], emb[i * k:(i + 1) * k])
        progress.update(len(pending))
        pending.clear()

    try:
        num_views = 0
        for item in unwrap_worker_errors(loader):
            if item["kind"] == "sample":
                pending.append(item)
                num_views += args.cache_augmentations
                if num_views >= args.batch_size:
                    flush()
                    num_views = 0
                continue
            flush()
            num_views = 0
            writer = writers.pop(item["job"], None) or _ShardWriter(by_index[item["job"]], dtype)
            writer.commit(item["count"], item["skipped"])
            if item["skipped"]:
                logging.warning(f"images: {by_index[item['job']]['source']}: skipped {item['skipped']}")
    finally:
        for w in writers.values():
            w.abort()
        progress.close()


# --------------------------------------------------------------------------------------------
# sentences


def _text_units(args):
    """Validate ``--train-texts`` exactly as training does; its files and read units, in order."""
    stream = get_text_stream(args.train_texts, batch_size=1, seed=args.seed, text_key=args.text_key)
    return stream.files, stream.dataset.units


def _chunk_done(out, n) -> bool:
    npy, jsonl = text_chunk_names(n)
    return os.path.isfile(os.path.join(out, TEXTS_DIR, npy)) and os.path.isfile(os.path.join(out, TEXTS_DIR, jsonl))


def _write_chunk(args, teacher, n, sentences, dtype):
    directory = os.path.join(args.out, TEXTS_DIR)
    npy, jsonl = (os.path.join(directory, name) for name in text_chunk_names(n))
    emb = torch.cat([stored_embeddings(teacher.encode_text(sentences[i:i + args.batch_size])).cpu()
                     for i in range(0, len(sentences), args.batch_size)])
    with atomic_open(jsonl, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in sentences)
    with atomic_open(npy, "wb") as f:  # written last: the chunk counts as done once both exist
        np.save(f, emb.numpy().astype(dtype), allow_pickle=False)


def _build_texts(args, teacher, units, counters):
    """Read the whole corpus in order (every process does, cheaply); embed this process's chunks.
    Returns the sentence count of every chunk."""
    chunk, sizes, written = [], [], 0
    dtype = np.dtype(DTYPES[args.cache_dtype])
    progress = _Progress(None, "teacher cache: sentences", "sent")
    mine = lambda n: n % args.num_shards == args.shard_index  # noqa: E731

    def finish(n, sentences):
        nonlocal written
        sizes.append(len(sentences))
        if mine(n) and not _chunk_done(args.out, n):
            _write_chunk(args, teacher, n, sentences, dtype)
            written += 1
            progress.update(len(sentences))

    for unit in units:
        for text in _read_unit(unit, args.text_key, 1, 0, counters):
            chunk.append(text)
            if len(chunk) == args.text_chunk_size:
                finish(len(sizes), chunk)
                chunk = []
    if chunk:
        finish(len(sizes), chunk)
    progress.close()
    logging.info(f"sentences: {sum(sizes)} in {len(sizes)} chunk(s); {written} written by this process")
    return sizes


# --------------------------------------------------------------------------------------------
# driver


def _check_config(out, config):
    path = os.path.join(out, CONFIG_NAME)
    try:
        old = read_json(path)
    except (OSError, ValueError):
        old = None
    if old is None:
        write_json_atomic(path, config)
        return
    diff = [k for k in CONFIG_FIELDS if old.get(k) != config.get(k)]
    if diff:
        k = diff[0]
        show = lambda v: (repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "...")  # noqa: E731
        raise DistillUsageError(
            f"--out: {out!r} holds a cache built with other settings ({k}: {show(old.get(k))} there, "
            f"{show(config.get(k))} now); pass a new --out, or the same flags to resume it")


def _finalize(args, config, jobs, chunk_sizes, text_counters) -> Optional[dict]:
    """Write the manifest if every image shard and text chunk exists (else return None)."""
    if not all(_job_done(j) for j in jobs) or not all(_chunk_done(args.out, n) for n in range(len(chunk_sizes))):
        return None
    has_tower = os.path.isfile(os.path.join(args.out, TEXT_TOWER_NAME))
    if config["teacher_kind"] == "open_clip" and not has_tower:
        return None
    shards, skipped = [], {}
    for j in jobs:
        side = read_json(j["sidecar"])
        shards.append({"cache": j["rel_tar"], "source": j["source"], "num_samples": int(side["num_samples"]),
                       "skipped": side.get("skipped", {})})
        for k, v in side.get("skipped", {}).items():
            skipped[k] = skipped.get(k, 0) + int(v)
    chunks = []
    for n, size in enumerate(chunk_sizes):
        npy, jsonl = text_chunk_names(n)
        chunks.append({"embeddings": f"{TEXTS_DIR}/{npy}", "sentences": f"{TEXTS_DIR}/{jsonl}", "num_sentences": size})
    manifest = dict(config)
    manifest.update(
        image_shards=shards, num_images=sum(s["num_samples"] for s in shards), skipped_images=skipped,
        text_chunks=chunks, num_sentences=sum(chunk_sizes),
        skipped_texts={k: v for k, v in text_counters.snapshot().items() if v},
        text_tower=TEXT_TOWER_NAME if has_tower else None, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(os.path.join(args.out, MANIFEST_NAME), manifest)
    return manifest


def stored_embeddings(features) -> torch.Tensor:
    """What the cache stores for a batch: the teacher's features, or an ensemble's members' side by side
    (``[N, D_1 + ... + D_K]``, split back by the members' ``embed_dim`` when training)."""
    return torch.cat(features, dim=1) if isinstance(features, tuple) else features


def _teacher_fields(teacher) -> dict:
    """Manifest fields of the teacher: width and scales; an ensemble adds ``members`` (each teacher's own)."""
    if isinstance(teacher, TeacherEnsemble):
        return {"embed_dim": sum(teacher.embed_dim), "logit_scale": list(teacher.logit_scale), "logit_bias": None,
                "members": [m.describe() for m in teacher.members]}
    return {"embed_dim": int(teacher.embed_dim), "logit_scale": float(teacher.logit_scale),
            "logit_bias": teacher.logit_bias}


def build_cache(args) -> Optional[dict]:
    """Build (this process's part of) the cache; returns the manifest if the cache is complete."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.distill_teacher_precision or ("amp" if str(device).startswith("cuda") else "fp32")
    urls = expand_patterns(args.train_images, "--train-images", exts=(".tar",), example=_SHARD_EXAMPLE)
    text_files, units = _text_units(args)

    # like the trainer (main.random_seed before create_teacher): a random-init teacher is the same one
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    teacher = create_teacher(args.distill_teacher, args.distill_teacher_pretrained, device=device,
                             precision=precision, cache_dir=args.cache_dir)
    for member in getattr(teacher, "members", [teacher]):
        missing = sorted({IMAGE, TEXT} - set(member.modalities))
        if missing:
            raise DistillUsageError(f"--distill-teacher: the cache stores image and sentence embeddings, but "
                                    f"{member.name!r} has no {missing[0]} tower; train it live instead")
    args.view_size = int(args.view_size or max(teacher.image_size))
    tower = teacher.text_tower_state_dict()  # an ensemble: its first teacher's (the one a student can adopt)

    config = {
        "format": FORMAT, "version": VERSION, "teacher": args.distill_teacher,
        "teacher_pretrained": args.distill_teacher_pretrained, "teacher_precision": precision,
        "teacher_image_size": list(teacher.image_size), **_teacher_fields(teacher), "teacher_kind": teacher.kind,
        "view_size": args.view_size, "augmentations": args.cache_augmentations, "seed": args.seed,
        "aug_scale": args.aug["scale"], "aug_ratio": args.aug["ratio"], "aug_hflip": args.aug["hflip"],
        "dtype": args.cache_dtype, "text_key": args.text_key, "text_chunk_size": args.text_chunk_size,
        "source_shards": [source_id(u) for u in urls], "text_files": [os.path.abspath(f) for f in text_files],
    }
    for sub in (IMAGES_DIR, TEXTS_DIR):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    _check_config(args.out, config)
    if tower is not None and not os.path.isfile(os.path.join(args.out, TEXT_TOWER_NAME)):
        atomic_torch_save(tower, os.path.join(args.out, TEXT_TOWER_NAME))

    jobs = _image_jobs(args.out, urls)
    mine = jobs[args.shard_index::args.num_shards]
    logging.info(f"teacher cache {args.out}: process {args.shard_index}/{args.num_shards}, {len(mine)} of "
                 f"{len(jobs)} image shard(s), K={args.cache_augmentations}, view {args.view_size} px, "
                 f"teacher {args.distill_teacher} ({precision}) on {device}")
    image_counters = SkipCounters(reasons=BUILD_SKIP_REASONS)
    _build_images(args, teacher, mine, image_counters)
    text_counters = SkipCounters()
    chunk_sizes = _build_texts(args, teacher, units, text_counters)
    manifest = _finalize(args, config, jobs, chunk_sizes, text_counters)
    if manifest is None:
        logging.info("this process is done; other processes still have parts to build (the last one to finish "
                     "writes manifest.json; rerun any of them afterwards to write it)")
    else:
        logging.info(f"teacher cache complete: {manifest['num_images']} images x {manifest['augmentations']} views, "
                     f"{manifest['num_sentences']} sentences -> {os.path.join(args.out, MANIFEST_NAME)}")
    return manifest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not logging.root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    try:
        args = parse_build_args(argv)
        build_cache(args)
        return 0
    except DistillUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return DistillUsageError.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
