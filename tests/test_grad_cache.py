"""GradCache accumulation: K micro-batches give the update of one batch K times the size."""
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

ARGS = SimpleNamespace(distributed=False)


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
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    if accumulate:
        losses, ok = grad_cache_backward(plain_engine(model), feats, loss, micro)
    else:
        losses, ok = _forward_backward(plain_engine(model), feats, loss, [merged(micro)], ARGS)
    assert ok
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return float(losses["loss"].detach()), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_name, kwargs, text_tower", [
    ("dime-fm", {"udist_weight": 0.3}, "teacher"),
    ("dime-fm", {"udist_weight": 0.3}, "train"),
    ("clip-distill", {}, "train"),
])
def test_grad_cache_equals_one_big_batch(loss_name, kwargs, text_tower):
    student, teacher = make_models(text_tower)
    loss = create_distill_loss(loss_name, impl="naive", **kwargs)
    paired = loss.requires_paired_data
    micro = batches(3, 4, 4 if paired else 5)
    big_loss, big_grads, big_params = grads_after(student, teacher, loss, micro, text_tower, accumulate=False)
    acc_loss, acc_grads, acc_params = grads_after(student, teacher, loss, micro, text_tower, accumulate=True)
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    assert set(big_grads) == set(acc_grads) and big_grads
    for n in big_grads:
        torch.testing.assert_close(acc_grads[n], big_grads[n], rtol=1e-4, atol=1e-5)
    for n in big_params:
        torch.testing.assert_close(acc_params[n], big_params[n], rtol=1e-4, atol=1e-5)


def test_plain_accumulation_would_differ():
    """Sanity: summing per-micro-batch losses loses the cross-batch negatives (so the test above can fail)."""
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
    diffs = [(p.grad - big[n]).abs().max().item() for n, p in model.named_parameters() if p.grad is not None]
    assert max(diffs) > 1e-4
