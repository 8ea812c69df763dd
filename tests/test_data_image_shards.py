"""Image-only and paired webdataset shards: batches, replayable views, determinism, bad samples, errors."""
import io
import tarfile

import pytest
import torch
from PIL import Image

from openclip_distill.data.counters import SkipCounters
from openclip_distill.data.image_shards import get_image_dataset, get_paired_dataset
from toy_data import write_image_shards
from openclip_distill.data.views import apply_view, sample_view_params, view_seed
from openclip_distill.errors import DistillUsageError

VIEW = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 shards x 8 samples, with captions (image-only loading must ignore them)."""
    return write_image_shards(str(tmp_path_factory.mktemp("imgs")), 4, 8, captions=True)


def _raw_images(paths):
    out = {}
    for path in paths:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if ext in ("png", "jpg"):
                    out[key] = tf.extractfile(m).read()
    return out


def _run(info, epoch=None):
    if epoch is not None:
        info.set_epoch(epoch)
    return list(info.dataloader)


def _by_key(batches):
    out = {}
    for b in batches:
        for i, k in enumerate(b["key"]):
            out[k] = (b["image"][i], b["view"][i])
    return out


def _keys(batches):
    return [k for b in batches for k in b["key"]]


def test_batch_format_and_epoch_length(shards):
    info = get_image_dataset(shards["pattern"], batch_size=4, view_size=VIEW, scale=(0.5, 1.0))
    loader = info.dataloader
    assert loader.num_batches == 8 and loader.num_samples == 32  # from sizes.json
    batches = _run(info)
    assert len(batches) == loader.num_batches
    for b in batches:
        assert set(b) == {"image", "view", "key"}
        assert b["image"].shape == (4, 3, VIEW, VIEW) and b["image"].dtype == torch.float32
        assert b["image"].min() >= 0 and b["image"].max() <= 1
        assert b["view"].shape == (4, 5) and b["view"].dtype == torch.long
        assert len(b["key"]) == 4 and all(isinstance(k, str) for k in b["key"])
    assert sorted(_keys(batches)) == sorted(shards["keys"])  # one pass = every image exactly once


def test_stored_view_replays_exactly(shards):
    seed, epoch = 5, 3
    info = get_image_dataset(shards["pattern"], batch_size=4, view_size=VIEW, seed=seed, epoch=epoch,
                             scale=(0.3, 1.0), hflip_prob=0.5)
    raw = _raw_images(shards["shards"])
    flips = 0
    for b in _run(info):
        for img, view, key in zip(b["image"], b["view"], b["key"]):
            pil = Image.open(io.BytesIO(raw[key]))
            assert torch.equal(apply_view(pil, view, VIEW), img)
            gen = torch.Generator().manual_seed(view_seed(seed, epoch, key))
            assert torch.equal(sample_view_params(*pil.size, gen, scale=(0.3, 1.0), hflip_prob=0.5), view)
            flips += int(view[4])
    assert 0 < flips < 32


def test_same_views_for_any_worker_count(shards):
    kw = dict(batch_size=4, view_size=VIEW, seed=1, scale=(0.3, 1.0), hflip_prob=0.5)
    runs = {w: _run(get_image_dataset(shards["pattern"], workers=w, **kw), epoch=2) for w in (0, 2)}
    views = {w: _by_key(b) for w, b in runs.items()}
    assert set(views[0]) == set(views[2]) == set(shards["keys"])
    for key in shards["keys"]:
        assert torch.equal(views[0][key][0], views[2][key][0])
        assert torch.equal(views[0][key][1], views[2][key][1])
    # for a fixed worker count the whole batch sequence is reproducible
    for w in (0, 2):
        again = _run(get_image_dataset(shards["pattern"], workers=w, **kw), epoch=2)
        assert [b["key"] for b in again] == [b["key"] for b in runs[w]]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(again, runs[w]))


def test_epochs_change_order_and_views(shards):
    info = get_image_dataset(shards["pattern"], batch_size=4, view_size=VIEW, scale=(0.3, 1.0), workers=2)
    e0 = _run(info, epoch=0)
    e1 = _run(info, epoch=1)
    e0_again = _run(info, epoch=0)
    assert _keys(e0) != _keys(e1)
    assert sorted(_keys(e0)) == sorted(_keys(e1))
    v0, v1 = _by_key(e0), _by_key(e1)
    assert sum(not torch.equal(v0[k][1], v1[k][1]) for k in v0) > 16  # new augmentation per epoch
    assert _keys(e0_again) == _keys(e0)  # set_epoch(0) again: same as the first time (resume)


@pytest.mark.parametrize("num_samples,workers,expected", [(20, 0, 5), (48, 0, 12), (20, 2, 6), (3, 0, 1)])
def test_epoch_is_defined_by_num_samples(shards, num_samples, workers, expected):
    info = get_image_dataset(shards["pattern"], batch_size=4, view_size=VIEW, num_samples=num_samples,
                             workers=workers)
    assert info.dataloader.num_batches == expected
    assert info.dataloader.num_samples == expected * 4
    batches = _run(info)
    assert len(batches) == expected
    assert all(len(b["key"]) == 4 for b in batches)


def test_ranks_get_disjoint_shards(shards):
    keys = []
    for rank in (0, 1):
        info = get_image_dataset(shards["pattern"], batch_size=4, view_size=VIEW, world_size=2, rank=rank)
        assert info.dataloader.num_batches == 4
        keys.append(set(_keys(_run(info))))
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == set(shards["keys"])


def test_resampled_is_deterministic(shards):
    kw = dict(batch_size=4, view_size=VIEW, num_samples=24, resampled=True, seed=3)
    a = _run(get_image_dataset(shards["pattern"], **kw), epoch=0)
    b = _run(get_image_dataset(shards["pattern"], **kw), epoch=0)
    c = _run(get_image_dataset(shards["pattern"], **kw), epoch=1)
    assert len(a) == 6 and _keys(a) == _keys(b)
    assert _keys(a) != _keys(c)


def test_eval_mode_centre_views_and_partial_batch(shards):
    info = get_image_dataset(shards["pattern"], batch_size=5, view_size=VIEW, train=False)
    batches = _run(info)
    assert info.dataloader.num_batches == 7
    assert [len(b["key"]) for b in batches] == [5] * 6 + [2]
    assert _keys(batches) == shards["keys"]  # no shuffling
    raw = _raw_images(shards["shards"])
    for b in batches[:2]:
        for view, key in zip(b["view"], b["key"]):
            w, h = Image.open(io.BytesIO(raw[key])).size
            side = min(w, h)
            assert view.tolist() == [round((h - side) / 2), round((w - side) / 2), side, side, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_skipped_and_counted(tmp_path, workers):
    bad = ["shard001_0003", "shard002_0000"]
    data = write_image_shards(str(tmp_path), 4, 8, corrupt=bad)
    counters = SkipCounters()
    info = get_image_dataset(data["pattern"], batch_size=4, view_size=VIEW, workers=workers, counters=counters)
    batches = _run(info)
    keys = _keys(batches)
    assert len(batches) == 8 and not set(bad) & set(keys)
    # 30 good images, 32 needed: a pass gives 7 full batches, the 8th restarts the shards
    assert set(keys) <= set(data["keys"]) - set(bad) and len(set(keys)) >= 28
    assert counters.snapshot()["corrupt_image"] >= 2
    # one pass in eval mode: each bad image is counted exactly once
    counters.reset()
    _run(get_image_dataset(data["pattern"], batch_size=4, view_size=VIEW, train=False, counters=counters))
    assert counters.snapshot()["corrupt_image"] == 2


def test_samples_without_image_and_unreadable_shards_are_skipped(tmp_path):
    data = write_image_shards(str(tmp_path), 2, 8)
    with tarfile.open(data["shards"][0], "a") as tf:  # a caption-only sample
        info = tarfile.TarInfo("textonly_0001.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    garbage = tmp_path / "shard-00002.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    counters = SkipCounters()
    pattern = str(tmp_path / "shard-{00000..00002}.tar")
    batches = _run(get_image_dataset(pattern, batch_size=4, view_size=VIEW, num_samples=16, train=False,
                                     counters=counters))
    assert sorted(_keys(batches)) == sorted(data["keys"])
    snap = counters.snapshot()
    assert snap["missing_image"] == 1 and snap["bad_shard"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_all_corrupt_fails_loudly_instead_of_hanging(tmp_path, workers):
    data = write_image_shards(str(tmp_path), 2, 4, corrupt=[f"shard{s:03d}_{i:04d}" for s in (0, 1) for i in range(4)])
    info = get_image_dataset(data["pattern"], batch_size=2, view_size=VIEW, workers=workers, num_samples=8)
    with pytest.raises(DistillUsageError, match="--train-images") as err:
        _run(info)
    # raised in a worker process, it still reads as one line without the worker traceback
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_sources_joined_with_colons_and_globs(tmp_path):
    a = write_image_shards(str(tmp_path / "a"), 2, 4, prefix="a")
    b = write_image_shards(str(tmp_path / "b"), 1, 4, prefix="b")
    for pattern in (a["pattern"] + "::" + b["pattern"], str(tmp_path / "a" / "*.tar") + "::" + str(tmp_path / "b")):
        info = get_image_dataset(pattern, batch_size=4, view_size=VIEW)
        assert info.dataloader.num_samples == 12  # sizes.json of both directories
        assert sorted(_keys(_run(info))) == sorted(a["keys"] + b["keys"])


def test_len_file_gives_the_size(tmp_path):
    data = write_image_shards(str(tmp_path), 2, 4, write_sizes=False)
    (tmp_path / "__len__").write_text("8")
    assert get_image_dataset(data["pattern"], batch_size=4, view_size=VIEW).dataloader.num_batches == 2


def test_usage_errors(tmp_path, shards):
    with pytest.raises(DistillUsageError, match="--train-images"):
        get_image_dataset("", batch_size=4, view_size=VIEW)
    with pytest.raises(DistillUsageError, match="--train-images.*nothere"):
        get_image_dataset(str(tmp_path / "nothere-{0..3}.tar"), batch_size=4, view_size=VIEW)
    with pytest.raises(DistillUsageError, match="--train-images"):
        get_image_dataset(str(tmp_path / "*.tar"), batch_size=4, view_size=VIEW)
    unsized = write_image_shards(str(tmp_path / "u"), 2, 4, write_sizes=False)
    with pytest.raises(DistillUsageError, match="--train-num-samples"):
        get_image_dataset(unsized["pattern"], batch_size=4, view_size=VIEW)
    assert get_image_dataset(unsized["pattern"], batch_size=4, view_size=VIEW,
                             num_samples=8).dataloader.num_batches == 2
    with pytest.raises(DistillUsageError, match="--workers"):
        get_image_dataset(unsized["pattern"], batch_size=4, view_size=VIEW, num_samples=8, workers=4)
    with pytest.raises(DistillUsageError, match="--batch-size"):
        get_image_dataset(shards["pattern"], batch_size=0, view_size=VIEW)
    with pytest.raises(DistillUsageError, match="--train-data"):
        get_paired_dataset(str(tmp_path / "missing.tar"), batch_size=4, view_size=VIEW)


def test_paired_batches_keep_captions_with_their_images(tmp_path):
    empty = ["shard000_0002"]
    data = write_image_shards(str(tmp_path), 2, 8, captions=True, empty_captions=empty)
    with tarfile.open(data["shards"][1], "a") as tf:  # an image without caption
        img = io.BytesIO()
        Image.new("RGB", (20, 20)).save(img, format="PNG")
        info = tarfile.TarInfo("nocap_0001.png")
        info.size = len(img.getvalue())
        tf.addfile(info, io.BytesIO(img.getvalue()))
    counters = SkipCounters()
    info = get_paired_dataset(data["pattern"], batch_size=3, view_size=VIEW, num_samples=15, counters=counters)
    batches = _run(info)
    assert len(batches) == 5
    seen = set()
    for b in batches:
        assert set(b) == {"image", "view", "key", "text"}
        assert len(b["text"]) == len(b["key"]) == b["image"].shape[0] == 3
        for key, text in zip(b["key"], b["text"]):
            assert text == data["captions"][key].strip() and text
            seen.add(key)
    assert seen == set(data["keys"]) - set(empty)
    snap = counters.snapshot()
    assert snap["empty_text"] >= 1 and snap["missing_text"] >= 1
