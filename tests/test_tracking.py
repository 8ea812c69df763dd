"""--report-to: the tracker sends TensorBoard and W&B the same scalars (fake backends record the calls), a
missing wandb is a one-line error, and a CLI run logs to a real W&B run in WANDB_MODE=offline."""
import glob
import json
import os
import subprocess
import sys
import types

import pytest

from openclip_distill.errors import DistillUsageError
from openclip_distill.tracking import Tracker, create_tracker, reports_to


class FakeWriter:
    def __init__(self):
        self.calls, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))

    def close(self):
        self.closed = True


def fake_wandb():
    mod = types.SimpleNamespace(inits=[], logs=[], finished=False)
    mod.init = lambda **kw: mod.inits.append(kw)
    mod.log = lambda data, step=None: mod.logs.append((dict(data), step))

    def finish():
        mod.finished = True
    mod.finish = finish
    return mod


def _args(tmp_path, report_to, resume=None):
    return types.SimpleNamespace(report_to=report_to, logs=str(tmp_path), name="run", save_logs=True,
                                 wandb_project_name="proj", wandb_notes="n", resume=resume)


def test_tracker_sends_both_backends_the_same_scalars():
    tb, wb = FakeWriter(), fake_wandb()
    tr = Tracker(tb, wb)
    sent = [("train/loss", 2.5, 0), ("train/lr", 1e-3, 0), ("train/loss", 1.5, 10), ("val/zeroshot_top1", 0.25, 1),
            ("train/loss", 1.0, 20), ("val/zeroshot_top1", 0.5, 2)]
    for tag, v, step in sent:
        tr.add_scalar(tag, v, step)
    tr.close()
    assert tb.calls == sent and tb.closed and wb.finished
    # W&B: train/* at their step; val/* with the epoch, at the latest train step (steps never go back)
    assert wb.logs == [({"train/loss": 2.5, "step": 0}, 0), ({"train/lr": 1e-3, "step": 0}, 0),
                       ({"train/loss": 1.5, "step": 10}, 10), ({"val/zeroshot_top1": 0.25, "epoch": 1}, 10),
                       ({"train/loss": 1.0, "step": 20}, 20), ({"val/zeroshot_top1": 0.5, "epoch": 2}, 20)]
    steps = [s for _, s in wb.logs]
    assert steps == sorted(steps)


def test_create_tracker_wandb_init_like_openclip(tmp_path, monkeypatch):
    wb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wb)
    args = _args(tmp_path, "wandb", resume="/x/epoch_1.pt")
    tr = create_tracker(args)
    assert tr.wandb is wb and tr.tensorboard is None
    (kw,) = wb.inits
    assert kw["project"] == "proj" and kw["name"] == kw["id"] == "run" and kw["notes"] == "n"
    assert kw["resume"] == "allow" and kw["config"]["wandb_project_name"] == "proj"
    assert kw["dir"] == os.path.join(str(tmp_path), "run")
    assert create_tracker(_args(tmp_path, "")) is None
    assert create_tracker(args, is_master=False) is None
    assert reports_to(_args(tmp_path, "all"), "wandb") and reports_to(_args(tmp_path, "tensorboard,wandb"), "wandb")


def test_missing_wandb_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(DistillUsageError, match="--report-to wandb") as e:
        create_tracker(_args(tmp_path, "wandb"))
    assert "pip install" in str(e.value) and "\n" not in str(e.value)


def test_cli_logs_to_wandb_offline(tiny_corpus, tmp_path):
    pytest.importorskip("wandb")
    args = ["--distill-teacher", "test-tiny-teacher", "--model", "test-tiny-student",
            "--train-images", tiny_corpus["images"], "--train-texts", tiny_corpus["texts"],
            "--eval-data", tiny_corpus["eval"], "--batch-size", "8", "--epochs", "1", "--lr", "1e-3",
            "--warmup", "1", "--precision", "fp32", "--workers", "0", "--logs", str(tmp_path), "--name", "wb",
            "--device", "cpu", "--report-to", "wandb", "--wandb-project-name", "distill-test",
            "--log-every-n-steps", "1"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_cfg"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}
    res = subprocess.run([sys.executable, "-m", "openclip_distill.main", *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*-wb" / "run-wb.wandb"))
    assert len(runs) == 1, os.listdir(tmp_path / "wb")
    blob = open(runs[0], "rb").read()
    # the record stream holds the same scalar names as TensorBoard gets, and the run's config
    losses = json.loads((tmp_path / "wb" / "losses.jsonl").read_text().splitlines()[0])
    for tag in [f"train/{k}" for k in losses if k not in ("epoch", "step")] + ["train/lr", "val/zeroshot_top1"]:
        assert tag.encode() in blob, tag
    assert b"distill-test" in blob and b"wandb_project_name" in blob
