"""Fused similarity losses (``chunked``, ``triton``) against the materialised fp32 oracle (``naive``).

Values and gradients for every student input and the logit scale, on ragged rectangular shapes, feature
widths that are not powers of two, ``student_b is teacher_b`` (frozen teacher text tower), ``student_b is
student_a`` (self-similarity), temperatures != 1, fp32 and bf16 inputs.

The Triton kernels run in Triton's CPU interpreter: one subprocess (this file run as a script with
``TRITON_INTERPRET=1`` set before Triton is imported) evaluates every case; the tests compare its results.
"""
import os
import subprocess
import sys
import tempfile
import zlib

import pytest
import torch
import torch.nn.functional as F

import openclip_distill.kernels as K
from openclip_distill.kernels import chunked, contrastive_loss, similarity_kl_loss

# (name, N, M, d_student, d_teacher, student_b mode, bidirectional, temperature, dtype)
KL_CASES = [
    ("rect-bi", 37, 23, 19, 19, "own", True, 1.0, "float32"),
    ("rect-rows", 37, 23, 19, 19, "own", False, 1.0, "float32"),
    ("wide-tau3", 5, 41, 33, 12, "own", True, 3.0, "float32"),
    ("tiny", 1, 1, 1, 1, "own", True, 1.0, "float32"),
    ("teacher-b", 29, 34, 24, 24, "teacher_b", True, 7.0, "float32"),
    ("self-sim", 31, 31, 17, 21, "student_a", True, 7.0, "float32"),
    ("self-sim-rows", 31, 31, 17, 21, "student_a", False, 7.0, "float32"),
    ("rect-bi-bf16", 37, 23, 19, 19, "own", True, 1.0, "bfloat16"),
    ("teacher-b-bf16", 29, 34, 24, 24, "teacher_b", True, 0.5, "bfloat16"),
    ("self-sim-bf16", 31, 31, 17, 21, "student_a", True, 7.0, "bfloat16"),
]
# (name, N, d, dtype, scale kind)
INFONCE_CASES = [
    ("ragged", 37, 19, "float32", "param"),
    ("one", 1, 3, "float32", "float"),
    ("square", 40, 40, "float32", "one-element"),
    ("ragged-bf16", 37, 19, "bfloat16", "param"),
]


def _normalized(*shape, generator, dtype):
    """Unit rows clustered around one direction (cosines ~0.5-0.9, like CLIP embeddings): at scale 100 the
    softmaxes spread over many entries instead of collapsing onto a single one."""
    center = torch.randn(shape[-1], generator=generator)
    x = torch.randn(*shape, generator=generator) + 1.5 * center / center.norm() * shape[-1] ** 0.5
    return F.normalize(x, dim=-1).to(getattr(torch, dtype))


def kl_inputs(case):
    """Student/teacher features (scale 100, as DIME-FM) and the tensors that must receive gradient."""
    name, n, m, d_s, d_t, mode, bidirectional, temperature, dtype = case
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    student_a = _normalized(n, d_s, generator=g, dtype=dtype).requires_grad_()
    teacher_a = _normalized(n, d_t, generator=g, dtype=dtype)
    student_scale = torch.tensor(100.0 * (1 + 0.1 * torch.rand((), generator=g).item()), requires_grad=True)
    if mode == "own":
        student_b = _normalized(m, d_s, generator=g, dtype=dtype).requires_grad_()
        teacher_b = _normalized(m, d_t, generator=g, dtype=dtype)
        wrt = {"student_a": student_a, "student_b": student_b}
    elif mode == "teacher_b":  # DIME-FM frozen teacher text tower: the student reuses teacher_b
        assert d_s == d_t
        teacher_b = _normalized(m, d_t, generator=g, dtype=dtype)
        student_b = teacher_b
        wrt = {"student_a": student_a}
    else:  # L_udist self-similarity: student_b is student_a, teacher_b is teacher_a
        student_b, teacher_b = student_a, teacher_a
        wrt = {"student_a": student_a}
    wrt["student_scale"] = student_scale
    kwargs = dict(student_scale=student_scale, teacher_scale=100.0, temperature=temperature,
                  bidirectional=bidirectional)
    return (student_a, student_b, teacher_a, teacher_b), kwargs, wrt


