"""Teacher ensembles (``--distill-teacher A,B``, MobileCLIP's average after softmax), end to end.

Every loss against its formula on K = 2 teachers of unequal widths and scales (float64, an independent
formula written with explicit probabilities, or the mean of the single-teacher losses for the terms that
cannot be mixed after a softmax); the ensemble teacher and its cache against each member's own outputs;
GradCache with ensemble targets against one full batch; the CLI live and from a cached ensemble; bad
input as one-line errors.
"""
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from openclip_distill import create_distill_loss
from openclip_distill import main as distill_main
from openclip_distill.cache import build_main, load_manifest
from openclip_distill.grad_cache import grad_cache_backward
from openclip_distill.task import CachedTeacherTargets, DistillTask, LiveTeacherTargets
from openclip_distill.teachers import TeacherEnsemble, create_teacher

from hf_tiny import hf_tiny_models  # noqa: F401  (session fixture)
from test_bad_input import args_for, assert_one_line_error
from test_cli import base_args, read_losses

WIDTHS, SCALES = (6, 9), (30.0, 80.0)


def _unit(*shape, g):
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def ensemble_inputs(n=7, m=0, d_student=6, seed=0):
    """Student and K = 2 teacher inputs in float64; ``m`` texts (0: paired with the ``n`` images)."""
    g = torch.Generator().manual_seed(seed)
    return {"image_features": _unit(n, d_student, g=g).requires_grad_(),
            "text_features": _unit(m if m else n, d_student, g=g).requires_grad_(),
            "logit_scale": torch.tensor(20.0, dtype=torch.float64, requires_grad=True),
            "dist_image_features": tuple(_unit(n, d, g=g) for d in WIDTHS),
            "dist_text_features": tuple(_unit(m if m else n, d, g=g) for d in WIDTHS),
            "dist_logit_scale": tuple(torch.tensor(s, dtype=torch.float64) for s in SCALES)}


