"""End to end from `hf:` teachers (tiny random transformers models saved with save_pretrained, with
their own tokenizers, unlike the student's): the CLI trains a student OpenCLIP loads, the
teacher-embedding cache is built from an `hf:` teacher, and bad input gives one-line errors."""
import json

import open_clip
import pytest
import torch

from openclip_distill.cache import build_main, load_manifest
from openclip_distill.teachers import create_teacher

from hf_tiny import hf_tiny_models  # noqa: F401  (session fixture)
from test_cli import base_args, read_losses, run_cli, run_cli_in_process


def hf_args(corpus, logs, name, teacher_dir, *extra):
    args = base_args(corpus, logs, name, "--epochs", "1", "--student-text-tower", "train", *extra)
    args[args.index("--distill-teacher") + 1] = f"hf:{teacher_dir}"
    return args


def trained_student(run_dir, model="test-tiny-student"):
    ckpt = run_dir / "checkpoints" / "epoch_1.pt"
    model, _, _ = open_clip.create_model_and_transforms(model, pretrained=str(ckpt))
    fresh = open_clip.create_model("test-tiny-student").state_dict()
    sd = model.state_dict()
    assert not torch.equal(sd["visual.proj"], fresh["visual.proj"]) or not torch.equal(
        sd["text_projection"], fresh["text_projection"])
    return torch.load(ckpt, weights_only=True)


@pytest.mark.parametrize("family, extra", [
    ("clip", ["--distill-loss-kwargs", "pvl_weight=0", "udist_weight=0.3"]),  # DIME-FM; pvl needs equal widths
    ("altclip", ["--distill-loss", "feature"]),                                  # adapters 32 -> 16
    ("siglip", ["--distill-loss", "clip-distill"]),                              # paired, a teacher with a bias
])
def test_cli_distills_from_each_hf_family(family, extra, hf_tiny_models, tiny_corpus, tmp_path):  # noqa: F811
    args = hf_args(tiny_corpus, tmp_path, family, hf_tiny_models[family], *extra)
    if "clip-distill" in extra:
        args += ["--train-data", tiny_corpus["paired"], "--train-num-samples", "32"]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = trained_student(tmp_path / family)
    assert ckpt["distill_teacher"] == f"hf:{hf_tiny_models[family]}"
    losses = read_losses(tmp_path / family / "losses.jsonl")
    assert losses and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    if family == "altclip":
        assert ckpt["loss_state_dict"]["image_adapter.weight"].shape == (16, 32)


def test_cli_sentence_encoder_teacher_text_only(hf_tiny_models, tiny_corpus, tmp_path):  # noqa: F811
    args = hf_args(tiny_corpus, tmp_path, "sent", hf_tiny_models["sentence"], "--distill-loss", "feature",
                   "--distill-loss-kwargs", "image_weight=0", "--train-num-samples", "24")
    del args[args.index("--train-images"):args.index("--train-images") + 2]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(read_losses(tmp_path / "sent" / "losses.jsonl")) == 3
    trained_student(tmp_path / "sent")


def test_cache_from_an_hf_teacher_then_training(hf_tiny_models, tiny_corpus, tmp_path):  # noqa: F811
    out = tmp_path / "cache"
    rc = build_main(["--distill-teacher", f"hf:{hf_tiny_models['clip']}", "--train-images", tiny_corpus["images"],
                     "--train-texts", tiny_corpus["texts"], "--out", str(out), "--cache-augmentations", "1",
                     "--cache-dtype", "fp32", "--device", "cpu", "--workers", "0", "--batch-size", "16"])
    assert rc == 0
    manifest = load_manifest(str(out))
    teacher = create_teacher(f"hf:{hf_tiny_models['clip']}")
    assert manifest["embed_dim"] == 16 and manifest["text_tower"] is None
    assert manifest["logit_scale"] == pytest.approx(teacher.logit_scale)
    # the stored sentences' embeddings are the live teacher's
    chunk = manifest["text_chunks"][0]
    import numpy as np
    with open(out / chunk["sentences"]) as f:
        sentences = [json.loads(line) for line in f]
    stored = torch.from_numpy(np.load(out / chunk["embeddings"]))
    live = teacher.encode_text(sentences)
    assert (stored - live).norm(dim=-1).max() <= 1e-5
    args = ["--teacher-cache", str(out), "--model", "test-tiny-student", "--batch-size", "8", "--epochs", "1",
            "--lr", "1e-3", "--precision", "fp32", "--workers", "0", "--logs", str(tmp_path), "--name", "c",
            "--device", "cpu", "--student-text-tower", "train", "--distill-loss-kwargs", "pvl_weight=0"]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(args[:-4] + ["--name", "c2", "--distill-loss-kwargs", "pvl_weight=0"])  # default: teacher tower
    assert res.returncode == 2 and "--student-text-tower train" in res.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case, needle", [
    ("text-tower", "--student-text-tower train"),
    ("missing-dir", "--distill-teacher"),
    ("sentence-with-images", "--distill-teacher"),
])
def test_hf_teacher_bad_input(case, needle, hf_tiny_models, tiny_corpus, tmp_path):  # noqa: F811
    teacher = {"text-tower": hf_tiny_models["clip"], "missing-dir": str(tmp_path / "nope"),
               "sentence-with-images": hf_tiny_models["sentence"]}[case]
    args = hf_args(tiny_corpus, tmp_path, case, teacher)
    if case == "text-tower":
        args[args.index("--student-text-tower") + 1] = "teacher"
    res = run_cli_in_process(args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and needle in lines[-1] and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_cache_rejects_a_text_only_teacher(hf_tiny_models, tiny_corpus, tmp_path, capsys):  # noqa: F811
    rc = build_main(["--distill-teacher", f"hf:{hf_tiny_models['sentence']}", "--train-images", tiny_corpus["images"],
                     "--train-texts", tiny_corpus["texts"], "--out", str(tmp_path / "c"), "--cache-augmentations",
                     "1", "--device", "cpu", "--workers", "0"])
    assert rc == 2 and "--distill-teacher" in capsys.readouterr().err.strip().splitlines()[-1]
