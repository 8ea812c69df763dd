"""Tests for the demo corpus: determinism, split properties, and readability by webdataset and by
OpenCLIP's own loader."""
import glob
import io
import json
import os
import tarfile

import pytest

from openclip_distill.demo import corpus as C
from openclip_distill.demo.corpus import generate_demo_corpus, parse_caption

SMALL = dict(n_teacher_pairs=300, n_images=250, n_texts=400, n_paired=200, n_missing=60,
             n_eval_per_class=1, shard_size=120, texts_per_file=150, workers=1)


def _files(root):
    out = {}
    for p in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(p) and os.path.basename(p) != "corpus.json":  # manifest holds the root path
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _tar_records(path):
    recs = {}
    with tarfile.open(path) as t:
        for m in t:
            key, ext = m.name.split(".", 1)
            recs.setdefault(key, {})[ext] = t.extractfile(m).read()
    return recs


def _split_records(root, split):
    recs = {}
    for p in sorted(glob.glob(os.path.join(root, split, "*.tar"))):
        recs.update(_tar_records(p))
    return recs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "corpus")
    return generate_demo_corpus(root, seed=0, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    again = generate_demo_corpus(str(tmp_path / "again"), seed=0, **dict(SMALL, workers=2))
    a, b = _files(corpus["root"]), _files(again["root"])
    assert sorted(a) == sorted(b) and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    other = _files(generate_demo_corpus(str(tmp_path / "other"), seed=1, **SMALL)["root"])
    assert sorted(other) == sorted(a)
    assert other["images/shard-000000.tar"] != a["images/shard-000000.tar"]
    assert other["texts/sentences-000.txt"] != a["texts/sentences-000.txt"]


def test_cached_second_call_does_not_rewrite(corpus):
    manifest = os.path.join(corpus["root"], "corpus.json")
    before = os.stat(manifest).st_mtime_ns
    again = generate_demo_corpus(corpus["root"], seed=0, **SMALL)
    assert os.stat(manifest).st_mtime_ns == before
    assert again["images"] == corpus["images"]


def test_layout_counts_and_sizes_json(corpus):
    for split, n in (("teacher_pairs", 300), ("images", 250), ("paired", 200), ("eval", 240)):
        d = corpus[split + "_dir"]
        sizes = json.load(open(os.path.join(d, "sizes.json")))
        tars = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "shard-*.tar")))
        assert sorted(sizes) == tars
        assert sum(sizes.values()) == n == corpus[split + "_count"]
        for t in tars:
            assert len(_tar_records(os.path.join(d, t))) == sizes[t]
    texts = corpus["texts"].split("::")
    assert len(texts) == 3 and all(os.path.basename(t).startswith("sentences-") for t in texts)
    assert sum(len(open(t).read().splitlines()) for t in texts) == 400


def test_split_contents(corpus):
    root = corpus["root"]
    for rec in _split_records(root, "images").values():
        assert set(rec) == {"png"}  # image-only split
    for split in ("teacher_pairs", "paired"):
        for rec in _split_records(root, split).values():
            assert {"png", "txt"} <= set(rec)
    for rec in _split_records(root, "eval").values():
        assert set(rec) == {"png", "cls", "txt"}


def test_eval_classnames_in_the_hundreds_and_captions_match_labels(corpus):
    ev = corpus["eval_dir"]
    names = open(os.path.join(ev, "classnames.txt")).read().splitlines()
    assert 200 <= len(names) < 1000 and len(set(names)) == len(names) == corpus["num_classes"]
    templates = open(os.path.join(ev, "templates.txt")).read().splitlines()
    assert templates and all("{c}" in t for t in templates)
    recs = _split_records(corpus["root"], "eval")
    labels = [int(r["cls"]) for r in recs.values()]
    assert sorted(set(labels)) == list(range(len(names)))  # every class evaluated
    for r in recs.values():
        assert parse_caption(r["txt"].decode()) == int(r["cls"])


def test_paired_split_misses_classes(corpus):
    labels = [parse_caption(r["txt"].decode()) for r in _split_records(corpus["root"], "paired").values()]
    assert -1 not in labels
    missing = set(corpus["missing_paired_classes"])
    assert len(missing) == 60
    assert not missing & set(labels)
    assert len(set(range(corpus["num_classes"])) - set(labels)) >= 60
    # while the unpaired sentence split covers the missing classes
    sentences = [s for t in corpus["texts"].split("::") for s in open(t).read().splitlines()]
    assert missing & {parse_caption(s) for s in sentences}


def test_eval_captions_never_appear_in_training_splits(corpus):
    root = corpus["root"]
    eval_caps = {r["txt"].decode() for r in _split_records(root, "eval").values()}
    train_caps = {s for t in corpus["texts"].split("::") for s in open(t).read().splitlines()}
    for split in ("teacher_pairs", "paired"):
        train_caps |= {r["txt"].decode() for r in _split_records(root, split).values()}
    assert len(eval_caps) > 100 and len(train_caps) > 300
    assert not eval_caps & train_caps
    # sentences are varied: several templates / word orders per class
    assert len(train_caps) > 0.8 * (300 + 200 + 400) * 0.5


def test_readable_by_webdataset_and_openclip_loader(corpus):
    import webdataset as wds
    from open_clip_train.data import get_dataset_size

    n = 0
    for img, txt in wds.WebDataset(corpus["paired"], shardshuffle=False).decode("pil").to_tuple("png", "txt"):
        assert img.size == (32, 32) and img.mode == "RGB" and isinstance(txt, str) and txt
        n += 1
    assert n == 200
    n = sum(1 for _ in wds.WebDataset(corpus["images"], shardshuffle=False).decode("pil").to_tuple("png"))
    assert n == 250
    assert get_dataset_size(corpus["teacher_pairs"])[0] == 300
    assert get_dataset_size(corpus["eval"])[0] == 240


def test_readable_by_the_eval_loader(corpus):
    from openclip_distill.eval import load_eval_set

    es = load_eval_set(corpus["eval_dir"])
    assert es.num_classes == 240 and es.num_samples == 240
    assert es.templates[0].replace("{c}", es.classnames[0]) == "a photo of a small red circle."
    first = next(iter(es.samples()))
    assert first[0].size == (32, 32) and first[2]


def test_renderer_draws_the_class(corpus):
    """Pixels of the object's colour dominate the object region (the picture is what it says)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for label in (0, 100, 239):
        size, colour, shape = C.class_attributes(label)
        imgs, free = C.render_batch([label] * 8, rng)
        target = np.array(C.COLOURS[colour], float)
        close = (np.abs(imgs.astype(float) - target).max(-1) < 60).mean((1, 2))
        lo = {"small": 0.02, "medium": 0.04, "large": 0.1}[size]
        assert (close > lo).all(), (label, close)