def softmax_rows(x):
    e = torch.exp(x - x.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def mixed(logits, tau=1.0):
    return sum(softmax_rows(a / tau) for a in logits) / len(logits)


def cross_entropy_mixed(teacher_logits, student_logits, tau=1.0):
    """mean_i -sum_j p_ij log q_ij, p the averaged teacher softmax."""
    return -(mixed(teacher_logits, tau) * torch.log(softmax_rows(student_logits / tau))).sum(1).mean()


def kl_mixed(teacher_logits, student_logits, tau=1.0):
    p = mixed(teacher_logits, tau)
    return (p * (torch.log(p) - torch.log(softmax_rows(student_logits / tau)))).sum(1).mean()


def single(inputs, k):
    """The inputs of teacher k alone (plain tensors, as a one-teacher run gets)."""
    out = dict(inputs)
    for key in ("dist_image_features", "dist_text_features", "dist_logit_scale"):
        out[key] = inputs[key][k]
    return out


def select(loss, inputs):
    from openclip_distill.task import loss_input_names
    names = loss_input_names(loss)
    return {k: v for k, v in inputs.items() if k in names}


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_clip_distill_and_affinity_mix_the_teachers_softmaxes(impl):
    x = ensemble_inputs()
    i, t, s = x["image_features"], x["text_features"], x["logit_scale"]
    t_logits = [sc * a @ b.T for a, b, sc in zip(x["dist_image_features"], x["dist_text_features"], SCALES)]
    out = create_distill_loss("clip-distill", impl=impl)(**select(create_distill_loss("clip-distill"), x),
                                                         output_dict=True)
    want = 0.5 * (cross_entropy_mixed(t_logits, s * i @ t.T) + cross_entropy_mixed([a.T for a in t_logits],
                                                                                      s * t @ i.T))
    torch.testing.assert_close(out["distill_loss"], want, rtol=1e-10, atol=1e-12)
    aff = create_distill_loss("affinity", scale=40.0, impl=impl)
    out = aff(**select(aff, x), output_dict=True)
    c_logits = [40.0 * a @ b.T for a, b in zip(x["dist_image_features"], x["dist_text_features"])]
    want = 0.5 * (cross_entropy_mixed(c_logits, 40.0 * i @ t.T) + cross_entropy_mixed([a.T for a in c_logits],
                                                                                       40.0 * t @ i.T))
    torch.testing.assert_close(out["affinity_loss"], want, rtol=1e-10, atol=1e-12)
    # the gradient reaches the student from the mixed target
    g = torch.autograd.grad(out["affinity_loss"], [i])[0]
    (g_want,) = torch.autograd.grad(want, [i])
    torch.testing.assert_close(g, g_want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_dime_fm_mixes_vl_and_udist_and_averages_pvl(impl):
    x = ensemble_inputs(n=8, m=6, d_student=6)
    # P-VL compares student and teacher features directly: every teacher must have the student's width
    x["dist_image_features"] = (x["dist_image_features"][0], _unit(8, 6, g=torch.Generator().manual_seed(3)))
    x["dist_text_features"] = (x["dist_text_features"][0], _unit(6, 6, g=torch.Generator().manual_seed(4)))
    kw = dict(vl_weight=0.7, pvl_weight=0.3, udist_weight=0.2, impl=impl)
    loss = create_distill_loss("dime-fm", **kw)
    out = loss(**select(loss, x), output_dict=True)
    v_s, t_s = x["image_features"], x["text_features"]
    v_t, t_t = x["dist_image_features"], x["dist_text_features"]
    vl = kl_mixed([100 * a @ b.T for a, b in zip(v_t, t_t)], 100 * v_s @ t_s.T) + kl_mixed(
        [100 * b @ a.T for a, b in zip(v_t, t_t)], 100 * t_s @ v_s.T)
    udist = 2 * kl_mixed([100 * a @ a.T for a in v_t], 100 * v_s @ v_s.T, 7.0) + 2 * kl_mixed(
        [100 * b @ b.T for b in t_t], 100 * t_s @ t_s.T, 7.0)
    torch.testing.assert_close(out["vl_loss"], 0.7 * vl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out["udist_loss"], 0.2 * udist, rtol=1e-10, atol=1e-12)
    pvl = [loss(**select(loss, single(x, k)), output_dict=True)["pvl_loss"] for k in range(2)]
    torch.testing.assert_close(out["pvl_loss"], (pvl[0] + pvl[1]) / 2, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="pvl_weight=0"):
        create_distill_loss("dime-fm", student_embed_dim=6, teacher_embed_dim=(6, 9))


def test_clip_kd_crd_mixes_icl_and_fd_average_with_a_map_per_teacher():
    x = ensemble_inputs()
    loss = create_distill_loss("clip-kd", impl="naive", student_embed_dim=6, teacher_embed_dim=WIDTHS).double()
    assert [tuple(m.weight.shape) for m in loss.image_map] == [(6, 6), (9, 6)]
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                      dtype=p.dtype))
    out = loss(**select(loss, x), output_dict=True)
    i, t, s = x["image_features"], x["text_features"], x["logit_scale"]
    t_logits = [sc * a @ b.T for a, b, sc in zip(x["dist_image_features"], x["dist_text_features"], SCALES)]
    crd = 0.5 * (kl_mixed(t_logits, s * i @ t.T) + kl_mixed([a.T for a in t_logits], s * t @ i.T))
    torch.testing.assert_close(out["crd_loss"], crd, rtol=1e-10, atol=1e-12)
    singles = []
    for k, width in enumerate(WIDTHS):  # the single-teacher loss with teacher k's maps
        one = create_distill_loss("clip-kd", impl="naive", student_embed_dim=6, teacher_embed_dim=width).double()
        one.image_map.load_state_dict(loss.image_map[k].state_dict())
        one.text_map.load_state_dict(loss.text_map[k].state_dict())
        singles.append(one(**select(one, single(x, k)), output_dict=True))
    for term in ("icl_loss", "fd_loss"):
        torch.testing.assert_close(out[term], (singles[0][term] + singles[1][term]) / 2, rtol=1e-12, atol=1e-14)


def test_feature_loss_averages_the_teachers_with_an_adapter_each():
    x = ensemble_inputs()
    loss = create_distill_loss("feature", distance="mse", student_embed_dim=6, teacher_embed_dim=WIDTHS).double()
    out = loss(**select(loss, x), output_dict=True)
    want = 0
    for k in range(2):
        mapped = loss.image_adapter[k](F.normalize(x["image_features"], dim=-1))
        want = want + ((mapped - x["dist_image_features"][k]) ** 2).sum(1).mean() / 2
    torch.testing.assert_close(out["image_loss"], want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="teacher_embed_dim"):
        create_distill_loss("feature", student_embed_dim=6, teacher_embed_dim=6).double()(**select(loss, x))


