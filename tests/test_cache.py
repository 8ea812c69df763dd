"""Precomputed teacher-embedding cache: build (python -m openclip_distill.cache) and replay (--teacher-cache)."""
import io
import os
import runpy
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import openclip_distill  # noqa: F401  (registers the test model configs)
from openclip_distill import create_distill_loss
from openclip_distill.cache import (adopt_cached_text_tower, build_main, chosen_augmentation,
                                    get_cached_unpaired_data, load_cached_text_tower, load_manifest,
                                    read_cache_shard, read_text_chunk)
from openclip_distill.cache import build as build_module
from toy_data import write_image_shards, write_text_file
from openclip_distill.data.loader_spec import LoaderSpec
from openclip_distill.data.views import apply_view
from openclip_distill.errors import DistillUsageError
from openclip_distill.models.text_tower import adopt_text_tower, text_tower_keys
from openclip_distill.task import create_task
from openclip_distill.teachers import create_teacher
from openclip_distill.teachers.open_clip_teacher import OpenCLIPTeacher
from openclip_distill.teachers.open_clip_teacher import create_frozen_open_clip as create_frozen_model

from numerics import assert_close_in_norm, assert_rows_close_in_norm, rounding_tolerance

TEACHER, STUDENT = "test-tiny-teacher", "test-tiny-student"
K = 3
VIEW = 32
# Cached vs live teacher embeddings, one unit-norm row each, compared row by row relative to its norm:
# fp32 rounding of two computations in other batch compositions (the longest accumulation: the teacher's
# MLP hidden width 4 x 64), plus for an fp16 cache the storage rounding, <= 2^-11 of each entry.
FP32_TOL = rounding_tolerance(torch.float32, terms=256)
FP16_TOL = FP32_TOL + 2.0 ** -11
SENTENCES = [f"a sentence about thing number {i}" for i in range(23)]
JSONL_SENTENCES = [f"json sentence {i}\nwith a newline" for i in range(6)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CPU: intra-op threads only add contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    images = write_image_shards(str(root / "imgs"), 3, 4)
    # a second source whose keys repeat the first one's: uids must stay unique
    other = write_image_shards(str(root / "more"), 1, 4, seed=7)
    txt = write_text_file(str(root / "a.txt"), SENTENCES[:15] + ["   "] + SENTENCES[15:])
    jsonl = write_text_file(str(root / "b.jsonl"), JSONL_SENTENCES)
    torch.manual_seed(123)
    teacher, _, _ = create_frozen_model(TEACHER, None, device="cpu")
    weights = str(root / "teacher.pt")
    torch.save(teacher.state_dict(), weights)
    return {"root": root, "images": images["pattern"] + "::" + str(root / "more" / "shard-00000.tar"),
            "keys": images["keys"] + other["keys"], "texts": f"{txt}::{jsonl}", "weights": weights,
            "sentences": SENTENCES + JSONL_SENTENCES}


def build_argv(world, out, **over):
    flags = {"--distill-teacher": TEACHER, "--distill-teacher-pretrained": world["weights"],
             "--train-images": world["images"], "--train-texts": world["texts"], "--out": str(out),
             "--cache-augmentations": str(K), "--aug-cfg": "scale=(0.3,1.0)\x00hflip=0.5", "--batch-size": "7",
             "--text-chunk-size": "8", "--workers": "0", "--device": "cpu", "--seed": "0"}
    flags.update(over)
    argv = []
    for k, v in flags.items():
        if v is not None:
            argv += [k, *v.split("\x00")]
    return argv


def build(world, out, **over):
    rc = build_main(build_argv(world, out, **over))
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def cache16(world):
    return build(world, world["root"] / "c16")


@pytest.fixture(scope="module")
def cache32(world):
    return build(world, world["root"] / "c32", **{"--cache-dtype": "fp32"})


@pytest.fixture(scope="module")
def models(world):
    teacher = create_teacher(TEACHER, world["weights"], device="cpu")
    torch.manual_seed(0)
    student, _, s_tok = create_frozen_model(STUDENT, None, device="cpu", flag="--model")
    loss = create_distill_loss("dime-fm")
    live = create_task(student, s_tok, loss, teacher)
    return {"teacher": teacher, "student": student, "loss": loss, "live": live, "s_tok": s_tok}


def loader_args(cache, **kw):
    base = dict(teacher_cache=cache, batch_size=4, text_batch_size=5, seed=0, workers=0, train_num_samples=None,
                world_size=1, rank=0, dataset_resampled=False, distill_teacher=TEACHER)
    base.update(kw)
    return LoaderSpec(**base)


def epoch_batches(cache, epoch, view=VIEW, **kw):
    loader = get_cached_unpaired_data(loader_args(cache, **kw), view)
    loader.set_epoch(epoch)
    return list(loader)


def all_records(cache):
    manifest = load_manifest(cache)
    out = {}
    for shard in manifest["image_shards"]:
        stem = os.path.splitext(os.path.basename(shard["cache"]))[0]
        for key, rec in read_cache_shard(os.path.join(cache, shard["cache"])).items():
            uid = f"{stem}/{key}"
            assert uid not in out
            out[uid] = dict(rec, key=key, source=shard["source"])
    return out


def source_image(source, key):
    with tarfile.open(source) as tf:
        data = tf.extractfile(f"{key}.png").read()
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ------------------------------------------------------------------------------------------------
# (a) (e) cached embeddings == the live teacher on the same views / sentences


@pytest.mark.parametrize("which", ["fp16", "fp32"])
def test_image_and_text_embeddings_equal_live_teacher(world, models, cache16, cache32, which):
    cache = cache16 if which == "fp16" else cache32
    tol = FP32_TOL if which == "fp32" else FP16_TOL
    manifest = load_manifest(cache)
    assert manifest["dtype"] == which and manifest["embed_dim"] == 32 and manifest["augmentations"] == K
    assert manifest["logit_scale"] == pytest.approx(models["teacher"].logit_scale, abs=0)
    seen = 0
    for epoch in (0, 1):
        for batch in epoch_batches(cache, epoch):
            live = models["live"].teacher_outputs(batch, batch["image"])
            assert batch["dist_image_features"].dtype == torch.float32
            for k in ("dist_image_features", "dist_text_features"):
                assert_rows_close_in_norm(batch[k], live[k], tol, k)
            seen += len(batch["key"])
    assert seen == 2 * manifest["num_images"]
    # every stored view of every image, not only the ones the loader picked
    records = all_records(cache)
    views = torch.stack([apply_view(source_image(r["source"], r["key"]), torch.from_numpy(r["views"][k]), VIEW)
                         for r in records.values() for k in range(K)])
    live = models["live"].teacher_outputs({"text": ["x"]}, views)["dist_image_features"]
    stored = torch.from_numpy(np.concatenate([r["emb"] for r in records.values()]).astype(np.float32))
    assert_rows_close_in_norm(stored, live, tol, "stored views")


def test_text_cache_is_the_whole_corpus_in_order(world, models, cache16):
    manifest = load_manifest(cache16)
    texts, embs = [], []
    for chunk in manifest["text_chunks"]:
        t, e = read_text_chunk(os.path.join(cache16, chunk["embeddings"]), os.path.join(cache16, chunk["sentences"]))
        assert len(t) == chunk["num_sentences"] <= 8
        texts += t
        embs.append(np.asarray(e, dtype=np.float32))
    assert texts == world["sentences"]  # streamed in order, the whitespace line skipped (and counted)
    assert manifest["num_sentences"] == len(texts) and manifest["skipped_texts"] == {"empty_text": 1}
    live = models["live"].teacher_outputs({"text": texts}, torch.zeros(1, 3, VIEW, VIEW))["dist_text_features"]
    assert_rows_close_in_norm(torch.from_numpy(np.concatenate(embs)), live, FP16_TOL, "sentences")


def test_text_stream_resamples_and_shuffles(cache16, world):
    n = len(world["sentences"])
    batches = epoch_batches(cache16, 0, text_batch_size=11, text_shuffle_buffer=1)  # passes, no buffer
    texts = [t for b in batches for t in b["text"]]
    assert len(batches) == 4 and len(texts) == 44  # images define the epoch: more sentences than the corpus
    assert sorted(texts[:n]) == sorted(world["sentences"])  # a pass holds every sentence once ...
    assert texts[:n] != world["sentences"] and texts[n:] != texts[:44 - n]  # ... in a new random order
    batches = epoch_batches(cache16, 0, text_batch_size=11)
    texts = [t for b in batches for t in b["text"]]
    assert set(texts) <= set(world["sentences"]) and len(set(texts)) > n // 2
    again = epoch_batches(cache16, 0, text_batch_size=11)
    assert [b["text"] for b in again] == [b["text"] for b in batches]
    assert [b["text"] for b in epoch_batches(cache16, 1, text_batch_size=11)] != [b["text"] for b in batches]


# ------------------------------------------------------------------------------------------------
# (b) (g) replayed views, K distinct augmentations, deterministic choice per epoch


def test_replayed_view_is_apply_view_of_a_stored_augmentation(cache16):
    records = all_records(cache16)
    for epoch in (0, 4):
        for batch in epoch_batches(cache16, epoch):
            for i, uid in enumerate(batch["key"]):
                rec = records[uid]
                k = chosen_augmentation(0, epoch, uid, K)
                assert batch["view"][i].tolist() == rec["views"][k].tolist()
                expected = apply_view(source_image(rec["source"], rec["key"]), batch["view"][i], VIEW)
                assert torch.equal(batch["image"][i], expected)
                assert torch.equal(batch["dist_image_features"][i], torch.from_numpy(rec["emb"][k].astype(np.float32)))


def test_augmentations_differ_and_choice_is_deterministic(cache16, world):
    records = all_records(cache16)
    assert len(records) == len(world["keys"]) == 16  # same __key__ in two sources: still two entries
    for rec in records.values():
        params = [tuple(v) for v in rec["views"].tolist()]
        assert len(set(params)) == K, params
        emb = rec["emb"].astype(np.float32)
        assert all(np.abs(emb[a] - emb[b]).max() > 1e-3 for a in range(K) for b in range(a + 1, K))
    assert any(rec["views"][:, 4].any() for rec in records.values())  # hflip=0.5 was stored
    by_key = {}
    for rec in records.values():  # equal __key__ and image size in both sources: seeds differ by source
        by_key.setdefault(rec["key"], []).append(rec["views"])
    twins = [v for v in by_key.values() if len(v) == 2]
    assert len(twins) == 4 and all(not np.array_equal(a, b) for a, b in twins)

    def choices(epoch, **kw):
        return {uid: tuple(v.tolist()) for b in epoch_batches(cache16, epoch, **kw)
                for uid, v in zip(b["key"], b["view"])}

    first = choices(0)
    assert choices(0) == first  # deterministic (a fresh loader)
    assert choices(0, workers=2) == first  # independent of the worker count
    per_epoch = [first] + [choices(e) for e in range(1, K)]
    assert any(per_epoch[1][u] != first[u] for u in first)
    for uid, rec in records.items():  # every stored augmentation once per K epochs
        assert sorted(p[uid] for p in per_epoch) == sorted(tuple(v) for v in rec["views"].tolist())
    other_seed = choices(0, seed=1)
    assert other_seed != first and set(other_seed) == set(first)


# ------------------------------------------------------------------------------------------------
# (c) resume, (d) sharding


def _mtimes(cache):
    d = os.path.join(cache, "images")
    return {n: os.stat(os.path.join(d, n)).st_mtime_ns for n in sorted(os.listdir(d))}


def test_resume_skips_finished_shards_and_ignores_temp_files(world, cache16, monkeypatch):
    out = world["root"] / "resume"
    committed = []
    real_images, real_commit = OpenCLIPTeacher.encode_image, build_module._ShardWriter.commit

    def commit(self, *a, **kw):
        real_commit(self, *a, **kw)
        committed.append(self.job["tar"])

    def images(self, views):
        if committed:  # the first shard is written, then the run dies in the middle of the second
            raise RuntimeError("simulated crash")
        return real_images(self, views)

    monkeypatch.setattr(build_module._ShardWriter, "commit", commit)
    monkeypatch.setattr(OpenCLIPTeacher, "encode_image", images)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_main(build_argv(world, out))
    monkeypatch.undo()
    images = os.path.join(out, "images")
    done = sorted(n for n in os.listdir(images) if n.endswith(".tar"))
    assert len(done) == 1 and not [n for n in os.listdir(images) if ".tmp" in n]  # partial shard cleaned up
    with pytest.raises(DistillUsageError, match="--teacher-cache"):
        load_manifest(str(out))  # unfinished: no manifest
    # a temp file left by a killed process (no cleanup) must be ignored, and the shard built anyway
    stem = next(s["cache"][len("images/"):-4] for s in load_manifest(cache16)["image_shards"]
                if not s["cache"].endswith(done[0]))
    with open(os.path.join(images, f"{stem}.tar.tmp99999"), "wb") as f:
        f.write(b"half a tar")
    before = _mtimes(str(out))
    build(world, out)
    after = _mtimes(str(out))
    assert after[done[0]] == before[done[0]]  # finished shard skipped
    assert not [n for n in after if ".tmp" in n]
    assert load_manifest(str(out))["num_images"] == 16
    for name in after:  # deterministic: the resumed cache equals an uninterrupted one
        with open(os.path.join(images, name), "rb") as a, open(os.path.join(cache16, "images", name), "rb") as b:
            assert a.read() == b.read(), name
    # a complete cache: a rerun rewrites nothing
    build(world, out)
    assert _mtimes(str(out)) == after


def test_two_way_sharding_covers_every_image_once(world, cache16):
    out = world["root"] / "sharded"
    build(world, out, **{"--num-shards": "2", "--shard-index": "1"})
    with pytest.raises(DistillUsageError, match="--teacher-cache"):
        load_manifest(str(out))  # half done
    first = {n for n in os.listdir(os.path.join(out, "images")) if n.endswith(".tar")}
    texts_first = sorted(os.listdir(os.path.join(out, "texts")))
    assert len(first) == 2 and texts_first == ["000001.jsonl", "000001.npy", "000003.jsonl", "000003.npy"]
    build(world, out, **{"--num-shards": "2", "--shard-index": "0"})
    manifest = load_manifest(str(out))
    assert len(manifest["image_shards"]) == 4 and len(manifest["text_chunks"]) == 4
    records = all_records(str(out))
    assert len(records) == manifest["num_images"] == 16
    assert sorted(r["key"] for r in records.values()) == sorted(world["keys"])
    reference = all_records(cache16)
    assert set(records) == set(reference)
    for uid in records:  # same seeds -> same views whichever process built them
        assert np.array_equal(records[uid]["views"], reference[uid]["views"])
    # torchrun-style environment
    env_out = world["root"] / "sharded-env"
    os.environ.update(RANK="1", WORLD_SIZE="2")
    try:
        build(world, env_out)
    finally:
        del os.environ["RANK"], os.environ["WORLD_SIZE"]
    assert {n for n in os.listdir(os.path.join(env_out, "images")) if n.endswith(".tar")} == first


# ------------------------------------------------------------------------------------------------
# text tower and the plug-in features


def test_text_tower_and_cached_features(world, models, cache32):
    sd = torch.load(os.path.join(cache32, "teacher_text_tower.pt"), weights_only=True)
    teacher = models["teacher"].model
    assert set(sd) == set(text_tower_keys(teacher)) | {"logit_scale"}
    for k, v in sd.items():
        assert torch.equal(v, teacher.state_dict()[k])
    assert set(load_cached_text_tower(cache32)) == set(sd)
    a, _, _ = create_frozen_model(STUDENT, None, device="cpu", flag="--model")
    b, _, _ = create_frozen_model(STUDENT, None, device="cpu", flag="--model")
    tower = models["teacher"].text_tower_state_dict()
    assert adopt_cached_text_tower(a, cache32, STUDENT) == adopt_text_tower(b, tower, STUDENT, TEACHER)
    for k in list(sd):
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])

    loader = get_cached_unpaired_data(loader_args(cache32), VIEW)
    cached = create_task(models["student"], models["s_tok"], models["loss"], cached_logit_scale=loader.logit_scale,
                         cached_logit_bias=loader.logit_bias)
    loader.set_epoch(0)
    batch = next(iter(loader))
    got, want = cached(batch), models["live"](batch)
    assert set(got) == set(want)
    for k in want:  # the student's own outputs are computed identically; the teacher's come from the cache
        if want[k] is None:
            assert got[k] is None, k
        elif want[k].ndim == 2:
            assert_rows_close_in_norm(got[k], want[k], FP32_TOL, k)
        else:
            assert_close_in_norm(got[k], want[k], FP32_TOL, k)
    with pytest.raises(KeyError):  # cached targets come with the batch only
        cached.teacher_outputs({"text": batch["text"]}, batch["image"])


