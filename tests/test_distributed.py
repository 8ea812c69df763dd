"""torchrun with 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 (same trajectory as DDP,
resume, export), and evaluation under ZeRO-3 without deadlock."""
import json
import os
import shutil
import socket
import subprocess
import sys

import open_clip
import pytest
import torch

import openclip_distill  # noqa: F401

from numerics import assert_rows_close_in_norm, relative_error, rounding_tolerance

pytest.importorskip("deepspeed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ZeRO and DDP runs compute the same steps with other roundings (ZeRO-3 runs the linear layers through
# its own autograd function): features differ by fp32 rounding of two computations (the longest
# accumulation the teacher's MLP hidden width 4 x 64), which DIME-FM's logit scale 100 amplifies at most
# 100x in the losses and updates. The weights themselves are not compared: AdamW turns rounding noise in
# gradients that are zero in exact arithmetic (an attention key bias: the softmax ignores it) into
# lr-sized steps in directions the model does not depend on; what the trained models compute is compared.
TRAJECTORY_TOL = rounding_tolerance(torch.float32, terms=256, amplification=100)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(corpus, logs, name, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "openclip_distill.main", "--",
           "--distill-teacher", "test-tiny-teacher", "--model", "test-tiny-student",
           "--train-images", corpus["images"], "--train-texts", corpus["texts"], "--batch-size", "4",
           "--epochs", "2", "--lr", "1e-3", "--warmup", "2", "--precision", "fp32", "--workers", "0",
           "--logs", str(logs), "--name", name, "--device", "cpu", "--seed", "1",
           "--distill-loss-kwargs", "udist_weight=0.2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def losses(run_dir):
    with open(os.path.join(run_dir, "losses.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def ddp_run(tiny_corpus, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ddp")
    torchrun(tiny_corpus, logs, "ddp")
    return logs / "ddp"


def same_losses(expected, got, tol):
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for a, b in zip(expected, got):
        assert abs(a["loss"] - b["loss"]) <= tol * abs(a["loss"]), (a, b)


def encoded(checkpoint):
    """The checkpoint's normalised image and text features on fixed inputs."""
    model, _, _ = open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(checkpoint))
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = open_clip.get_tokenizer("test-tiny-student")([f"a {c} square" for c in ("red", "green", "blue")])
    with torch.no_grad():
        return model.eval().encode_image(images, normalize=True), model.encode_text(texts, normalize=True)


def assert_same_function(checkpoint, reference):
    got, want = encoded(checkpoint), encoded(reference)
    for a, b, what in zip(got, want, ("image", "text")):
        assert_rows_close_in_norm(a, b, TRAJECTORY_TOL, f"{checkpoint} vs {reference}: {what} features")


def zero3_config(tmp_path):
    with open(os.path.join(ROOT, "configs", "deepspeed", "zero3.json")) as f:
        cfg = json.load(f)
    # partition even the tiny test model's parameters (by default small ones stay whole on every rank)
    cfg["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    path = tmp_path / "zero3_partitioned.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_ddp_trains_and_writes_an_openclip_checkpoint(ddp_run):
    rows = losses(ddp_run)
    assert [r["step"] for r in rows] == list(range(12))  # 48 images / (4 per rank x 2 ranks) x 2 epochs
    # an epoch of training moves the features far more than the tolerance the ZeRO runs are held to
    moved = encoded(ddp_run / "checkpoints" / "epoch_1.pt")[0], encoded(ddp_run / "checkpoints" / "epoch_2.pt")[0]
    assert min(relative_error(a, b) for a, b in zip(*moved)) > 10 * TRAJECTORY_TOL


def test_zero2_matches_ddp_and_exports(ddp_run, tiny_corpus, tmp_path):
    torchrun(tiny_corpus, tmp_path, "z2", "--deepspeed", os.path.join(ROOT, "configs", "deepspeed", "zero2.json"))
    same_losses(losses(ddp_run), losses(tmp_path / "z2"), TRAJECTORY_TOL)
    ckpt = tmp_path / "z2" / "checkpoints" / "epoch_2.pt"
    assert_same_function(ckpt, ddp_run / "checkpoints" / "epoch_2.pt")
    out = tmp_path / "exported.pt"
    res = subprocess.run([sys.executable, "-m", "openclip_distill.export", "--checkpoint",
                          str(tmp_path / "z2" / "checkpoints"), "--model", "test-tiny-student", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    exported = torch.load(out, weights_only=True)
    assert exported["epoch"] == 2
    plain = torch.load(ckpt, weights_only=True)["state_dict"]
    for k, v in exported["state_dict"].items():  # the same fp32 weights, copied
        assert torch.equal(v, plain[k].reshape(v.shape)), k
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(out))


def test_zero3_matches_ddp_evaluates_and_resumes(ddp_run, tiny_corpus, tmp_path):
    cfg = zero3_config(tmp_path)
    torchrun(tiny_corpus, tmp_path, "z3", "--deepspeed", cfg, "--eval-data", tiny_corpus["eval"],
             "--zeroshot-frequency", "1")
    full = losses(tmp_path / "z3")
    same_losses(losses(ddp_run), full, TRAJECTORY_TOL)
    assert_same_function(tmp_path / "z3" / "checkpoints" / "epoch_2.pt", ddp_run / "checkpoints" / "epoch_2.pt")
    results = [json.loads(x) for x in (tmp_path / "z3" / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2]  # evaluated each epoch under ZeRO-3, no deadlock

    # interrupt after epoch 1: drop what epoch 2 wrote, then --resume latest
    run = tmp_path / "z3"
    cut = tmp_path / "cut"
    shutil.copytree(run, cut / "z3")
    ck = cut / "z3" / "checkpoints"
    os.remove(ck / "epoch_2.pt")
    shutil.rmtree(ck / "deepspeed" / "epoch_2")
    (ck / "deepspeed" / "latest").write_text("epoch_1")
    with open(cut / "z3" / "losses.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in full if r["epoch"] == 0)
    torchrun(tiny_corpus, cut, "z3", "--deepspeed", cfg, "--resume", "latest")
    resumed = losses(cut / "z3")
    assert [r["step"] for r in resumed] == list(range(12))
    # a replay: the same computations in the same order, so bit for bit the same
    assert [r["loss"] for r in resumed[6:]] == [r["loss"] for r in full[6:]]
    a = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    b = torch.load(ck / "epoch_2.pt", weights_only=True)["state_dict"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
