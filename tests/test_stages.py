"""Multi-stage schedules (--stages FILE.yaml) and the `contrastive` loss."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from openclip_distill import create_distill_loss

from test_cli import interrupted_copy, read_losses, run_cli, run_cli_in_process


# ---------------------------------------------------------------------------------- contrastive


def test_contrastive_matches_openclip_and_the_formula():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(9, 12, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(9, 12, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    t_img, t_txt = (F.normalize(torch.randn(9, 20, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    scale, t_scale = torch.tensor(14.0, dtype=torch.float64), torch.tensor(30.0, dtype=torch.float64)
    ours = create_distill_loss("contrastive", distill_weight=0.5, impl="naive")(
        img, txt, scale, t_img, t_txt, t_scale, output_dict=True)
    theirs = ClipLoss()(img, txt, scale)
    assert float(ours["contrastive_loss"]) == pytest.approx(float(theirs), rel=1e-6)
    # independent formula (float64)
    logits = scale * img @ txt.T
    labels = torch.arange(9)
    want_con = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    t_logits, s_logits = t_scale * t_img @ t_txt.T, scale * img @ txt.T

    def kl_rows(a, b):
        p = a.softmax(-1)
        return (p * (p.log() - b.log_softmax(-1))).sum(-1).mean()

    want_keep = 0.5 * 0.5 * (kl_rows(t_logits, s_logits) + kl_rows(t_logits.T, s_logits.T))
    assert float(ours["contrastive_loss"]) == pytest.approx(float(want_con), rel=1e-6)
    assert float(ours["distill_loss"]) == pytest.approx(float(want_keep), rel=1e-6)
    got = torch.autograd.grad(ours["contrastive_loss"] + ours["distill_loss"], [img, txt])
    want = torch.autograd.grad(want_con + want_keep, [img, txt])
    for a, b in zip(got, want):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm())  # fp32 kernel statistics vs float64


# ---------------------------------------------------------------------------------- stage files


def stage_file(tmp_path, corpus, stage2_epochs=1, **over):
    stages = [
        {"name": "features", "distill-loss": "feature", "distill-loss-kwargs": {"distance": "smooth_l1", "beta": 0.1},
         "epochs": 2, "student-text-tower": "train"},
        {"name": "align", "distill-loss": "contrastive", "train-data": corpus["paired"], "train-num-samples": 32,
         "epochs": stage2_epochs, "lr": 5e-4, "student-text-tower": "train", "freeze": ["visual.conv1.*"]},
    ]
    for i, extra in over.items():
        stages[int(i[1:])].update(extra)
    import yaml
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return str(path)


def staged_args(corpus, logs, name, stages):
    return ["--distill-teacher", "test-tiny-teacher", "--model", "test-tiny-student", "--stages", stages,
            "--train-images", corpus["images"], "--train-texts", corpus["texts"], "--batch-size", "8",
            "--lr", "1e-3", "--warmup", "1", "--precision", "fp32", "--workers", "0", "--logs", str(logs),
            "--name", name, "--device", "cpu", "--seed", "3", "--eval-data", corpus["eval"]]


@pytest.fixture(scope="module")
def staged_run(tiny_corpus, tmp_path_factory):
    logs = tmp_path_factory.mktemp("staged")
    args = staged_args(tiny_corpus, logs, "run", stage_file(logs, tiny_corpus, stage2_epochs=2))
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    return logs / "run", args


def test_two_stages_checkpoints_logs_and_freezing(staged_run):
    run, _ = staged_run
    ckpts = {e: torch.load(run / "checkpoints" / f"epoch_{e}.pt", weights_only=True) for e in (1, 2, 3, 4)}
    assert [(c["stage"], c["stage_index"]) for c in ckpts.values()] == [
        ("features", 0), ("features", 0), ("align", 1), ("align", 1)]
    assert "image_adapter.weight" in ckpts[2]["loss_state_dict"]  # stage 1's adapters, checkpointed
    assert "loss_state_dict" not in ckpts[3]  # dropped with their stage
    # stage 2 started from stage 1's student; its frozen patch embedding never moved, the rest did
    assert torch.equal(ckpts[2]["state_dict"]["visual.conv1.weight"], ckpts[4]["state_dict"]["visual.conv1.weight"])
    assert not torch.equal(ckpts[2]["state_dict"]["visual.proj"], ckpts[3]["state_dict"]["visual.proj"])
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(run / "checkpoints" / "epoch_4.pt"))
    losses = read_losses(run / "losses.jsonl")
    assert {r["stage"] for r in losses[:12]} == {"features"} and "image_loss" in losses[0]
    assert {r["stage"] for r in losses[12:]} == {"align"} and "contrastive_loss" in losses[12]
    assert [r["step"] for r in losses] == list(range(len(losses)))
    results = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in results] == [(2, "features"), (4, "align")]
    log = (run / "out.log").read_text()
    assert "Stage 2/2 'align'" in log and "Start epoch 3 (stage align)" in log


def test_resume_in_the_middle_of_stage_two(staged_run, tmp_path):
    run, args = staged_run
    cut = tmp_path / "run"
    full = interrupted_copy(run, cut, 3)
    resumed_args = list(args)
    resumed_args[resumed_args.index("--logs") + 1] = str(tmp_path)
    res = run_cli(resumed_args + ["--resume", "latest"])
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_losses(cut / "losses.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    a = torch.load(run / "checkpoints" / "epoch_4.pt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoints" / "epoch_4.pt", weights_only=True)["state_dict"]
    for k in a:  # the same computation in the same order: equal weights
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("over, needle", [
    ({"s0": {"learning-rate": 1}}, "stage 'features': unknown key 'learning-rate'"),
    ({"s1": {"distill-loss": "nope"}}, "stage 'align': --distill-loss: unknown loss 'nope'"),
    ({"s1": {"train-data": "/no/such/shards-{0..3}.tar"}}, "stage 'align': --train-data"),
    ({"s1": {"freeze": ["nothing.matches.*"]}}, "stage 'align': freeze pattern 'nothing.matches.*'"),
    ({"s0": {"name": "align"}}, "two stages are named 'align'"),
    ({"s0": {"resume": "latest"}}, "applies to the whole run"),
])
def test_stage_file_errors_before_training(over, needle, tiny_corpus, tmp_path):
    res = run_cli_in_process(staged_args(tiny_corpus, tmp_path, "bad", stage_file(tmp_path, tiny_corpus, **over)))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and needle in last and "--stages" in last, res.stderr[-2000:]
    assert not (tmp_path / "bad" / "checkpoints").exists()  # nothing started


def test_shipped_dc_clip_stage_file_parses():
    from pathlib import Path

    from openclip_distill.params import parse_args
    from openclip_distill.stages import load_stages

    path = Path(__file__).resolve().parent.parent / "configs" / "stages" / "dc_clip.yaml"
    args = parse_args(["--stages", str(path), "--distill-teacher", "hf:BAAI/AltCLIP", "--model",
                       "xlm-roberta-base-ViT-B-32", "--student-text-tower", "train", "--batch-size", "256"])
    first, second = load_stages(args, parse_args)
    assert (first.name, first.args.distill_loss, first.args.epochs) == ("feature-distillation", "feature", 10)
    assert first.args.distill_loss_kwargs["distance"] == "smooth_l1" and first.args.lr == 5e-4
    assert (second.args.distill_loss, second.args.epochs, second.args.lr) == ("contrastive", 2, 1e-4)
    assert second.args.train_data.startswith("/data/pairs/") and second.args.batch_size == 256


def test_stages_refuse_deepspeed_up_front(tiny_corpus, tmp_path):
    args = staged_args(tiny_corpus, tmp_path, "ds", stage_file(tmp_path, tiny_corpus)) + [
        "--deepspeed", "configs/deepspeed/zero2.json"]
    res = run_cli_in_process(args)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "--stages" in last and "--deepspeed" in last, res.stderr[-2000:]