def test_one_teacher_tuple_gives_the_single_teacher_numbers_bit_for_bit():
    x = ensemble_inputs()
    for name in ("clip-distill", "affinity", "clip-kd", "dime-fm"):
        kwargs = {"pvl_weight": 0.0, "udist_weight": 0.1} if name == "dime-fm" else {}
        loss = create_distill_loss(name, impl="chunked", **kwargs).double()
        one = single(x, 0)
        as_tuple = {**one, **{k: (one[k],) for k in ("dist_image_features", "dist_text_features",
                                                     "dist_logit_scale")}}
        a, b = loss(**select(loss, one), output_dict=True), loss(**select(loss, as_tuple), output_dict=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_grad_cache_with_ensemble_targets_equals_one_full_batch():
    """Micro-batches of tuple targets are combined entry by entry: the parameter gradient of K=2
    micro-batches equals the one of the full batch."""
    g = torch.Generator().manual_seed(0)
    n, d_in = 8, 5
    feats = _unit(n, d_in, g=g)
    teachers = [_unit(n, w, g=g) for w in WIDTHS]

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d_in, 6, dtype=torch.float64)
            self.autocast = lambda: torch.autocast("cpu", enabled=False)

        def __call__(self, idx, _texts, grad=True):
            with torch.set_grad_enabled(grad):
                return {"image_features": F.normalize(self.proj(feats[idx]), dim=-1)}

    class Targets:
        def __call__(self, batch, images, modalities):
            idx = batch["image"]
            return {"dist_image_features": tuple(t[idx] for t in teachers),
                    "dist_text_features": tuple(t[:5] for t in teachers)}

    class Engine:
        def accumulation_context(self, last):
            return torch.autograd.set_grad_enabled(True)

        def backward(self, loss):
            loss.backward()

    loss = create_distill_loss("dime-fm", pvl_weight=0.0, udist_weight=0.3, impl="chunked")
    student = Student()
    task = DistillTask(student, Targets(), loss, device="cpu")
    task.images_of = lambda batch: batch["image"]
    batches = [{"image": torch.arange(0, 3), "text": None}, {"image": torch.arange(3, n), "text": None}]
    grad_cache_backward(Engine(), task, loss, batches)
    cached = student.proj.weight.grad.clone()
    student.proj.weight.grad = None
    full = loss(**task.select({**Targets()({"image": torch.arange(n)}, None, None),
                               **student(torch.arange(n), None)}))
    full.backward()
    torch.testing.assert_close(cached, student.proj.weight.grad, rtol=1e-10, atol=1e-13)


@pytest.fixture(scope="module")
def two_teachers(hf_tiny_models):  # noqa: F811
    return f"test-tiny-teacher,hf:{hf_tiny_models['clip']}"


def test_ensemble_teacher_and_targets_are_each_members_own(two_teachers):
    torch.manual_seed(0)
    ensemble = create_teacher(two_teachers, ",", device="cpu")
    assert isinstance(ensemble, TeacherEnsemble) and len(ensemble) == 2
    assert ensemble.embed_dim == (32, 16) and ensemble.modalities == {"image", "text"}
    views = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    texts = ["a red square", "a blue circle"]
    targets = LiveTeacherTargets(ensemble, "cpu")({"text": texts}, views, {"image", "text"})
    for k, member in enumerate(ensemble.members):
        assert torch.equal(targets["dist_image_features"][k], member.encode_image(views))
        assert torch.equal(targets["dist_text_features"][k], member.encode_text(texts))
        assert float(targets["dist_logit_scale"][k]) == pytest.approx(member.logit_scale)
    assert "dist_logit_bias" not in targets
    # a cached ensemble's side-by-side rows split back into the members' tensors
    stored = {"dist_image_features": torch.cat(targets["dist_image_features"], 1), "text": texts,
              "dist_text_features": torch.cat(targets["dist_text_features"], 1)}
    cached = CachedTeacherTargets(ensemble.logit_scale, None, "cpu", ensemble.embed_dim)(stored, None,
                                                                                         {"image", "text"})
    for key in ("dist_image_features", "dist_text_features"):
        assert all(torch.equal(a, b) for a, b in zip(cached[key], targets[key]))