# ------------------------------------------------------------------------------------------------
# (f) bad input: one-line errors naming the flag


def _one_line(text):
    return "\n" not in str(text).strip()


@pytest.mark.parametrize("over, needle", [
    ({"--cache-augmentations": "0"}, "--cache-augmentations"),
    ({"--cache-augmentations": None}, "--cache-augmentations"),
    ({"--out": None}, "--out"),
    ({"--train-images": "/nonexistent/shard-{00000..00003}.tar"}, "--train-images"),
    ({"--train-texts": "/nonexistent/*.txt"}, "--train-texts"),
    ({"--distill-teacher": "ViT-Q-99"}, "--distill-teacher"),
    ({"--distill-teacher-pretrained": "/nonexistent/teacher.pt"}, "--distill-teacher-pretrained"),
    ({"--aug-cfg": "color_jitter=0.4"}, "--aug-cfg"),
    ({"--aug-cfg": "scale=(1.5,0.5)"}, "--aug-cfg"),
    ({"--view-size": "0"}, "--view-size"),
    ({"--num-shards": "2", "--shard-index": "2"}, "--shard-index"),
    ({"--cache-dtype": "int8"}, "--cache-dtype"),
])
def test_build_bad_input(world, capsys, over, needle):
    rc = build_main(build_argv(world, world["root"] / "bad", **over))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and needle in last and "Traceback" not in err, err


