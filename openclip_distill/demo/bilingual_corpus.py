"""The DC-CLIP demo's corpus: the shapes world of :mod:`openclip_distill.demo.corpus` in Chinese and
English (the Chinese sentences come from :mod:`openclip_distill.demo.chinese`).

``generate_bilingual_corpus(root, seed=0)`` writes (same images and rendering as the DIME-FM demo's
corpus, other random streams, so that corpus and its shipped teacher are untouched):

=======================  ==============================================================
``teacher_pairs/``       png + ``en.txt`` + ``zh.txt`` (one caption per language, independent
                         draws); trains the demo AltCLIP teacher only
``images/``              image-only split (png) for stage 1
``texts/``               ``sentences-en-%03d.txt`` and ``sentences-zh-%03d.txt``: unpaired
                         sentences, one per line, drawn independently of every image
``paired/``              SMALL paired split (png + ``txt``), half of the captions Chinese and half
                         English; ``n_missing`` classes never appear in it (stage 2, baseline)
``eval/``                png + ``cls`` + ``en.txt`` + ``zh.txt`` shards, ``classnames.<lang>.txt``
                         and ``templates.<lang>.txt`` for ``en`` and ``zh``
=======================  ==============================================================

No eval caption (in either language) occurs in a training split. Same seed and parameters -> the
same bytes; a ``corpus.json`` manifest caches a finished corpus as :func:`generate_demo_corpus` does.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from typing import Dict, Tuple

import numpy as np

from ..data.tar_writer import TarShardWriter
from .chinese import ZEROSHOT_TEMPLATES_ZH, caption_zh, class_names_zh
from .corpus import (BACKGROUNDS, POSITIONS, ZEROSHOT_TEMPLATES, _balanced_labels, _brace, _chunks,
                     _png_bytes, caption, class_names, missing_paired_classes, render_batch,
                     reusable_corpus, write_lines)

BILINGUAL_CORPUS_VERSION = 1
LANGUAGES = ("en", "zh")
# random streams of this corpus: disjoint from the DIME-FM corpus's split ids (1-5)
_SPLIT_IDS = {"teacher_pairs": 11, "images": 12, "texts": 13, "paired": 14, "eval": 15}
_CAPTIONERS = {"en": caption, "zh": caption_zh}


def _draw_caption(lang: str, label: int, free: Dict[str, str], rng, forbidden) -> str:
    text = _CAPTIONERS[lang](label, free, rng)
    while text in forbidden:
        text = _CAPTIONERS[lang](label, free, rng)
    return text


def _rendered(labels, rng, chunk: int = 500):
    """``(index, image, free attributes)`` per label, drawn ``chunk`` images at a time."""
    for c0 in range(0, len(labels), chunk):
        imgs, frees = render_batch(labels[c0:c0 + chunk], rng)
        for j, (arr, free) in enumerate(zip(imgs, frees)):
            yield c0 + j, arr, free


def _write_shard(path: str, split: str, seed: int, shard_idx: int, labels, forbidden) -> Tuple[str, int]:
    """One shard of ``split``: the members each split holds (see the module docstring)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], shard_idx])
    with TarShardWriter(path) as writer:
        for i, arr, free in _rendered(labels, rng):
            label = int(labels[i])
            sample = {"__key__": f"{split}{shard_idx:04d}_{i:06d}", "png": _png_bytes(arr)}
            if split in ("teacher_pairs", "eval"):
                for lang in LANGUAGES:
                    sample[f"{lang}.txt"] = _draw_caption(lang, label, free, rng, forbidden)
            elif split == "paired":  # one caption, the language alternates with the position
                sample["txt"] = _draw_caption(LANGUAGES[i % 2], label, free, rng, forbidden)
            if split == "eval":
                sample["cls"] = str(label)
            writer.add_sample(sample)
    return os.path.basename(path), len(labels)