def test_cli_trains_from_a_live_ensemble_and_a_cached_one(two_teachers, tiny_corpus, tmp_path):
    extra = ["--epochs", "1", "--student-text-tower", "train", "--distill-loss-kwargs", "pvl_weight=0",
             "udist_weight=0.3"]
    args = base_args(tiny_corpus, tmp_path, "live", *extra)
    args[args.index("--distill-teacher") + 1] = two_teachers
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "live" / "losses.jsonl")
    assert len(losses) == 6 and all(np.isfinite(r["loss"]) and r["vl_loss"] > 0 for r in losses)
    ckpt = tmp_path / "live" / "checkpoints" / "epoch_1.pt"
    assert torch.load(ckpt, weights_only=True)["distill_teacher"] == two_teachers
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt))

    cache = tmp_path / "cache"
    assert build_main(["--distill-teacher", two_teachers, "--train-images", tiny_corpus["images"],
                       "--train-texts", tiny_corpus["texts"], "--out", str(cache), "--cache-augmentations", "1",
                       "--cache-dtype", "fp32", "--device", "cpu", "--seed", "5", "--batch-size", "16",
                       "--workers", "0"]) == 0
    manifest = load_manifest(str(cache))
    assert manifest["embed_dim"] == 48 and [m["embed_dim"] for m in manifest["members"]] == [32, 16]
    torch.manual_seed(5)  # the builder seeds random-init teachers like the trainer
    ensemble = create_teacher(two_teachers, None, device="cpu")
    assert manifest["logit_scale"] == list(ensemble.logit_scale)
    chunk = manifest["text_chunks"][0]
    stored = torch.from_numpy(np.load(cache / chunk["embeddings"]))
    sentences = [json.loads(s) for s in (cache / chunk["sentences"]).read_text().splitlines()]
    for k, (lo, hi) in enumerate([(0, 32), (32, 48)]):  # each member's block is its own embedding
        torch.testing.assert_close(stored[:, lo:hi], ensemble.members[k].encode_text(sentences), rtol=1e-5, atol=1e-6)
    # training from the cache never builds a teacher; the student adopts the first teacher's cached text tower
    args = base_args(tiny_corpus, tmp_path, "cached", "--epochs", "1", "--teacher-cache", str(cache),
                     "--distill-loss-kwargs", "pvl_weight=0")
    args[args.index("--distill-teacher") + 1] = two_teachers
    del args[args.index("--train-images"):args.index("--train-images") + 4]
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "cached" / "losses.jsonl")
    assert losses and all(np.isfinite(r["loss"]) for r in losses)
    assert "the first teacher's (test-tiny-teacher)" in (tmp_path / "cached" / "out.log").read_text()


def test_cli_official_dime_fm_from_two_openclip_teachers(tiny_corpus, tmp_path):
    """DIME-FM's defaults (P-VL on, the frozen teacher text tower) with two teachers of the student's width:
    the student adopts the first teacher's text tower and says so."""
    args = base_args(tiny_corpus, tmp_path, "dime", "--epochs", "1")
    args[args.index("--distill-teacher") + 1] = "test-tiny-teacher,test-tiny-teacher"
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "dime" / "losses.jsonl")
    assert len(losses) == 6 and all(r["pvl_loss"] > 0 and np.isfinite(r["loss"]) for r in losses)
    assert "the first teacher's (test-tiny-teacher)" in (tmp_path / "dime" / "out.log").read_text()


