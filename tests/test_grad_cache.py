"""GradCache accumulation: K micro-batches give the update of one batch K times the size.

Checked in float64 (models, features and loss all float64: equal up to float64 rounding) and in float32
(equal within a bound derived from the computation, relative to each gradient's norm)."""
import copy
from contextlib import nullcontext
from types import SimpleNamespace

import open_clip
import pytest
import torch

import openclip_distill  # noqa: F401 (registers the configs)
from openclip_distill import create_distill_loss
from openclip_distill.grad_cache import grad_cache_backward
from openclip_distill.models.text_tower import adopt_text_tower, text_tower_state_dict
from openclip_distill.task import create_task
from openclip_distill.teachers.open_clip_teacher import OpenCLIPTeacher
from openclip_distill.train import _forward_backward

from numerics import assert_tensors_close_in_norm, relative_error, rounding_tolerance

ARGS = SimpleNamespace(distributed=False)
LR = 0.5


def plain_engine(model):
    """The engine interface grad_cache_backward talks to, for a single process without a scaler."""
    return SimpleNamespace(model=model, module=model, accumulation_context=lambda last: nullcontext(),
                           backward=lambda loss: loss.backward())


def make_models(text_tower):
    torch.manual_seed(0)
    teacher = open_clip.create_model("test-tiny-teacher").eval().requires_grad_(False)
    student = open_clip.create_model("test-tiny-student", output_dict=True)
    if text_tower == "teacher":
        adopt_text_tower(student, text_tower_state_dict(teacher), "s", "t")
    tok = open_clip.get_tokenizer("test-tiny-teacher")
    return student, OpenCLIPTeacher(teacher, tok, name="test-tiny-teacher")


def batches(k, n_img, n_txt, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = ["red", "green", "blue", "square", "circle", "star", "small", "large"]
    out = []
    for _ in range(k):
        texts = [" ".join(words[int(i)] for i in torch.randint(0, 8, (4,), generator=g)) for _ in range(n_txt)]
        out.append({"image": torch.rand(n_img, 3, 32, 32, generator=g), "text": texts})
    return out


def merged(micro):
    return {"image": torch.cat([b["image"] for b in micro]), "text": sum((b["text"] for b in micro), [])}


def grads_after(student, teacher, loss, micro, text_tower, accumulate):
    model = copy.deepcopy(student)
    tok = open_clip.get_tokenizer("test-tiny-student")
    feats = create_task(model, tok, loss, teacher, train_student_text=text_tower == "train")
    if not feats.uses_student_scale:
        model.logit_scale.requires_grad_(False)
    # SGD: the update is lr * grad, so equal updates mean equal gradients (Adam would amplify round-off
    # on near-zero gradients into full-size steps)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    if accumulate:
        losses, ok = grad_cache_backward(plain_engine(model), feats, loss, micro)
    else:
        losses, ok = _forward_backward(plain_engine(model), feats, loss, [merged(micro)], ARGS)
    assert ok
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return float(losses["loss"].detach()), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


# Error budget of the comparison (``numerics.rounding_tolerance``): the two paths sum the same terms in
# another order. Amplification 100: DIME-FM multiplies cosine similarities by s / tau = 100 / 1 (the
# largest factor here; clip-distill's scales are ~14), so a relative feature error e moves the softmax
# and hence the gradient by up to 100 e. Terms 256: the longest accumulation, the teacher's MLP hidden
# width (4 x 64), at least the batch x tokens a weight gradient sums (15 texts x 16 tokens = 240).
AMPLIFICATION, TERMS = 100.0, 256


def as_dtype(student, teacher, micro, dtype):
    """Models and images in ``dtype`` (float64: every step of both paths, the losses included)."""
    if dtype == torch.float32:
        return student, teacher, micro
    teacher = OpenCLIPTeacher(copy.deepcopy(teacher.model).to(dtype), teacher.tokenizer, name=teacher.name)
    return copy.deepcopy(student).to(dtype), teacher, [dict(b, image=b["image"].to(dtype)) for b in micro]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_name, kwargs, text_tower", [
    ("dime-fm", {"udist_weight": 0.3}, "teacher"),
    ("dime-fm", {"udist_weight": 0.3}, "train"),
    ("clip-distill", {}, "train"),
])
def test_grad_cache_equals_one_big_batch(loss_name, kwargs, text_tower, dtype):
    """float64: equal to ~1e-12 (exact up to float64 summation order); float32: within the same derived
    bound at fp32 eps (~4e-4 of each gradient's norm; plain accumulation is off by > 0.4, see below)."""
    tol = rounding_tolerance(dtype, terms=TERMS, amplification=AMPLIFICATION)
    student, teacher = make_models(text_tower)
    loss = create_distill_loss(loss_name, impl="naive", **kwargs)
    paired = loss.requires_paired_data
    micro = batches(3, 4, 4 if paired else 5)
    student, teacher, micro = as_dtype(student, teacher, micro, dtype)
    assert next(student.parameters()).dtype == dtype
    big_loss, big_grads, big_params = grads_after(student, teacher, loss, micro, text_tower, accumulate=False)
    acc_loss, acc_grads, acc_params = grads_after(student, teacher, loss, micro, text_tower, accumulate=True)
    assert all(g.dtype == dtype for g in acc_grads.values())
    assert abs(acc_loss - big_loss) <= tol * abs(big_loss)
    assert set(big_grads) == set(acc_grads) and big_grads
    assert_tensors_close_in_norm(acc_grads, big_grads, tol, "gradient")
    # one SGD step p - lr g from the same p: the parameters differ by lr * (gradient difference) plus
    # the rounding of the update (<= eps |p| per entry)
    eps = torch.finfo(dtype).eps
    for n in big_params:
        bound = LR * tol * float(big_grads[n].norm()) + eps * float(big_params[n].norm()) if n in big_grads else 0.0
        assert float((acc_params[n] - big_params[n]).norm()) <= bound, n


def test_plain_accumulation_would_differ():
    """Sanity: summing per-micro-batch losses loses the cross-batch negatives, far beyond the fp32
    tolerance of the test above (so that test can fail)."""
    student, teacher = make_models("teacher")
    loss = create_distill_loss("dime-fm", impl="naive")
    micro = batches(2, 4, 5)
    _, big, _ = grads_after(student, teacher, loss, micro, "teacher", accumulate=False)
    model = copy.deepcopy(student)
    tok = open_clip.get_tokenizer("test-tiny-student")
    feats = create_task(model, tok, loss, teacher)
    model.logit_scale.requires_grad_(False)
    for b in micro:
        inputs = feats(b)
        (loss(**inputs) / len(micro)).backward()
    errors = [relative_error(p.grad, big[n]) for n, p in model.named_parameters() if p.grad is not None]
    assert min(errors) > 100 * rounding_tolerance(torch.float32, terms=TERMS, amplification=AMPLIFICATION)
