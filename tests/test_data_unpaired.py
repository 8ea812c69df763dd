"""Unpaired images + sentences: images define the epoch, the text stream is endless and independent."""
import itertools

import pytest
import torch

from openclip_distill.data.counters import SkipCounters
from openclip_distill.data.image_shards import get_image_dataset
from openclip_distill.data.text_corpus import get_text_stream
from toy_data import write_image_shards, write_text_file
from openclip_distill.data.loader_spec import LoaderSpec
from openclip_distill.data.unpaired import UnpairedLoader, get_unpaired_data
from openclip_distill.errors import DistillUsageError

VIEW = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired")
    images = write_image_shards(str(root / "imgs"), 4, 8)
    small = write_text_file(str(root / "small.txt"), [f"tiny corpus sentence {i}" for i in range(3)])
    large = write_text_file(str(root / "large.jsonl"), [f"large corpus sentence {i}" for i in range(2000)])
    return {"images": images, "small": small, "large": large}


def _loader(data, texts, *, text_batch_size=4, num_samples=None, seed=0, workers=0):
    images = get_image_dataset(data["images"]["pattern"], batch_size=4, view_size=VIEW, num_samples=num_samples,
                               seed=seed, workers=workers, scale=(0.5, 1.0))
    return UnpairedLoader(images, get_text_stream(texts, batch_size=text_batch_size, seed=seed))


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("which", ["small", "large"])
def test_images_define_the_epoch(data, which):
    loader = _loader(data, data[which], text_batch_size=5)
    assert len(loader) == loader.num_batches == 8 and loader.num_samples == 32
    assert loader.dataloader is loader
    for epoch in (0, 1):
        batches = _epoch(loader, epoch)
        assert len(batches) == 8  # never truncated to the text corpus, never extended by it
        for b in batches:
            assert set(b) == {"image", "view", "key", "text"}
            assert b["image"].shape == (4, 3, VIEW, VIEW) and len(b["key"]) == 4
            assert len(b["text"]) == 5 and all(isinstance(t, str) and t for t in b["text"])
        assert sorted(k for b in batches for k in b["key"]) == sorted(data["images"]["keys"])


def test_tiny_text_corpus_keeps_going(data):
    loader = _loader(data, data["small"], text_batch_size=4)
    texts = [t for b in _epoch(loader, 0) for t in b["text"]]
    assert len(texts) == 32  # 8 batches x 4 from a 3-sentence corpus
    assert set(texts) == {f"tiny corpus sentence {i}" for i in range(3)}


def test_streams_are_independent(data):
    with_small = _epoch(_loader(data, data["small"]), 1)
    with_large = _epoch(_loader(data, data["large"]), 1)
    # the text corpus does not change the image batches...
    for a, b in zip(with_small, with_large):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and torch.equal(a["view"], b["view"])
    # ...and the images do not change the text batches (other image count, other image order)
    fewer_images = _epoch(_loader(data, data["large"], num_samples=16), 1)
    assert [b["text"] for b in fewer_images] == [b["text"] for b in with_large[:4]]
    two_workers = _epoch(_loader(data, data["large"], workers=2), 1)
    assert [b["key"] for b in two_workers] != [b["key"] for b in with_large]
    assert [b["text"] for b in two_workers] == [b["text"] for b in with_large]
    # and the pairing is not a fixed function of the image: another epoch, other sentences for a key
    epoch2 = _epoch(_loader(data, data["large"]), 2)
    first = {k: tuple(b["text"]) for b in with_large for k in b["key"]}
    second = {k: tuple(b["text"]) for b in epoch2 for k in b["key"]}
    assert sum(first[k] != second[k] for k in first) > 16


def test_resumed_epoch_matches_uninterrupted_run(data):
    uninterrupted = _loader(data, data["large"])
    _epoch(uninterrupted, 0)
    expected = _epoch(uninterrupted, 1)
    resumed = _epoch(_loader(data, data["large"]), 1)
    assert [b["key"] for b in resumed] == [b["key"] for b in expected]
    assert [b["text"] for b in resumed] == [b["text"] for b in expected]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, expected))


def _args(data, **kw):
    base = dict(train_images=data["images"]["pattern"], train_texts=data["large"], text_key="text", batch_size=4,
                text_batch_size=None, train_num_samples=None, workers=0, seed=0, world_size=1, rank=0,
                dataset_resampled=False, aug_scale=(0.9, 1.0))
    base.update(kw)
    return LoaderSpec(**base)


def test_get_unpaired_data_from_args(data):
    counters = SkipCounters()
    loader = get_unpaired_data(_args(data), VIEW, counters)
    assert isinstance(loader, UnpairedLoader) and len(loader) == 8 and loader.counters is counters
    loader.set_epoch(0)
    first = next(iter(loader))
    assert len(first["text"]) == 4 and first["image"].shape == (4, 3, VIEW, VIEW)
    loader = get_unpaired_data(_args(data, text_batch_size=7, train_num_samples=12, batch_size=3), VIEW, counters)
    batches = _epoch(loader, 0)
    assert len(batches) == 4 and all(len(b["text"]) == 7 and len(b["key"]) == 3 for b in batches)


def test_get_unpaired_data_usage_errors(data, tmp_path):
    with pytest.raises(DistillUsageError, match="--train-texts"):
        get_unpaired_data(_args(data, train_texts=None), VIEW, None)
    with pytest.raises(DistillUsageError, match="--train-images"):
        get_unpaired_data(_args(data, train_images=None), VIEW, None)
    with pytest.raises(DistillUsageError, match="--train-texts"):
        get_unpaired_data(_args(data, train_texts=str(tmp_path / "none-*.txt")), VIEW, None)


def test_shared_test_corpus(tiny_corpus):
    """The generated corpus other tests use (tests/conftest.py) loads as unpaired data."""
    args = LoaderSpec(train_images=tiny_corpus["images"], train_texts=tiny_corpus["texts"], batch_size=8)
    loader = get_unpaired_data(args, 24, SkipCounters())
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    assert all(b["image"].shape == (8, 3, 24, 24) and len(b["text"]) == 8 for b in batches)
    assert list(itertools.chain.from_iterable(b["text"] for b in batches))
