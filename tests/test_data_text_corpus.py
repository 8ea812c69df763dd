"""Sentence corpora: formats, pattern joining, skipped records, resampling, determinism, ranks, errors."""
import collections
import gzip
import itertools
import json
import os

import pytest

from openclip_distill.data import text_corpus
from openclip_distill.data.counters import SkipCounters
from openclip_distill.data.text_corpus import get_text_stream
from toy_data import write_text_file
from openclip_distill.errors import DistillUsageError


def _take(stream, n_batches):
    return list(itertools.islice(iter(stream), n_batches))


def _flat(batches):
    return [s for b in batches for s in b]


def _sentences(prefix, n):
    return [f"{prefix} sentence number {i}" for i in range(n)]


@pytest.mark.parametrize("ext", ["txt", "jsonl", "tar", "txt.gz", "jsonl.gz"])
def test_each_format_yields_every_sentence_once_per_pass(tmp_path, ext):
    sents = _sentences(ext, 12)
    path = str(tmp_path / f"corpus.{ext}")
    if ext.endswith(".gz"):
        plain = write_text_file(str(tmp_path / f"plain.{ext[:-3]}"), sents)
        with open(plain, "rb") as f, gzip.open(path, "wb") as g:
            g.write(f.read())
        os.remove(plain)
    else:
        write_text_file(path, sents)
    stream = get_text_stream(path, batch_size=4, shuffle_buffer=1)
    batches = _take(stream, 3)
    assert all(isinstance(b, list) and len(b) == 4 for b in batches)
    assert sorted(_flat(batches)) == sorted(sents)


def test_jsonl_uses_text_key(tmp_path):
    path = write_text_file(str(tmp_path / "c.jsonl"), _sentences("k", 6), text_key="caption")
    stream = get_text_stream(path, batch_size=6, text_key="caption", shuffle_buffer=1)
    assert sorted(_take(stream, 1)[0]) == sorted(_sentences("k", 6))
    with pytest.raises(DistillUsageError, match="--text-key|'text'"):
        get_text_stream(path, batch_size=2)  # default field "text" is absent


def test_patterns_joined_with_colons_globs_and_braces(tmp_path):
    (tmp_path / "d").mkdir()
    write_text_file(str(tmp_path / "a1.txt"), _sentences("a1", 3))
    write_text_file(str(tmp_path / "a2.txt"), _sentences("a2", 3))
    write_text_file(str(tmp_path / "b.jsonl"), _sentences("b", 3))
    write_text_file(str(tmp_path / "d" / "p-0.tar"), _sentences("p0", 3))
    write_text_file(str(tmp_path / "d" / "p-1.tar"), _sentences("p1", 3))
    pattern = "::".join([str(tmp_path / "a*.txt"), str(tmp_path / "b.jsonl"), str(tmp_path / "d" / "p-{0..1}.tar")])
    stream = get_text_stream(pattern, batch_size=5, shuffle_buffer=1)
    assert len(stream.files) == 5
    expected = _sentences("a1", 3) + _sentences("a2", 3) + _sentences("b", 3) + _sentences("p0", 3) + \
        _sentences("p1", 3)
    assert sorted(_flat(_take(stream, 3))) == sorted(expected)
    # a directory stands for its corpus files
    assert sorted(_flat(_take(get_text_stream(str(tmp_path / "d"), batch_size=6, shuffle_buffer=1), 1))) == \
        sorted(_sentences("p0", 3) + _sentences("p1", 3))


def test_empty_and_bad_records_are_skipped_and_counted(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"  first  \n\n   \n\xff\xfe broken utf8\nsecond\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"text": " third "}),
        "{not json",
        json.dumps({"other": "no text field"}),
        json.dumps({"text": 12}),
        json.dumps({"text": "   "}),
        "",
        json.dumps({"text": "fourth"}),
    ]) + "\n")
    counters = SkipCounters()
    stream = get_text_stream(f"{txt}::{jsonl}", batch_size=4, shuffle_buffer=1, counters=counters)
    assert sorted(_take(stream, 1)[0]) == ["first", "fourth", "second", "third"]
    snap = counters.snapshot()
    assert snap["empty_text"] == 4  # 2 blank txt lines, a blank JSON text, a blank jsonl line
    assert snap["bad_text_record"] == 4  # bad utf-8, bad JSON, missing field, non-string field


def test_small_corpus_is_resampled_and_reshuffled(tmp_path):
    sents = _sentences("s", 5)
    path = write_text_file(str(tmp_path / "small.txt"), sents)
    batches = _take(get_text_stream(path, batch_size=4), 100)  # 400 sentences from a corpus of 5
    assert len(batches) == 100 and all(len(b) == 4 for b in batches)
    counts = collections.Counter(_flat(batches))
    assert set(counts) == set(sents)
    assert all(60 <= c <= 100 for c in counts.values())
    windows = {tuple(_flat(batches)[i:i + 5]) for i in range(0, 400, 5)}
    assert len(windows) > 10  # the order changes from pass to pass
    # without a shuffle buffer every pass is still complete: passes are exact permutations
    flat = _flat(_take(get_text_stream(path, batch_size=5, shuffle_buffer=1), 6))
    assert all(sorted(flat[i:i + 5]) == sorted(sents) for i in range(0, 30, 5))


