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

pytest.importorskip("deepspeed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ddp_run / "checkpoints" / "epoch_2.pt"))


def test_zero2_matches_ddp_and_exports(ddp_run, tiny_corpus, tmp_path):
    torchrun(tiny_corpus, tmp_path, "z2", "--deepspeed", os.path.join(ROOT, "configs", "deepspeed", "zero2.json"))
    for a, b in zip(losses(ddp_run), losses(tmp_path / "z2")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    ckpt = tmp_path / "z2" / "checkpoints" / "epoch_2.pt"
    model, _, _ = open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt))
    ddp_sd = torch.load(ddp_run / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ddp_sd[k].reshape(v.shape), rtol=1e-3, atol=1e-5)
    out = tmp_path / "exported.pt"
    res = subprocess.run([sys.executable, "-m", "openclip_distill.export", "--checkpoint",
                          str(tmp_path / "z2" / "checkpoints"), "--model", "test-tiny-student", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    exported = torch.load(out, weights_only=True)
    assert exported["epoch"] == 2
    plain = torch.load(ckpt, weights_only=True)["state_dict"]
    for k, v in exported["state_dict"].items():
        torch.testing.assert_close(v, plain[k].reshape(v.shape))
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(out))


def test_zero3_matches_ddp_evaluates_and_resumes(ddp_run, tiny_corpus, tmp_path):
    cfg = zero3_config(tmp_path)
    torchrun(tiny_corpus, tmp_path, "z3", "--deepspeed", cfg, "--eval-data", tiny_corpus["eval"],
             "--zeroshot-frequency", "1")
    full = losses(tmp_path / "z3")
    for a, b in zip(losses(ddp_run), full):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
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
    for a, b in zip(full[6:], resumed[6:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    a = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    b = torch.load(ck / "epoch_2.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