def kl_result(case, impl):
    inputs, kwargs, wrt = kl_inputs(case)
    loss = similarity_kl_loss(*inputs, impl=impl, **kwargs)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach(), **{k: v.float() for k, v in zip(wrt, grads)}}


def infonce_inputs(case):
    name, n, d, dtype, scale_kind = case
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    images = _normalized(n, d, generator=g, dtype=dtype).requires_grad_()
    texts = _normalized(n, d, generator=g, dtype=dtype).requires_grad_()
    wrt = {"images": images, "texts": texts}
    if scale_kind == "float":
        scale = 100.0
    else:
        scale = torch.full((1,) if scale_kind == "one-element" else (), 1 / 0.07, requires_grad=True)
        wrt["scale"] = scale
    return (images, texts, scale), wrt


def infonce_result(case, impl):
    inputs, wrt = infonce_inputs(case)
    loss = contrastive_loss(*inputs, impl=impl)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach(), **{k: v.float() for k, v in zip(wrt, grads)}}


def assert_matches_oracle(result, expected, dtype, grad_tol):
    """Loss within fp32 round-off; gradients within ``grad_tol`` relative to their largest entry."""
    torch.testing.assert_close(result["loss"], expected["loss"], rtol=2e-5, atol=2e-5)
    assert result.keys() == expected.keys()
    for name in expected:
        if name == "loss":
            continue
        want, got = expected[name], result[name]
        assert torch.isfinite(got).all(), name
        err = (got - want).abs().max().item()
        ref = want.abs().max().item()
        assert err <= grad_tol * ref + 1e-7, f"{name}: max abs err {err:.3g} vs max |grad| {ref:.3g} ({dtype})"


# fp32: gradients differ from the oracle only by summation order. bf16: both sides compute in fp32 from the
# same bf16 values and round the gradient to bf16 (a rounding flip is one bf16 ulp, <= 2^-7 of |grad|);
# Triton also rounds G to bf16 for its tensor-core gradient matmuls (Flash-Attention's choice), hence its
# looser bf16 bound.
GRAD_TOL = {("chunked", "float32"): 2e-5, ("chunked", "bfloat16"): 1e-2,
            ("triton", "float32"): 2e-5, ("triton", "bfloat16"): 3e-2}


@pytest.fixture
def small_chunks(monkeypatch):
    """7-row tiles: several chunks per case, the last one ragged."""
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_ROWS", 7)


@pytest.mark.parametrize("case", KL_CASES, ids=[c[0] for c in KL_CASES])
def test_chunked_kl_matches_naive(case, small_chunks):
    assert_matches_oracle(kl_result(case, "chunked"), kl_result(case, "naive"), case[-1],
                          GRAD_TOL[("chunked", case[-1])])


@pytest.mark.parametrize("case", INFONCE_CASES, ids=[c[0] for c in INFONCE_CASES])
def test_chunked_infonce_matches_naive(case, small_chunks):
    assert_matches_oracle(infonce_result(case, "chunked"), infonce_result(case, "naive"), case[3],
                          GRAD_TOL[("chunked", case[3])])


def test_chunked_default_tile_matches_naive():
    case = ("default-tile", 37, 23, 19, 19, "own", True, 2.0, "float32")
    assert_matches_oracle(kl_result(case, "chunked"), kl_result(case, "naive"), "float32", 2e-5)


