"""One rule for which part of a sentence corpus each of n streams reads, live and cached: a stream
whose share is empty (tiny corpus, many ranks x workers) reads the whole corpus, with a warning."""
import logging

from openclip_distill.cache import get_cached_text_stream, load_manifest
from openclip_distill.data.stream_share import stream_share

from test_cache import cache16, world  # noqa: F401  (module fixtures: a built cache)


def test_stream_share_rule():
    assert stream_share([3, 1, 2], 0, 1) == ([3, 1, 2], 1, 0)
    assert stream_share([5, 4, 3, 2, 1], 1, 2) == ([4, 2], 1, 0)     # enough units: whole units
    assert stream_share([1, 0], 2, 3) == ([1, 0], 3, 2)               # fewer units: every n-th line


def test_cached_stream_with_an_empty_share_reads_the_whole_cache(cache16, caplog):  # noqa: F811
    manifest = load_manifest(cache16)
    sizes = [c["num_sentences"] for c in manifest["text_chunks"]]
    world_size = max(sizes) + len(sizes) + 1  # more streams than units, and an offset past every chunk
    stream = get_cached_text_stream(cache16, manifest, batch_size=4, world_size=world_size, rank=world_size - 1)
    stream.set_epoch(0)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(stream))
    assert len(batch["text"]) == 4 and batch["emb"].shape[0] == 4
    assert "reads the whole corpus" in caplog.text