def test_resume_restores_the_adapter_of_every_teacher(two_teachers, tiny_corpus, tmp_path):
    """``feature`` with two teachers of widths 32 and 16: one adapter each in ``loss_state_dict``; an
    interrupted run resumed from epoch 1 replays epoch 2 bit for bit."""
    def args(logs, *extra):
        a = base_args(tiny_corpus, logs, "feat", "--distill-loss", "feature", "--student-text-tower", "train", *extra)
        a[a.index("--distill-teacher") + 1] = two_teachers
        return a

    full_logs, cut_logs = tmp_path / "full", tmp_path / "cut"
    assert distill_main.main(args(full_logs)) == 0
    ckpt = torch.load(full_logs / "feat" / "checkpoints" / "epoch_2.pt", weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in ckpt["loss_state_dict"].items() if k.endswith("weight")}
    assert shapes == {"image_adapter.0.weight": (32, 32), "image_adapter.1.weight": (16, 32),
                      "text_adapter.0.weight": (32, 32), "text_adapter.1.weight": (16, 32)}
    (cut_logs / "feat" / "checkpoints").mkdir(parents=True)
    for name in ("epoch_1.pt",):
        (cut_logs / "feat" / "checkpoints" / name).write_bytes(
            (full_logs / "feat" / "checkpoints" / name).read_bytes())
    full = read_losses(full_logs / "feat" / "losses.jsonl")
    (cut_logs / "feat" / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full if r["epoch"] == 0))
    (cut_logs / "feat" / "out.log").write_text("")
    assert distill_main.main(args(cut_logs, "--resume", "latest")) == 0
    resumed = read_losses(cut_logs / "feat" / "losses.jsonl")
    assert [r["loss"] for r in resumed[6:]] == [r["loss"] for r in full[6:]]
    again = torch.load(cut_logs / "feat" / "checkpoints" / "epoch_2.pt", weights_only=True)
    for key in ("state_dict", "loss_state_dict"):
        assert all(torch.equal(again[key][k], ckpt[key][k]) for k in ckpt[key]), key


@pytest.mark.parametrize("over, needles", [
    ({"--distill-teacher": "test-tiny-teacher,test-tiny-teacher", "--distill-teacher-pretrained": "a,b,c"},
     ["--distill-teacher-pretrained", "3 weight entries for 2 teachers"]),
    ({"--distill-teacher": "test-tiny-teacher,,test-tiny-teacher"}, ["--distill-teacher", "empty teacher name"]),
    ({"--distill-teacher": "test-tiny-teacher,test-tiny-teacher", "--loss-impl": "triton"},
     ["--distill-teacher", "--loss-impl chunked|naive"]),
    ({"--distill-teacher": "test-tiny-teacher,test-tiny-teacher", "--student-init": "teacher"},
     ["--student-init teacher", "ensemble"]),
    ({"--distill-teacher": "test-tiny-teacher,test-tiny-teacher", "--distill-loss": "dlip"},
     ["--distill-loss dlip", "single teacher"]),
])
def test_bad_ensemble_flags_are_one_line_errors(over, needles, tiny_corpus, tmp_path, capsys):
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, **over))
    assert_one_line_error(capsys, rc, *needles)


def test_text_only_or_non_openclip_first_teacher_are_one_line_errors(
        hf_tiny_models, tiny_corpus, tmp_path, capsys):  # noqa: F811
    sentence = f"hf:{hf_tiny_models['sentence']}"
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, **{
        "--distill-teacher": f"test-tiny-teacher,{sentence}", "--student-text-tower": "train",
        "--distill-loss-kwargs": "pvl_weight=0"}))
    assert_one_line_error(capsys, rc, "--distill-teacher", sentence, "no image tower", "every teacher")
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, name="bad2", **{
        "--distill-teacher": f"hf:{hf_tiny_models['clip']},test-tiny-teacher"}))
    assert_one_line_error(capsys, rc, "--student-text-tower teacher", "first teacher")


@pytest.mark.slow  # ~13-26 s (two torchrun processes); the kernels' distributed values run by default
def test_ddp_trains_from_an_ensemble(tiny_corpus, tmp_path):
    """torchrun, 2 gloo processes: the ensemble KL's column statistics are completed across ranks (its values
    against one process are checked in test_kernels_distributed)."""
    from test_distributed import losses, torchrun
    args = ["--epochs", "1", "--student-text-tower", "train",
            "--distill-teacher", "test-tiny-teacher,test-tiny-teacher"]
    torchrun(tiny_corpus, tmp_path, "ddp-ensemble", *args)
    rows = losses(tmp_path / "ddp-ensemble")
    assert [r["step"] for r in rows] == list(range(6)) and all(np.isfinite(r["loss"]) for r in rows)
    assert "Student reuses" not in (tmp_path / "ddp-ensemble" / "out.log").read_text()
