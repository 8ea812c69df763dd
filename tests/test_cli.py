"""The CLI end to end: a run that writes checkpoints OpenCLIP loads, resume, bad input, NaN losses."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import open_clip
import pytest
import torch

import openclip_distill
from openclip_distill import main as distill_main
from openclip_distill import register_loss

from conftest import write_tar


def base_args(corpus, logs, name, *extra):
    return ["--distill-teacher", "test-tiny-teacher", "--model", "test-tiny-student",
            "--train-images", corpus["images"], "--train-texts", corpus["texts"],
            "--batch-size", "8", "--epochs", "2", "--lr", "1e-3", "--warmup", "2", "--precision", "fp32",
            "--workers", "0", "--logs", str(logs), "--name", name, "--device", "cpu", "--seed", "3",
            *extra]


def run_cli(args, env=None, timeout=240):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "openclip_distill.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_cli_in_process(args):
    """The CLI in this process, for runs that must stop on bad input before training (no interpreter
    start-up, ~10 s each on a loaded 2-core machine). The subprocess path (``run_cli``) stays for runs
    that train and for ``tests/test_bad_input.py``, which checks what a user's terminal shows."""
    from openclip_distill.demo.teacher import preserve_logging
    from openclip_distill.main import main

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    with preserve_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    torch.set_num_threads(threads)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def interrupted_copy(run_dir, dest, finished_epochs):
    """A copy of ``run_dir`` at ``dest`` as if the run had stopped after ``finished_epochs`` epochs: the
    next epoch's checkpoint removed and ``losses.jsonl`` cut back; returns the full run's losses."""
    shutil.copytree(run_dir, dest)
    os.remove(dest / "checkpoints" / f"epoch_{finished_epochs + 1}.pt")
    full = read_losses(run_dir / "losses.jsonl")
    with open(dest / "losses.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in full if r["epoch"] < finished_epochs)
    return full


def read_losses(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    res = run_cli(base_args(tiny_corpus, logs, "run", "--eval-data", tiny_corpus["eval"]))
    assert res.returncode == 0, res.stderr[-3000:]
    return logs / "run", res


def test_cli_run_writes_checkpoint_that_openclip_loads(finished_run):
    run_dir, res = finished_run
    ckpt_path = run_dir / "checkpoints" / "epoch_2.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 12 and ckpt["name"] == "run"
    model, _, preprocess = open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt_path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][k])
    # the student was trained: its image tower moved away from a fresh init with the same seed
    losses = read_losses(run_dir / "losses.jsonl")
    assert len(losses) == 12 and all(set(r) >= {"vl_loss", "pvl_loss", "udist_loss", "loss"} for r in losses)
    assert "Train Epoch: 1" in (run_dir / "out.log").read_text()
    results = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert results[-1]["epoch"] == 2 and 0.0 <= results[-1]["zeroshot_top1"] <= 1.0


def test_student_reuses_frozen_teacher_text_tower(finished_run):
    run_dir, _ = finished_run
    sd = torch.load(run_dir / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    sd1 = torch.load(run_dir / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(sd["token_embedding.weight"], sd1["token_embedding.weight"])
    torch.testing.assert_close(sd["text_projection"], sd1["text_projection"])
    assert not torch.equal(sd["visual.proj"], sd1["visual.proj"])


def test_resume_latest_reproduces_the_uninterrupted_run(finished_run, tiny_corpus, tmp_path):
    run_dir, _ = finished_run
    # an "interrupted" copy: epoch 2 never finished
    cut = tmp_path / "run"
    full = interrupted_copy(run_dir, cut, 1)
    res = run_cli(base_args(tiny_corpus, tmp_path, "run", "--eval-data", tiny_corpus["eval"], "--resume", "latest"))
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_losses(cut / "losses.jsonl")
    assert [r["step"] for r in resumed] == list(range(12))
    # a replay (same process settings, same computations in the same order): bit for bit the same
    assert [r["loss"] for r in resumed[6:]] == [r["loss"] for r in full[6:]]
    a = torch.load(run_dir / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_train_student_text_tower_and_other_tokenizer_sizes(tiny_corpus, tmp_path):
    res = run_cli(base_args(tiny_corpus, tmp_path, "txt", "--student-text-tower", "train", "--epochs", "1",
                            "--distill-loss-kwargs", "udist_weight=0.2", "--text-batch-size", "5"))
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / "txt" / "checkpoints" / "epoch_1.pt"
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    fresh = open_clip.create_model("test-tiny-student").state_dict()
    assert not torch.equal(sd["text_projection"], fresh["text_projection"])  # the text tower trained
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt))


def test_clip_distill_on_paired_data(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "paired", "--distill-loss", "clip-distill", "--train-data",
                     tiny_corpus["paired"], "--student-text-tower", "train", "--epochs", "1")
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "paired" / "losses.jsonl")
    assert len(losses) == 4 and {"contrastive_loss", "distill_loss"} <= set(losses[0])


