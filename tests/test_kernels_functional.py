"""Public dispatch of the similarity losses: ``impl`` choices, errors, scales, OpenCLIP ``ClipLoss`` parity."""
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import openclip_distill.kernels as K
from openclip_distill.kernels import IMPLS, contrastive_loss, similarity_kl_loss
from openclip_distill.kernels.functional import resolve_impl


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()


def test_impls_are_the_documented_four():
    assert IMPLS == ("auto", "naive", "chunked", "triton")


@pytest.mark.parametrize("call", ["contrastive", "kl"])
def test_unknown_impl_names_the_valid_choices(call):
    a, b = _features(4, 3, 0), _features(4, 3, 1)
    with pytest.raises(ValueError) as err:
        if call == "contrastive":
            contrastive_loss(a, b, 10.0, impl="fused")
        else:
            similarity_kl_loss(a, b, a, b, student_scale=1.0, teacher_scale=1.0, impl="fused")
    for name in IMPLS:
        assert repr(name) in str(err.value)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a, b = _features(4, 3, 0), _features(4, 3, 1)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|not importable"):
        contrastive_loss(a, b, 10.0, impl="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|not importable"):
        similarity_kl_loss(a, b, a, b, student_scale=1.0, teacher_scale=1.0, impl="triton")


def test_auto_is_chunked_on_cpu_and_triton_on_cuda():
    assert resolve_impl("auto", torch.zeros(1)) == "chunked"
    cuda_like = types.SimpleNamespace(is_cuda=True)
    expected = "triton" if K.triton_support.triton_importable() else "chunked"
    assert resolve_impl("auto", cuda_like) == expected


def test_auto_on_cpu_runs_the_chunked_function():
    a, b = _features(6, 5, 0), _features(6, 5, 1)
    loss = contrastive_loss(a, b, 10.0)
    names, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    assert "ChunkedInfoNCEBackward" in names


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_contrastive_loss_equals_open_clip_clip_loss_in_float64(impl, n):
    """Same mathematics: in float64 only fp64 round-off separates them."""
    images, texts = (_features(n, 24, 2 * n + k).detach().double().requires_grad_() for k in (0, 1))
    logit_scale = torch.tensor(16.0, dtype=torch.float64, requires_grad=True)
    ours = contrastive_loss(images, texts, logit_scale, impl=impl)
    ours_grads = torch.autograd.grad(ours, [images, texts, logit_scale])
    theirs = ClipLoss()(images, texts, logit_scale)
    theirs_grads = torch.autograd.grad(theirs, [images, texts, logit_scale])
    assert abs(ours.item() - theirs.item()) <= 1e-12 * max(1.0, abs(theirs.item()))
    for mine, ref in zip(ours_grads, theirs_grads):
        assert (mine - ref).norm() <= 1e-10 * ref.norm() + 1e-15


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_contrastive_loss_equals_open_clip_clip_loss(impl, n):
    """fp32: logits of size 1/0.07 ~ 14 carry ~14 x 2^-24 relative round-off; bound 16 x that, in norm."""
    images, texts = _features(n, 24, 2 * n), _features(n, 24, 2 * n + 1)
    logit_scale = torch.tensor(1 / 0.07, requires_grad=True)
    ours = contrastive_loss(images, texts, logit_scale, impl=impl)
    ours_grads = torch.autograd.grad(ours, [images, texts, logit_scale])
    theirs = ClipLoss()(images, texts, logit_scale)
    theirs_grads = torch.autograd.grad(theirs, [images, texts, logit_scale])
    rtol = 16 * 15 * 2.0 ** -24
    assert abs(ours.item() - theirs.item()) <= rtol * max(1.0, abs(theirs.item()))
    for mine, ref in zip(ours_grads, theirs_grads):
        assert (mine - ref).norm() <= rtol * ref.norm() + 1e-12


@pytest.mark.parametrize("shape", [(), (1,)])
def test_tensor_scale_gets_a_gradient_of_its_own_shape(shape):
    a, b = _features(5, 4, 3), _features(7, 4, 4)
    scale = torch.full(shape, 20.0, requires_grad=True)
    similarity_kl_loss(a, b, b[:5].detach(), a.detach().repeat(2, 1)[:7], student_scale=scale, teacher_scale=30.0,
                       impl="chunked").backward()
    assert scale.grad is not None and scale.grad.shape == scale.shape and scale.grad.abs().item() > 0


def test_mismatched_shapes_are_value_errors():
    a, b = _features(5, 4, 0), _features(6, 4, 1)
    with pytest.raises(ValueError, match="paired"):
        contrastive_loss(a, b, 10.0, impl="chunked")
    with pytest.raises(ValueError, match="same rows"):
        similarity_kl_loss(a, b, b, b, student_scale=1.0, teacher_scale=1.0, impl="chunked")


def test_distributed_true_without_process_group_is_an_error():
    a, b = _features(4, 3, 0), _features(4, 3, 1)
    with pytest.raises(RuntimeError, match="not initialised"):
        contrastive_loss(a, b, 10.0, impl="chunked", distributed=True)


def test_package_imports_and_runs_without_triton():
    """Triton is optional: with it unimportable, ``auto`` falls back to ``chunked`` and ``triton`` explains."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(K.__file__))))
    script = "\n".join([
        "import sys; sys.modules['triton'] = None",
        "import torch",
        "from openclip_distill.kernels import contrastive_loss",
        "a = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)",
        "assert torch.isfinite(contrastive_loss(a, a.flip(0), 10.0))",
        "try:",
        "    contrastive_loss(a, a, 10.0, impl='triton')",
        "except RuntimeError as err:",
        "    assert 'not importable' in str(err), err",
        "else:",
        "    raise AssertionError('impl=triton without triton must raise')",
    ])
    extra = [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root] + extra))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
