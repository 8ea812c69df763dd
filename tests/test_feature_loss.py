"""The `feature` loss (DC-CLIP's feature distillation) against an independent float64 formula, and
sentence-only / image-only CLI runs whose adapters are checkpointed but never exported."""
import json
import math

import open_clip
import pytest
import torch

import openclip_distill  # noqa: F401 (registers configs and losses)
from openclip_distill import create_distill_loss
from openclip_distill.errors import DistillUsageError
from openclip_distill.losses.feature import FeatureDistillLoss

from test_cli import base_args, read_losses, run_cli, run_cli_in_process


def reference(student, teacher, weight, bias, distance, beta=1.0, normalize=True):
    """The formula written out elementwise in float64 (per-row sums over dimensions, mean over rows)."""
    s, t = student.double(), teacher.double()
    if normalize:
        s = s / s.norm(dim=-1, keepdim=True)
        t = t / t.norm(dim=-1, keepdim=True)
    x = s @ weight.double().T + bias.double()
    if distance == "mse":
        return ((x - t) ** 2).sum(-1).mean()
    if distance == "smooth_l1":
        d = (x - t).abs()
        return torch.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).sum(-1).mean()
    cos = (x * t).sum(-1) / (x.norm(dim=-1) * t.norm(dim=-1))
    return (1 - cos).mean()