def test_large_file_is_cut_into_units_without_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(text_corpus, "UNIT_BYTES", 37)  # many byte ranges inside one file
    sents = [f"line {i}:" + "x" * (i % 23) for i in range(200)]
    path = write_text_file(str(tmp_path / "big.txt"), sents)
    stream = get_text_stream(path, batch_size=50, shuffle_buffer=1)
    assert len(stream.dataset.units) > 50
    first_pass = _flat(_take(stream, 4))
    assert sorted(first_pass) == sorted(sents)  # no line lost or duplicated at range boundaries
    assert first_pass != sents  # ranges are read in shuffled, interleaved order


def test_large_corpus_is_reread_with_a_new_order_each_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(text_corpus, "UNIT_BYTES", 37)
    monkeypatch.setattr(text_corpus, "SMALL_CORPUS", 0)  # too big to keep in memory: files are re-read
    sents = [f"line {i}:" + "x" * (i % 23) for i in range(200)]
    path = write_text_file(str(tmp_path / "big.txt"), sents)
    flat = _flat(_take(get_text_stream(path, batch_size=50, shuffle_buffer=1), 12))
    passes = [flat[i:i + 200] for i in range(0, 600, 200)]
    assert all(sorted(p) == sorted(sents) for p in passes)
    assert passes[0] != passes[1] != passes[2]


def test_set_epoch_makes_the_stream_reproducible(tmp_path):
    path = write_text_file(str(tmp_path / "c.txt"), _sentences("e", 300))
    stream = get_text_stream(path, batch_size=8, seed=3, shuffle_buffer=50)
    stream.set_epoch(2)
    a = _take(stream, 20)
    assert _take(stream, 20) == a  # a fresh iter() restarts the epoch's stream
    stream.set_epoch(3)
    b = _take(stream, 20)
    assert b != a
    other = get_text_stream(path, batch_size=8, seed=3, shuffle_buffer=50)
    other.set_epoch(2)
    assert _take(other, 20) == a  # a new stream (e.g. a resumed run) at epoch 2 draws the same
    seeded = get_text_stream(path, batch_size=8, seed=4, shuffle_buffer=50)
    seeded.set_epoch(2)
    assert _take(seeded, 20) != a


@pytest.mark.parametrize("n_files", [1, 4])
def test_ranks_draw_disjoint_sentences(tmp_path, n_files):
    sents = _sentences("r", 40)
    for i in range(n_files):
        write_text_file(str(tmp_path / f"part{i}.txt"), sents[i::n_files])
    seen = []
    for rank in (0, 1):
        stream = get_text_stream(str(tmp_path / "*.txt"), batch_size=20, world_size=2, rank=rank, shuffle_buffer=1)
        seen.append(_take(stream, 1)[0])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(sents)


def test_tiny_corpus_with_many_ranks_still_streams(tmp_path):
    path = write_text_file(str(tmp_path / "one.txt"), ["only sentence"])
    stream = get_text_stream(path, batch_size=3, world_size=4, rank=3)
    assert _take(stream, 2) == [["only sentence"] * 3] * 2


@pytest.mark.timeout(60)
def test_worker_processes(tmp_path):
    sents = _sentences("w", 50)
    for i in range(2):
        write_text_file(str(tmp_path / f"w{i}.txt"), sents[i::2])
    stream = get_text_stream(str(tmp_path / "*.txt"), batch_size=5, workers=2, shuffle_buffer=1)
    a = _take(stream, 10)
    assert sorted(_flat(a)) == sorted(sents)  # two workers, disjoint halves, one pass in total
    assert _take(stream, 10) == a


def test_usage_errors(tmp_path):
    with pytest.raises(DistillUsageError, match="--train-texts"):
        get_text_stream("", batch_size=4)
    with pytest.raises(DistillUsageError, match="--train-texts.*nothing"):
        get_text_stream(str(tmp_path / "nothing*.txt"), batch_size=4)
    with pytest.raises(DistillUsageError, match="--train-texts.*missing.txt"):
        get_text_stream(str(tmp_path / "missing.txt"), batch_size=4)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DistillUsageError, match="--train-texts.*unsupported"):
        get_text_stream(str(tmp_path / "data.csv"), batch_size=4)
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(DistillUsageError, match="--train-texts.*no sentence"):
        get_text_stream(f"{tmp_path / 'blank.txt'}::{tmp_path / 'blank.jsonl'}", batch_size=4)
    ok = write_text_file(str(tmp_path / "ok.txt"), ["fine"])
    with pytest.raises(DistillUsageError, match="--train-texts.*nope"):
        get_text_stream(f"{ok}::{tmp_path / 'nope.txt'}", batch_size=4)  # every part must match
