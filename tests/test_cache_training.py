"""Training from --teacher-cache matches live-teacher training on the same views, end to end."""
import copy
import json
import os
from contextlib import nullcontext
from types import SimpleNamespace

import open_clip
import torch

from openclip_distill import create_distill_loss
from openclip_distill import main as distill_main
from openclip_distill.cache import build_main, get_cached_unpaired_data, load_manifest
from openclip_distill.data.loader_spec import LoaderSpec
from openclip_distill.models.text_tower import adopt_text_tower
from openclip_distill.task import create_task
from openclip_distill.teachers import create_teacher
from openclip_distill.train import _forward_backward

from numerics import assert_close_in_norm, rounding_tolerance

# The cached teacher embeddings were computed in other batch compositions than the live ones: each row
# within FEATURE_TOL of the other (fp32 rounding of two computations, the longest accumulation the
# teacher's MLP hidden width 4 x 64). DIME-FM multiplies cosine similarities by 100, so the loss and
# its gradient (hence an SGD update) move by up to 100x that, relative.
FEATURE_TOL = rounding_tolerance(torch.float32, terms=256)
STEP_TOL = 100 * FEATURE_TOL


def build(corpus, out):
    rc = build_main(["--distill-teacher", "test-tiny-teacher", "--train-images", corpus["images"],
                     "--train-texts", corpus["texts"], "--out", str(out), "--cache-augmentations", "2",
                     "--cache-dtype", "fp32", "--device", "cpu", "--seed", "5", "--batch-size", "16"])
    assert rc == 0
    return str(out)


def engine_of(model):
    return SimpleNamespace(model=model, module=model, accumulation_context=lambda last: nullcontext(),
                           backward=lambda loss: loss.backward())


def test_cached_training_equals_live_teacher_on_the_same_views(tiny_corpus, tmp_path):
    cache = build(tiny_corpus, tmp_path / "cache")
    manifest = load_manifest(cache)
    torch.manual_seed(5)  # the cache builder seeds a random-init teacher like the trainer does
    teacher = create_teacher("test-tiny-teacher", None, device="cpu")
    torch.manual_seed(0)
    student = open_clip.create_model("test-tiny-student", output_dict=True)
    adopt_text_tower(student, teacher.text_tower_state_dict(), "s", "t")
    student.logit_scale.requires_grad_(False)
    tok = open_clip.get_tokenizer("test-tiny-student")
    loss = create_distill_loss("dime-fm", udist_weight=0.2, impl="naive")
    args = SimpleNamespace(teacher_cache=cache, batch_size=8, text_batch_size=None, train_num_samples=None, workers=0,
                           seed=0, world_size=1, rank=0, dataset_resampled=False, distributed=False)
    loader = get_cached_unpaired_data(LoaderSpec.from_namespace(args), 32, epoch=0)
    live_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    live = create_task(live_student, tok, loss, teacher)
    cached = create_task(cached_student, tok, loss, cached_logit_scale=manifest["logit_scale"])
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
            for m in (live_student, cached_student)]
    steps = 0
    for epoch in range(2):  # two epochs: a different stored augmentation is replayed in each
        loader.set_epoch(epoch)
        for batch in loader:
            # every step starts both students from the live one's weights (SGD keeps no state), so the
            # two updates differ only by this batch's teacher embeddings, not by a diverging trajectory
            cached_student.load_state_dict(live_student.state_dict())
            before = {n: p.detach().clone() for n, p in live_student.named_parameters() if p.requires_grad}
            results, updates = [], []
            for feats, model, opt in ((live, live_student, opts[0]), (cached, cached_student, opts[1])):
                opt.zero_grad()
                losses, ok = _forward_backward(engine_of(model), feats, loss, [batch], args)
                assert ok
                opt.step()
                results.append(float(losses["loss"].detach()))
                updates.append({n: p.detach() - before[n] for n, p in model.named_parameters() if n in before})
            assert abs(results[0] - results[1]) <= STEP_TOL * abs(results[0]), (steps, results)
            for n in before:
                assert_close_in_norm(updates[1][n], updates[0][n], STEP_TOL, f"step {steps} update of {n}")
            steps += 1
    assert steps == 12


def test_cli_trains_from_the_cache_without_a_teacher(tiny_corpus, tmp_path, monkeypatch):
    cache = build(tiny_corpus, tmp_path / "cache")
    import openclip_distill.task_factory as factory

    def no_teacher(*a, **k):
        raise AssertionError("the teacher must not be instantiated with --teacher-cache")

    monkeypatch.setattr(factory, "create_teacher", no_teacher)
    rc = distill_main.main(["--teacher-cache", cache, "--model", "test-tiny-student", "--batch-size", "8",
                            "--epochs", "1", "--lr", "1e-3", "--warmup", "1", "--precision", "fp32", "--workers", "0",
                            "--logs", str(tmp_path / "logs"), "--name", "cached", "--device", "cpu",
                            "--eval-data", tiny_corpus["eval"]])
    assert rc == 0
    run = tmp_path / "logs" / "cached"
    assert len((run / "losses.jsonl").read_text().splitlines()) == 6
    ckpt = run / "checkpoints" / "epoch_1.pt"
    model, _, _ = open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt))
    tower = torch.load(os.path.join(cache, "teacher_text_tower.pt"), weights_only=True)
    torch.testing.assert_close(model.state_dict()["token_embedding.weight"], tower["token_embedding.weight"])
    assert json.loads((run / "results.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_cache_rejects_paired_losses(tiny_corpus, tmp_path, capsys):
    cache = build(tiny_corpus, tmp_path / "cache")
    rc = distill_main.main(["--teacher-cache", cache, "--model", "test-tiny-student", "--distill-loss", "clip-distill",
                            "--logs", str(tmp_path), "--device", "cpu"])
    assert rc == 2 and "--teacher-cache" in capsys.readouterr().err.strip().splitlines()[-1]