def test_teacher_gets_no_gradient_and_student_b_shared_with_teacher(small_chunks):
    g = torch.Generator().manual_seed(0)
    teacher_b = _normalized(9, 8, generator=g, dtype="float32").requires_grad_()  # even if it asks for one
    student_a = _normalized(6, 8, generator=g, dtype="float32").requires_grad_()
    teacher_a = _normalized(6, 8, generator=g, dtype="float32").requires_grad_()
    loss = similarity_kl_loss(student_a, teacher_b.detach(), teacher_a, teacher_b, student_scale=50.0,
                              teacher_scale=50.0, impl="chunked")
    loss.backward()
    assert teacher_a.grad is None and teacher_b.grad is None
    assert student_a.grad is not None and student_a.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_identical_student_and_teacher_give_zero_kl(impl):
    g = torch.Generator().manual_seed(1)
    a, b = _normalized(11, 6, generator=g, dtype="float32"), _normalized(13, 6, generator=g, dtype="float32")
    loss = similarity_kl_loss(a, b, a, b, student_scale=100.0, teacher_scale=100.0, impl=impl)
    assert abs(loss.item()) < 1e-5


def test_chunked_saves_only_linear_state(small_chunks):
    """Forward keeps the inputs plus O(N + M) fp32 statistics, never an N x M tile."""
    case = ("saved", 37, 23, 19, 19, "own", True, 1.0, "float32")
    inputs, kwargs, _ = kl_inputs(case)
    loss = similarity_kl_loss(*inputs, impl="chunked", **kwargs)
    node = loss.grad_fn
    while type(node).__name__ != "ChunkedSimilarityKLBackward":
        node = node.next_functions[0][0]
    extra = [t for t in node.saved_tensors if t.dim() > 0 and not any(t.data_ptr() == x.data_ptr() for x in inputs)]
    assert sum(t.numel() for t in extra) <= 2 * (37 + 23), [t.shape for t in extra]


# ----------------------------------------------------------------------------------------- triton (interpreter)

def _run_triton_worker(path):
    """This file as a script under TRITON_INTERPRET=1: every case's naive and triton results to ``path``."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(K.__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def triton_results():
    pytest.importorskip("triton")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.pt")
        _run_triton_worker(path)
        return torch.load(path)


@pytest.mark.parametrize("case", KL_CASES, ids=[c[0] for c in KL_CASES])
def test_triton_kl_matches_naive(case, triton_results):
    got, want = triton_results["kl", case[0]]
    assert_matches_oracle(got, want, case[-1], GRAD_TOL[("triton", case[-1])])


@pytest.mark.parametrize("case", INFONCE_CASES, ids=[c[0] for c in INFONCE_CASES])
def test_triton_infonce_matches_naive(case, triton_results):
    got, want = triton_results["infonce", case[0]]
    assert_matches_oracle(got, want, case[3], GRAD_TOL[("triton", case[3])])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_on_gpu_matches_naive(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = ("gpu", 1000, 777, 200, 264, "own", True, 1.0, dtype)

    def on_gpu(impl):
        (sa, sb, ta, tb), kwargs, wrt = kl_inputs(case)
        moved = [x.detach().cuda().requires_grad_(x.requires_grad) for x in (sa, sb, ta, tb)]
        scale = kwargs["student_scale"].detach().cuda().requires_grad_()
        kwargs["student_scale"] = scale
        loss = similarity_kl_loss(*moved, impl=impl, **kwargs)
        grads = torch.autograd.grad(loss, [moved[0], moved[1], scale])
        return {"loss": loss.detach().cpu(), **{k: g.float().cpu() for k, g in zip(wrt, grads)}}

    assert_matches_oracle(on_gpu("triton"), on_gpu("naive"), dtype, GRAD_TOL[("triton", dtype)])


if __name__ == "__main__":  # worker: python test_kernels_similarity.py OUT.pt (with TRITON_INTERPRET=1)
    assert os.environ.get("TRITON_INTERPRET") == "1"
    results = {}
    for case in KL_CASES:
        results["kl", case[0]] = (kl_result(case, "triton"), kl_result(case, "naive"))
    for case in INFONCE_CASES:
        results["infonce", case[0]] = (infonce_result(case, "triton"), infonce_result(case, "naive"))
    torch.save(results, sys.argv[1])