def test_build_refuses_a_cache_with_other_settings(world, cache16, capsys):
    rc = build_main(build_argv(world, cache16, **{"--cache-augmentations": "5"}))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "--out" in last and "augmentations" in last
    not_a_dir = world["root"] / "file"
    not_a_dir.write_text("x")
    assert build_main(build_argv(world, not_a_dir)) == 2
    assert "--out" in capsys.readouterr().err


def test_loader_bad_input(world, cache16, tmp_path):
    cases = [loader_args(None), loader_args(str(tmp_path / "nope")), loader_args(str(tmp_path))]
    for args in cases:
        with pytest.raises(DistillUsageError) as err:
            get_cached_unpaired_data(args, VIEW)
        assert "--teacher-cache" in str(err.value) and _one_line(err.value)
    with pytest.raises(DistillUsageError, match="--teacher-cache.*48 px.*--view-size 48") as err:
        get_cached_unpaired_data(loader_args(cache16), 48)
    assert _one_line(err.value)
    with pytest.raises(DistillUsageError, match="--teacher-cache.*ViT-B-32") as err:
        get_cached_unpaired_data(loader_args(cache16, distill_teacher="ViT-B-32"), VIEW)
    # a cache missing one of its files, and one whose source shards were moved
    broken = str(tmp_path / "broken")
    shutil.copytree(cache16, broken)
    os.remove(os.path.join(broken, "texts", "000001.npy"))
    with pytest.raises(DistillUsageError, match="--teacher-cache.*missing") as err:
        get_cached_unpaired_data(loader_args(broken), VIEW)
    assert _one_line(err.value)
    moved = str(tmp_path / "moved")
    shutil.copytree(world["root"] / "more", moved)
    shutil.rmtree(world["root"] / "more")
    try:
        with pytest.raises(DistillUsageError, match="--teacher-cache.*source image shard") as err:
            get_cached_unpaired_data(loader_args(cache16), VIEW)
        assert _one_line(err.value)
    finally:
        shutil.copytree(moved, world["root"] / "more")


def test_cli_entry_point(world, cache16, monkeypatch, capsys):
    """``python -m openclip_distill.cache`` (run in-process: a fresh interpreter costs seconds)."""
    monkeypatch.setattr(sys, "argv", ["openclip_distill.cache", *build_argv(world, cache16, **{"--view-size": "-3"})])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("openclip_distill.cache", run_name="__main__", alter_sys=True)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "--view-size" in err, err