def _write_sentences(path: str, lang: str, seed: int, file_idx: int, labels, forbidden) -> int:
    rng = np.random.default_rng([seed, _SPLIT_IDS["texts"], LANGUAGES.index(lang), file_idx])
    lines = []
    for label in labels:  # free attributes drawn as for an image, but no image is kept
        free = {"position": POSITIONS[rng.integers(3)][rng.integers(3)],
                "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))]}
        lines.append(_draw_caption(lang, int(label), free, rng, forbidden))
    write_lines(path, lines)
    return len(lines)


def generate_bilingual_corpus(
    root: str,
    seed: int = 0,
    *,
    n_teacher_pairs: int = 60000,
    n_images: int = 10000,
    n_texts: int = 10000,
    n_paired: int = 800,
    n_missing: int = 60,
    n_eval_per_class: int = 4,
    shard_size: int = 2500,
    texts_per_file: int = 5000,
    force: bool = False,
) -> Dict[str, object]:
    """Write (or reuse) the bilingual corpus under ``root``; return a dict of paths and counts.

    ``n_texts`` sentences per language. Keys as :func:`generate_demo_corpus` (``<split>``: brace
    pattern of its shards, ``<split>_dir``, ``<split>_count``; ``texts``: ``::``-joined sentence files
    of both languages, ``texts_count``: lines over both), plus ``languages``."""
    params = dict(version=BILINGUAL_CORPUS_VERSION, seed=seed, n_teacher_pairs=n_teacher_pairs,
                  n_images=n_images, n_texts=n_texts, n_paired=n_paired, n_missing=n_missing,
                  n_eval_per_class=n_eval_per_class, shard_size=shard_size, texts_per_file=texts_per_file)
    root = os.path.abspath(os.path.expanduser(root))
    saved = reusable_corpus(root, params, force)
    if saved is not None:
        return saved
    if n_paired < 2 or n_missing >= len(class_names()):
        raise ValueError("n_paired must be >= 2 and n_missing < number of classes")
    tmp = root + ".tmp-%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    ncls = len(class_names())
    missing = missing_paired_classes(seed, n_missing)
    present = [c for c in range(ncls) if c not in set(missing)]

    def labels_of(split, n, allowed, stream=0):
        return _balanced_labels(np.random.default_rng([seed, 7, _SPLIT_IDS[split], stream]), n, allowed)

    sizes_of: Dict[str, Dict[str, int]] = {}

    def write_split(split, n, allowed, forbidden):
        d = os.path.join(tmp, split)
        os.makedirs(d)
        labels = labels_of(split, n, allowed) if n > 0 else []
        sizes_of[split] = dict(_write_shard(os.path.join(d, "shard-%06d.tar" % k), split, seed, k,
                                            labels[a:b], forbidden)
                               for k, (a, b) in enumerate(_chunks(n, shard_size)))
        with open(os.path.join(d, "sizes.json"), "w") as f:
            json.dump(dict(sorted(sizes_of[split].items())), f, indent=1, sort_keys=True)

    # eval first: its captions are forbidden in every training split
    write_split("eval", n_eval_per_class * ncls, list(range(ncls)), frozenset())
    forbidden = set()
    for shard in sorted(os.listdir(os.path.join(tmp, "eval"))):
        if shard.endswith(".tar"):
            with tarfile.open(os.path.join(tmp, "eval", shard)) as tar:
                forbidden.update(tar.extractfile(m).read().decode("utf-8") for m in tar.getmembers()
                                 if m.name.endswith(".txt"))
    forbidden = frozenset(forbidden)
    eval_dir = os.path.join(tmp, "eval")
    for lang, names, templates in (("en", class_names(), ZEROSHOT_TEMPLATES),
                                   ("zh", class_names_zh(), ZEROSHOT_TEMPLATES_ZH)):
        write_lines(os.path.join(eval_dir, f"classnames.{lang}.txt"), names)
        write_lines(os.path.join(eval_dir, f"templates.{lang}.txt"), templates)
    write_split("teacher_pairs", n_teacher_pairs, list(range(ncls)), forbidden)
    write_split("images", n_images, list(range(ncls)), forbidden)
    write_split("paired", n_paired, present, forbidden)
    os.makedirs(os.path.join(tmp, "texts"))
    text_files = []
    for lang in LANGUAGES:
        labels = labels_of("texts", n_texts, list(range(ncls)), 1 + LANGUAGES.index(lang)) if n_texts > 0 else []
        for k, (a, b) in enumerate(_chunks(n_texts, texts_per_file)):
            name = f"sentences-{lang}-{k:03d}.txt"
            _write_sentences(os.path.join(tmp, "texts", name), lang, seed, k, labels[a:b], forbidden)
            text_files.append(name)

    paths: Dict[str, object] = {"root": root, "num_classes": ncls, "missing_paired_classes": missing,
                                "languages": list(LANGUAGES)}
    for split in ("teacher_pairs", "images", "paired", "eval"):
        d = os.path.join(root, split)
        paths[split] = _brace(d, len(sizes_of[split])) if sizes_of[split] else ""
        paths[split + "_dir"] = d
        paths[split + "_count"] = int(sum(sizes_of[split].values()))
    paths["texts"] = "::".join(os.path.join(root, "texts", f) for f in text_files)
    paths["texts_dir"] = os.path.join(root, "texts")
    paths["texts_count"] = int(n_texts) * len(LANGUAGES)
    with open(os.path.join(tmp, "corpus.json"), "w") as f:
        json.dump({"params": params, "paths": paths}, f, indent=1, sort_keys=True)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    os.replace(tmp, root)
    return paths