@pytest.mark.parametrize("distance", ["smooth_l1", "mse", "cosine"])
@pytest.mark.parametrize("dims", [(16, 16), (12, 20)])
def test_feature_loss_matches_formula(distance, dims):
    g = torch.Generator().manual_seed(0)
    s_dim, t_dim = dims
    loss = FeatureDistillLoss(image_weight=0.7, text_weight=1.3, distance=distance, beta=0.05,
                              student_embed_dim=s_dim, teacher_embed_dim=t_dim).double()
    with torch.no_grad():  # move the adapters away from their init so the test sees them
        for a in (loss.image_adapter, loss.text_adapter):
            a.weight.add_(0.1 * torch.randn(a.weight.shape, generator=g, dtype=torch.float64))
            a.bias.add_(0.1 * torch.randn(a.bias.shape, generator=g, dtype=torch.float64))
    si, st = (torch.randn(6, s_dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ti, tt = (torch.randn(n, t_dim, generator=g, dtype=torch.float64) for n in (6, 6))
    out = loss(image_features=si, text_features=st, dist_image_features=ti, dist_text_features=tt, output_dict=True)
    want_i = 0.7 * reference(si, ti, loss.image_adapter.weight, loss.image_adapter.bias, distance, 0.05)
    want_t = 1.3 * reference(st, tt, loss.text_adapter.weight, loss.text_adapter.bias, distance, 0.05)
    assert float(out["image_loss"]) == pytest.approx(float(want_i), rel=1e-9)
    assert float(out["text_loss"]) == pytest.approx(float(want_t), rel=1e-9)
    # gradients (student features and adapters) against autograd through the reference formula
    total = out["image_loss"] + out["text_loss"]
    got = torch.autograd.grad(total, [si, st, loss.image_adapter.weight])
    want = torch.autograd.grad(want_i + want_t, [si, st, loss.image_adapter.weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_adapter_is_identity_when_widths_match_and_modalities_follow_weights():
    loss = create_distill_loss("feature", student_embed_dim=8, teacher_embed_dim=8, image_weight=0)
    assert loss.image_adapter is None and loss.modalities == frozenset({"text"})
    torch.testing.assert_close(loss.text_adapter.weight, torch.eye(8))
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert float(loss(text_features=x, dist_text_features=x)) == 0.0
    assert create_distill_loss("feature", text_weight=0).modalities == frozenset({"image"})


@pytest.mark.parametrize("distance", ["smooth_l1", "mse", "cosine"])
def test_feature_loss_without_adapter_is_the_plain_distance(distance):
    """adapter=False: no parameters, the formula with A = I (student and teacher of the same width)."""
    g = torch.Generator().manual_seed(1)
    loss = FeatureDistillLoss(image_weight=0.7, text_weight=1.3, distance=distance, beta=0.05, adapter=False,
                              student_embed_dim=16, teacher_embed_dim=16).double()
    assert list(loss.parameters()) == [] and loss.image_adapter is None and loss.text_adapter is None
    si, st, ti, tt = (torch.randn(6, 16, generator=g, dtype=torch.float64) for _ in range(4))
    out = loss(image_features=si, text_features=st, dist_image_features=ti, dist_text_features=tt, output_dict=True)
    eye, zero = torch.eye(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    assert float(out["image_loss"]) == pytest.approx(0.7 * float(reference(si, ti, eye, zero, distance, 0.05)), rel=1e-9)
    assert float(out["text_loss"]) == pytest.approx(1.3 * float(reference(st, tt, eye, zero, distance, 0.05)), rel=1e-9)


def test_feature_loss_bad_input():
    with pytest.raises(DistillUsageError, match="adapter=False needs the student's embedding width"):
        create_distill_loss("feature", adapter=False, student_embed_dim=12, teacher_embed_dim=20)
    with pytest.raises(DistillUsageError, match="adapter must be True or False"):
        create_distill_loss("feature", adapter="no")
    with pytest.raises(DistillUsageError, match="distance"):
        create_distill_loss("feature", distance="l3")
    with pytest.raises(DistillUsageError, match="image_weight or text_weight"):
        create_distill_loss("feature", image_weight=0, text_weight=0)
    loss = create_distill_loss("feature", image_weight=0, student_embed_dim=8, teacher_embed_dim=8)
    with pytest.raises(DistillUsageError, match="--student-text-tower train"):
        loss(text_features=None, dist_text_features=torch.randn(2, 8))
    with pytest.raises(DistillUsageError, match="dims"):
        create_distill_loss("feature", image_weight=0)(text_features=torch.randn(2, 8),
                                                      dist_text_features=torch.randn(2, 6))


def test_cli_sentence_only_run_with_adapter_checkpointed_not_exported(tiny_corpus, tmp_path):
    """Only --train-texts: an epoch is --train-num-samples sentences; the adapter trains and resumes."""
    args = base_args(tiny_corpus, tmp_path, "txt", "--distill-loss", "feature", "--distill-loss-kwargs",
                     "image_weight=0", "distance=cosine", "--student-text-tower", "train",
                     "--train-num-samples", "40", "--model", "test-tiny-student-24")
    del args[args.index("--train-images"):args.index("--train-images") + 2]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "txt"
    losses = read_losses(run / "losses.jsonl")
    assert len(losses) == 2 * (40 // 8) and all(set(r) == {"epoch", "step", "text_loss", "loss"} for r in losses)
    assert "40 sentences, 5 steps per epoch" in (run / "out.log").read_text()
    ckpt = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert not any(k.startswith("loss.") or "adapter" in k for k in ckpt["state_dict"])
    assert set(ckpt["loss_state_dict"]) == {"text_adapter.weight", "text_adapter.bias"}
    first = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["loss_state_dict"]
    assert not torch.equal(first["text_adapter.weight"], ckpt["loss_state_dict"]["text_adapter.weight"])
    model, _, _ = open_clip.create_model_and_transforms("test-tiny-student-24", pretrained=str(run / "checkpoints"
                                                                                              / "epoch_2.pt"))
    fresh = open_clip.create_model("test-tiny-student-24").state_dict()
    assert not torch.equal(model.state_dict()["text_projection"], fresh["text_projection"])
    assert torch.equal(model.state_dict()["visual.proj"], ckpt["state_dict"]["visual.proj"])

    # resume from epoch 1: same losses in epoch 2 (the adapter is restored, not re-initialised)
    (run / "checkpoints" / "epoch_2.pt").unlink()
    with open(run / "losses.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in losses if r["epoch"] == 0)
    res = run_cli(args + ["--resume", "latest"])
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_losses(run / "losses.jsonl")
    assert [r["step"] for r in resumed] == list(range(10))
    for a, b in zip(losses[5:], resumed[5:]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4, abs_tol=1e-6)


def test_cli_image_only_run(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "img", "--distill-loss", "feature", "--distill-loss-kwargs",
                     "text_weight=0", "adapter=False", "--epochs", "1")
    del args[args.index("--train-texts"):args.index("--train-texts") + 2]
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = read_losses(tmp_path / "img" / "losses.jsonl")
    assert len(losses) == 6 and all("image_loss" in r and "text_loss" not in r for r in losses)
    ckpt = torch.load(tmp_path / "img" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert not ckpt.get("loss_state_dict")  # adapter=False: the loss has nothing to save


def test_cli_feature_run_errors(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "e1", "--distill-loss", "feature", "--distill-loss-kwargs",
                     "image_weight=0")
    del args[args.index("--train-images"):args.index("--train-images") + 2]
    res = run_cli_in_process(args + ["--student-text-tower", "train"])  # no --train-num-samples
    assert res.returncode == 2 and "--train-num-samples" in res.stderr.strip().splitlines()[-1]
    res = run_cli_in_process(args + ["--train-num-samples", "16"])  # the text tower would be the teacher's frozen copy
    assert res.returncode == 2 and "--student-text-tower train" in res.stderr.strip().splitlines()[-1]
    # adapter=False with a 24-wide student and a 32-wide teacher: stopped before training
    args = base_args(tiny_corpus, tmp_path, "e2", "--distill-loss", "feature", "--distill-loss-kwargs",
                     "image_weight=0", "adapter=False", "--student-text-tower", "train", "--train-num-samples", "16",
                     "--model", "test-tiny-student-24")
    del args[args.index("--train-images"):args.index("--train-images") + 2]
    res = run_cli_in_process(args)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "adapter=False needs the student's embedding width (24)" in last, res.stderr
    assert not list((tmp_path / "e2").glob("checkpoints/*.pt"))
