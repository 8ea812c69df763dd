"""The cached sentence stream reads each text chunk's rows in a fresh random order: a corpus written
language by language (all English, then all Chinese) still reaches training mixed, even with a shuffle
buffer far smaller than the chunk."""
import json

import numpy as np

from openclip_distill.cache.text_replay import CachedSentenceStream

N = 64


def write_chunk(tmp_path):
    texts = [f"en {i}" for i in range(N // 2)] + [f"zh {i}" for i in range(N // 2)]
    emb = np.arange(N * 4, dtype=np.float16).reshape(N, 4)
    np.save(tmp_path / "000000.npy", emb)
    (tmp_path / "000000.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    return texts, emb, [(str(tmp_path / "000000.npy"), str(tmp_path / "000000.jsonl"), N)]


def batches(chunks, n, epoch=0, shuffle_buffer=1, world_size=1, rank=0):
    stream = CachedSentenceStream(chunks, batch_size=8, seed=0, world_size=world_size, rank=rank,
                                  shuffle_buffer=shuffle_buffer)
    stream.epoch = epoch
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_a_language_sorted_chunk_is_mixed_within_each_pass(tmp_path):
    texts, emb, chunks = write_chunk(tmp_path)
    first = batches(chunks, 2 * N // 8)  # two passes, no shuffle buffer (1 sentence)
    seen = [t for b in first for t in b["text"]]
    for one_pass in (seen[:N], seen[N:]):
        assert sorted(one_pass) == sorted(texts)  # every sentence once per pass ...
        assert one_pass != texts
        english = [sum(t.startswith("en") for t in one_pass[i:i + 16]) for i in range(0, N, 16)]
        assert all(2 <= e <= 14 for e in english), english  # ... with both languages in every 16
    assert seen[:N] != seen[N:]  # a new order each pass
    for b in first:  # each sentence keeps its own embedding
        rows = [texts.index(t) for t in b["text"]]
        assert np.array_equal(b["emb"].numpy(), emb[rows].astype(np.float32))
    again = batches(chunks, 2 * N // 8)
    assert [b["text"] for b in again] == [b["text"] for b in first]  # reproducible (resume)
    assert [b["text"] for b in batches(chunks, 2 * N // 8, epoch=1)] != [b["text"] for b in first]


def test_streams_that_share_a_chunk_keep_disjoint_rows(tmp_path):
    texts, _, chunks = write_chunk(tmp_path)
    per_stream = [{t for b in batches(chunks, N // 16, world_size=2, rank=r) for t in b["text"]} for r in (0, 1)]
    assert per_stream[0].isdisjoint(per_stream[1]) and per_stream[0] | per_stream[1] == set(texts)