def test_corrupt_image_is_skipped_and_counted(tiny_corpus, tmp_path):
    shard = tmp_path / "bad.tar"
    good = open(tiny_corpus["images"].split("{")[0] + "000000.tar", "rb").read()
    import io
    import tarfile
    samples = []
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        for m in tar.getmembers()[:7]:
            samples.append({"__key__": m.name.split(".")[0], "png": tar.extractfile(m).read()})
    samples.append({"__key__": "broken", "png": b"\x89PNG not really an image"})
    write_tar(shard, samples)
    args = base_args(tiny_corpus, tmp_path, "corrupt", "--epochs", "1", "--train-num-samples", "7",
                     "--batch-size", "7", "--log-every-n-steps", "1")
    args[args.index("--train-images") + 1] = str(shard)
    assert distill_main.main(args) == 0
    log = (tmp_path / "corrupt" / "out.log").read_text()
    assert "corrupt_image=1" in log


def register_faulty_mse(name, bad_calls, factor):
    """A registered MSE loss that multiplies its value by ``factor`` (nan/inf) on the given calls."""

    @register_loss(name)
    class FaultyMSE(torch.nn.Module):
        requires_paired_data = False

        def __init__(self, impl="auto"):
            super().__init__()
            self.calls = 0

        def forward(self, image_features, dist_image_features, output_dict=False):
            self.calls += 1
            loss = ((image_features - dist_image_features) ** 2).mean()
            if bad_calls(self.calls):
                loss = loss * factor
            return {"mse": loss} if output_dict else loss

    return FaultyMSE


register_faulty_mse("test-nan-after-6", lambda call: call > 6, float("nan"))
register_faulty_mse("test-one-inf", lambda call: call == 3, float("inf"))


def test_nonfinite_losses_stop_the_run_and_keep_the_last_checkpoint(tiny_corpus, tmp_path, capsys):
    args = base_args(tiny_corpus, tmp_path, "nan", "--distill-loss", "test-nan-after-6", "--epochs", "3",
                     "--max-nonfinite-steps", "4")
    assert distill_main.main(args) == 3
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 4 consecutive non-finite losses") and "Traceback" not in err
    ckpts = sorted(os.listdir(tmp_path / "nan" / "checkpoints"))
    assert ckpts == ["epoch_1.pt"]
    open_clip.create_model_and_transforms("test-tiny-student",
                                          pretrained=str(tmp_path / "nan" / "checkpoints" / "epoch_1.pt"))


def test_a_single_nonfinite_step_is_skipped(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "onenan", "--distill-loss", "test-one-inf", "--epochs", "1")
    assert distill_main.main(args) == 0
    steps = [r["step"] for r in read_losses(tmp_path / "onenan" / "losses.jsonl")]
    assert steps == [0, 1, 3, 4, 5]


def test_list_losses_and_models(capsys):
    assert distill_main.main(["--list-losses"]) == 0
    out = capsys.readouterr().out.split()
    assert "dime-fm" in out and "clip-distill" in out
    assert distill_main.main(["--list-models"]) == 0
    out = capsys.readouterr().out.split()
    assert "DimeFM-ViT-B-32-L14text" in out and "ViT-L-14" in out



def test_accum_freq_runs_from_the_cli(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "accum", "--epochs", "1", "--batch-size", "4", "--accum-freq", "3",
                     "--distill-loss-kwargs", "udist_weight=0.1")
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "accum" / "losses.jsonl")
    assert [r["step"] for r in losses] == [0, 1, 2, 3]  # 48 images / (4 x 3) per step
    open_clip.create_model_and_transforms("test-tiny-student",
                                          pretrained=str(tmp_path / "accum" / "checkpoints" / "epoch_1.pt"))
