"""The DC-CLIP demo's bilingual corpus and its Chinese translation: determinism, layout, captions that
name their class in both languages, and an eval set the multilingual evaluation reads."""
import glob
import os
import tarfile

import numpy as np
import pytest

from openclip_distill.demo import chinese as Z
from openclip_distill.demo.bilingual_corpus import generate_bilingual_corpus
from openclip_distill.demo.corpus import (BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, class_names,
                                          generate_demo_corpus, parse_caption)

SMALL = dict(n_teacher_pairs=200, n_images=150, n_texts=120, n_paired=100, n_missing=60,
             n_eval_per_class=1, shard_size=100, texts_per_file=50)


def _files(root):
    out = {}
    for p in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(p) and os.path.basename(p) != "corpus.json":
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _records(d):
    recs = {}
    for p in sorted(glob.glob(os.path.join(d, "*.tar"))):
        with tarfile.open(p) as t:
            for m in t:
                key, ext = m.name.split(".", 1)
                recs.setdefault(key, {})[ext] = t.extractfile(m).read()
    return recs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_bilingual_corpus(str(tmp_path_factory.mktemp("bi") / "corpus"), seed=0, **SMALL)


def test_translation_tables_cover_the_world():
    assert set(Z.SIZES_ZH) == set(SIZES) and set(Z.COLOURS_ZH) == set(COLOURS) and set(Z.SHAPES_ZH) == set(SHAPES)
    assert set(Z.POSITION_PHRASES_ZH) == {p for row in POSITIONS for p in row}
    assert set(Z.BACKGROUND_PHRASES_ZH) == set(BACKGROUNDS)
    names = Z.class_names_zh()
    assert len(names) == len(set(names)) == len(class_names()) == 240
    assert names[class_names().index("large red star")] == "大的红色星形"
    assert names[class_names().index("medium pink heart")] == "中等大小的粉色心形"


def test_chinese_captions_name_their_class():
    rng = np.random.default_rng(0)
    for label in range(240):
        free = {"position": "top left", "background": "striped"}
        for _ in range(3):
            text = Z.caption_zh(label, free, rng)
            assert Z.parse_caption_zh(text) == label, text
            assert not any(c.isascii() and c.isalpha() for c in text)
    assert Z.parse_caption_zh("一个大的红色星形在左上角") == class_names().index("large red star")
    assert Z.parse_caption_zh("一个红色星形") == -1  # no size


def test_same_seed_same_bytes_and_the_dime_fm_corpus_is_untouched(corpus, tmp_path):
    a = _files(corpus["root"])
    again = _files(generate_bilingual_corpus(str(tmp_path / "again"), seed=0, **SMALL)["root"])
    assert sorted(a) == sorted(again) and all(a[k] == again[k] for k in a)
    other = _files(generate_bilingual_corpus(str(tmp_path / "other"), seed=1, **SMALL)["root"])
    assert other["images/shard-000000.tar"] != a["images/shard-000000.tar"]
    # the DIME-FM corpus of the same seed shares no shard bytes with it (other random streams)
    dime = _files(generate_demo_corpus(str(tmp_path / "dime"), seed=0, n_teacher_pairs=0, n_images=150,
                                       n_texts=50, n_paired=100, n_eval_per_class=1, shard_size=100, workers=1)["root"])
    assert dime["images/shard-000000.tar"] != a["images/shard-000000.tar"]


def test_layout_languages_and_captions(corpus):
    assert corpus["languages"] == ["en", "zh"]
    tp = _records(corpus["teacher_pairs_dir"])
    assert len(tp) == 200 and all(set(r) == {"png", "en.txt", "zh.txt"} for r in tp.values())
    for r in tp.values():  # both captions describe the same image: the same class
        assert parse_caption(r["en.txt"].decode()) == Z.parse_caption_zh(r["zh.txt"].decode()) >= 0
    assert all(set(r) == {"png"} for r in _records(corpus["images_dir"]).values())
    paired = _records(corpus["paired_dir"])
    assert len(paired) == 100 and all(set(r) == {"png", "txt"} for r in paired.values())
    langs = ["zh" if Z.parse_caption_zh(r["txt"].decode()) >= 0 else "en" for r in paired.values()]
    assert langs.count("zh") == langs.count("en") == 50
    labels = {parse_caption(r["txt"].decode()) if lang == "en" else Z.parse_caption_zh(r["txt"].decode())
              for r, lang in zip(paired.values(), langs)}
    assert not labels & set(corpus["missing_paired_classes"]) and -1 not in labels
    files = corpus["texts"].split("::")
    assert [os.path.basename(f) for f in files] == [f"sentences-{lang}-{k:03d}.txt" for lang in ("en", "zh")
                                                    for k in range(3)]
    en = [ln for f in files[:3] for ln in open(f, encoding="utf-8").read().splitlines()]
    zh = [ln for f in files[3:] for ln in open(f, encoding="utf-8").read().splitlines()]
    assert len(en) == len(zh) == 120 and corpus["texts_count"] == 240
    assert [parse_caption(t) for t in en] != [Z.parse_caption_zh(t) for t in zh]  # independent draws
    ev = _records(corpus["eval_dir"])
    eval_caps = {r[f"{lang}.txt"].decode() for r in ev.values() for lang in ("en", "zh")}
    train_caps = {r[k].decode() for d in ("teacher_pairs_dir", "paired_dir") for r in _records(corpus[d]).values()
                  for k in r if k.endswith("txt")} | set(en) | set(zh)
    assert not eval_caps & train_caps


def test_eval_set_reads_per_language(corpus):
    from openclip_distill.eval import eval_languages, load_eval_set

    root = corpus["eval_dir"]
    assert eval_languages(root) == ["en", "zh"]
    zh = load_eval_set(root, lang="zh")
    assert zh.classnames == Z.class_names_zh() and zh.templates == Z.ZEROSHOT_TEMPLATES_ZH
    samples = list(zh.samples())
    assert len(samples) == 240
    assert all(Z.parse_caption_zh(cap) == label for _, label, cap in samples)
    en = list(load_eval_set(root, lang="en").samples())
    assert all(parse_caption(cap) == label for _, label, cap in en)
