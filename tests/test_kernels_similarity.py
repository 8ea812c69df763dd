"""Fused similarity losses (``chunked``, ``triton``) against the materialised fp32 oracle (``naive``).

Values and gradients for every student input and the logit scale, on ragged rectangular shapes, feature
widths that are not powers of two, ``student_b is teacher_b`` (frozen teacher text tower), ``student_b is
student_a`` (self-similarity), bidirectional and rows only, temperatures != 1, fp32, bf16 and fp16 inputs,
always against the oracle computed in float64 on the same input values, with norm tolerances derived from
the arithmetic (see ``grad_rtol``), so the tests do not depend on summation order or thread count.

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
    ("rect-rows-bf16", 37, 23, 19, 19, "own", False, 1.0, "bfloat16"),
    ("teacher-b-bf16", 29, 34, 24, 24, "teacher_b", True, 0.5, "bfloat16"),
    ("self-sim-bf16", 31, 31, 17, 21, "student_a", True, 7.0, "bfloat16"),
    ("self-sim-rows-bf16", 31, 31, 17, 21, "student_a", False, 7.0, "bfloat16"),
    ("rect-bi-fp16", 37, 23, 19, 19, "own", True, 1.0, "float16"),
    ("rect-rows-fp16", 37, 23, 19, 19, "own", False, 1.0, "float16"),
    ("teacher-b-fp16", 29, 34, 24, 24, "teacher_b", True, 3.0, "float16"),
    ("self-sim-fp16", 31, 31, 17, 21, "student_a", True, 7.0, "float16"),
    ("self-sim-rows-fp16", 31, 31, 17, 21, "student_a", False, 7.0, "float16"),
]
# (name, N, d, dtype, scale kind)
INFONCE_CASES = [
    ("ragged", 37, 19, "float32", "param"),
    ("one", 1, 3, "float32", "float"),
    ("square", 40, 40, "float32", "one-element"),
    ("ragged-bf16", 37, 19, "bfloat16", "param"),
    ("ragged-fp16", 37, 19, "float16", "param"),
]
# Backward panels in the interpreter: 13 rows, so most cases have several, the last one ragged.
INTERPRETER_PANEL_ROWS = 13


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


def _widened(tensors, wrt):
    """float64 leaves for ``tensors`` (each distinct tensor once, so sharing is kept) and the matching ``wrt``."""
    made = {}

    def widen(x):
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) not in made:
            made[id(x)] = x.detach().double().requires_grad_(x.requires_grad)
        return made[id(x)]

    return [widen(x) for x in tensors], {k: widen(v) for k, v in wrt.items()}


def kl_result(case, impl, float64=False):
    """Loss and gradients (float64) of one case; ``float64``: the same input values, computed in float64."""
    inputs, kwargs, wrt = kl_inputs(case)
    if float64:
        inputs, wrt = _widened(list(inputs) + [kwargs["student_scale"]], wrt)
        kwargs["student_scale"] = inputs.pop()
    loss = similarity_kl_loss(*inputs, impl=impl, **kwargs)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach().double(), **{k: v.double() for k, v in zip(wrt, grads)}}


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


def infonce_result(case, impl, float64=False):
    inputs, wrt = infonce_inputs(case)
    if float64:
        inputs, wrt = _widened(list(inputs), wrt)
    loss = contrastive_loss(*inputs, impl=impl)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach().double(), **{k: v.double() for k, v in zip(wrt, grads)}}


# Tolerances derived from the arithmetic, not from observed errors; every comparison is against the float64
# oracle on the *same* input values, in norms (robust to summation order and to thread counts):
# * fp32 arithmetic: logits of size ~s (logit scale <= 110 here) carry ~s * u32 absolute error (u32 = 2^-24
#   unit round-off, summation of d products adds a small factor), which moves softmaxes, hence losses and
#   gradients, by ~s * u32 relative: bound 16 * 110 * 2^-24 ~ 1e-4 (loss: absolute, it is a difference of
#   O(s) terms).
# * 16-bit inputs: both paths compute in fp32, then round the gradient to the input dtype (one rounding,
#   u16 = 2^-9 bf16, 2^-11 fp16); Triton also rounds the tile gradient G to the operand dtype before its
#   GEMMs (one more u16, Flash-Attention's choice). Bound: 4 u16 (chunked), 8 u16 (triton).
U32, U16 = 2.0 ** -24, {"bfloat16": 2.0 ** -9, "float16": 2.0 ** -11}
FP32_RTOL = 16 * 110 * U32
LOSS_ATOL = 16 * 110 * U32


def grad_rtol(impl, dtype):
    if dtype == "float32":
        return FP32_RTOL
    return FP32_RTOL + (8 if impl == "triton" else 4) * U16[dtype]


def relative_error(got, want):
    """``||got - want|| / ||want||`` (Frobenius; 0 for an all-zero reference matched exactly)."""
    err, ref = (got.double() - want.double()).norm().item(), want.double().norm().item()
    return err / ref if ref > 0 else err


def assert_matches_oracle(result, expected, rtol, loss_atol=LOSS_ATOL):
    """Loss within ``loss_atol``; every gradient within ``rtol`` of the reference in norm."""
    assert result.keys() == expected.keys()
    assert abs(result["loss"].item() - expected["loss"].item()) <= loss_atol * max(1.0, abs(expected["loss"].item())), \
        (result["loss"].item(), expected["loss"].item())
    for name in expected:
        if name == "loss":
            continue
        assert torch.isfinite(result[name]).all(), name
        err = relative_error(result[name], expected[name])
        assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:.3g}"


@pytest.fixture
def small_chunks(monkeypatch):
    """7-row tiles: several chunks per case, the last one ragged."""
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_ROWS", 7)


# float64 end to end: chunked and naive are then the same mathematics up to fp64 round-off (tight bound).
F64_RTOL = 1e-10


@pytest.mark.parametrize("case", KL_CASES, ids=[c[0] for c in KL_CASES])
def test_chunked_kl_matches_naive_in_float64(case, small_chunks):
    assert_matches_oracle(kl_result(case, "chunked", float64=True), kl_result(case, "naive", float64=True),
                          F64_RTOL, loss_atol=F64_RTOL)


@pytest.mark.parametrize("case", KL_CASES, ids=[c[0] for c in KL_CASES])
def test_chunked_kl_matches_naive(case, small_chunks):
    assert_matches_oracle(kl_result(case, "chunked"), kl_result(case, "naive", float64=True),
                          grad_rtol("chunked", case[-1]))


@pytest.mark.parametrize("case", INFONCE_CASES, ids=[c[0] for c in INFONCE_CASES])
def test_chunked_infonce_matches_naive_in_float64(case, small_chunks):
    assert_matches_oracle(infonce_result(case, "chunked", float64=True), infonce_result(case, "naive", float64=True),
                          F64_RTOL, loss_atol=F64_RTOL)


@pytest.mark.parametrize("case", INFONCE_CASES, ids=[c[0] for c in INFONCE_CASES])
def test_chunked_infonce_matches_naive(case, small_chunks):
    assert_matches_oracle(infonce_result(case, "chunked"), infonce_result(case, "naive", float64=True),
                          grad_rtol("chunked", case[3]))


def test_chunked_default_tile_matches_naive():
    case = ("default-tile", 37, 23, 19, 19, "own", True, 2.0, "float32")
    assert_matches_oracle(kl_result(case, "chunked"), kl_result(case, "naive", float64=True), FP32_RTOL)


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

def rowwise_relative_errors(got, want):
    """Per row ``||got_i - want_i|| / ||want_i||`` (rows with a zero reference left out)."""
    got, want = got.double(), want.double()
    ref = want.norm(dim=1)
    keep = ref > 0
    return (got - want).norm(dim=1)[keep] / ref[keep]


def _layout_emulating_batch(num_cols, batch):
    from openclip_distill.kernels.layout import LossLayout
    return LossLayout.local(num_cols, row_weight=0.5 / batch, col_weight=0.5 / batch)


def emulated_large_batch_fp16():
    """fp16 InfoNCE and KL on a 37-row block with the loss weights of a 65536-row batch (0.5/N, 1/N):
    Triton's gradients against chunked on the same fp16 values in float64 (direct calls: the public API
    derives the weights from the block's own size). The upstream gradient is 2^16, torch.amp.GradScaler's
    initial loss scale, which keeps fp16 *input gradients* of such a batch out of the subnormal range."""
    from openclip_distill.kernels import triton_ops
    g = torch.Generator().manual_seed(11)
    rows = _normalized(37, 19, generator=g, dtype="float16")
    cols = _normalized(37, 19, generator=g, dtype="float16")
    teacher = [_normalized(37, 12, generator=g, dtype="float16") for _ in range(2)]
    scale = torch.tensor(100.0)
    out = {}
    for name, layout in [("infonce", _layout_emulating_batch(37, 65536)),
                         ("kl", _layout_emulating_batch(37, 32768))]:  # 2 x 0.5/32768 = 1/N of N = 32768
        results = []
        for impl, dtype in [("triton", None), ("chunked", torch.float64)]:
            x = rows.to(dtype or rows.dtype).requires_grad_()
            y = cols.to(dtype or cols.dtype).requires_grad_()
            s = scale.to(dtype or scale.dtype)
            if name == "infonce":
                fn = triton_ops.infonce_triton if impl == "triton" else chunked.infonce_chunked
                loss = fn(x, y, s, layout)
            else:
                fn = triton_ops.similarity_kl_triton if impl == "triton" else chunked.similarity_kl_chunked
                ta, tb = (t.to(dtype or t.dtype) for t in teacher)
                loss = fn(x, y, ta, tb, s, s, layout)
            upstream = torch.tensor(2.0 ** 16, dtype=loss.dtype)
            results.append([gr.double() for gr in torch.autograd.grad(loss, [x, y], upstream)])
        out[name] = results
    return out


def confident_rows_bf16():
    """bf16 InfoNCE where every image is almost its own text (p_ii ~ 1 at scale 100): the gradient of a row is
    ``(p_ii - 1) t_i + sum_{j != i} p_ij t_j``, all of it from small differences to 1."""
    g = torch.Generator().manual_seed(12)
    images = _normalized(37, 19, generator=g, dtype="float32")
    texts = F.normalize(images + 0.15 * torch.randn(images.shape, generator=g), dim=-1)
    images, texts = images.bfloat16(), texts.bfloat16()
    logits = 100.0 * images.double() @ texts.double().T
    results = [torch.minimum(1 - logits.softmax(1).diag(), 1 - logits.softmax(0).diag())]
    for impl, dtype in [("triton", torch.bfloat16), ("chunked", torch.float64)]:
        x, y = images.to(dtype).requires_grad_(), texts.to(dtype).requires_grad_()
        loss = contrastive_loss(x, y, 100.0, impl=impl)
        results.append([gr.double() for gr in torch.autograd.grad(loss, [x, y])])
    return results


def _run_triton_worker(path):
    """This file as a script under TRITON_INTERPRET=1: every case's triton results and references to ``path``."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(K.__file__))))
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, capture_output=True,
                          text=True, timeout=900)
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
    assert_matches_oracle(got, want, grad_rtol("triton", case[-1]))


@pytest.mark.parametrize("case", INFONCE_CASES, ids=[c[0] for c in INFONCE_CASES])
def test_triton_infonce_matches_naive(case, triton_results):
    got, want = triton_results["infonce", case[0]]
    assert_matches_oracle(got, want, grad_rtol("triton", case[3]))


@pytest.mark.parametrize("loss", ["infonce", "kl"])
def test_triton_fp16_gradients_keep_precision_at_large_batch_weights(triton_results, loss):
    """The ~1/N loss weight is applied after the fp16 tile is formed: multiplied in before the cast it pushes
    the tile into fp16 subnormals (10-bit precision lost gradually below 6e-5) and rows lose several % of their
    gradient. Bound: the 8 u16 of ``grad_rtol`` per row."""
    (got_rows, got_cols), (want_rows, want_cols) = triton_results["defect", "fp16-large-batch"][loss]
    for got, want in [(got_rows, want_rows), (got_cols, want_cols)]:
        worst = rowwise_relative_errors(got, want).max().item()
        assert worst <= 8 * U16["float16"], worst


def test_triton_bf16_infonce_keeps_the_gradient_of_confident_rows(triton_results):
    """The diagonal target enters the tile before its bf16 rounding: subtracted after, ``p_ii - 1`` is lost in
    the rounding of ``p_ii ~ 1`` and confident rows get gradients of the wrong size."""
    slack, (got_images, got_texts), (want_images, want_texts) = triton_results["defect", "bf16-confident"]
    # Rows with 1 - p_ii >= 1e-3: there fp32 itself resolves the gradient (logits carry ~100 u32 absolute
    # error, i.e. <= 1e-2 of 1 - p_ii), so the bound is 8 u16 plus that. (12 of the 37 rows.)
    resolved = slack >= 1e-3
    assert resolved.sum() >= 10
    for got, want in [(got_images, want_images), (got_texts, want_texts)]:
        worst = rowwise_relative_errors(got[resolved], want[resolved]).max().item()
        assert worst <= 8 * U16["bfloat16"] + 1e-2, worst


# ----------------------------------------------------------------------------------------- triton (GPU)

GPU_KL_CASES = [
    ("gpu-rect-bi", 1000, 777, 200, 264, "own", True, 1.0),
    ("gpu-rect-rows", 1000, 777, 200, 264, "own", False, 1.0),
    ("gpu-teacher-b", 1000, 777, 256, 256, "teacher_b", True, 3.0),
    ("gpu-self-sim", 900, 900, 200, 264, "student_a", True, 7.0),
    ("gpu-self-sim-rows", 900, 900, 200, 264, "student_a", False, 7.0),
]
GPU_DTYPES = ["float32", "bfloat16", "float16"]


def _on_device(tensors, wrt, device, dtype=None):
    """Copies of ``tensors`` on ``device`` (optionally cast), sharing kept, and the matching ``wrt``."""
    made = {}

    def move(x):
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) not in made:
            made[id(x)] = x.detach().to(device=device, dtype=dtype or x.dtype).requires_grad_(x.requires_grad)
        return made[id(x)]

    return [move(x) for x in tensors], {k: move(v) for k, v in wrt.items()}


def _gpu_kl(case, impl, dtype=None):
    inputs, kwargs, wrt = kl_inputs(case)
    moved, wrt = _on_device(list(inputs) + [kwargs["student_scale"]], wrt, "cuda", dtype)
    kwargs["student_scale"] = moved.pop()
    loss = similarity_kl_loss(*moved, impl=impl, **kwargs)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach().double().cpu(), **{k: g.double().cpu() for k, g in zip(wrt, grads)}}


def _gpu_infonce(case, impl, dtype=None):
    inputs, wrt = infonce_inputs(case)
    moved, wrt = _on_device(list(inputs), wrt, "cuda", dtype)
    loss = contrastive_loss(*moved, impl=impl)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return {"loss": loss.detach().double().cpu(), **{k: g.double().cpu() for k, g in zip(wrt, grads)}}


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", GPU_KL_CASES, ids=[c[0] for c in GPU_KL_CASES])
def test_triton_on_gpu_kl_matches_naive(case, dtype, monkeypatch):
    """Compiled kernels, every KL mode, several ragged backward panels, against the float64 oracle on the GPU."""
    from openclip_distill.kernels import triton_ops
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_ops, "panel_rows", lambda n, m, size: min(n, 384))
    case = case + (dtype,)
    assert_matches_oracle(_gpu_kl(case, "triton"), _gpu_kl(case, "naive", torch.float64), grad_rtol("triton", dtype))


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_triton_on_gpu_infonce_matches_naive(dtype, monkeypatch):
    from openclip_distill.kernels import triton_ops
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_ops, "panel_rows", lambda n, m, size: min(n, 384))
    case = ("gpu-infonce", 1000, 200, dtype, "param")
    assert_matches_oracle(_gpu_infonce(case, "triton"), _gpu_infonce(case, "naive", torch.float64),
                          grad_rtol("triton", dtype))


@needs_gpu
def test_triton_on_gpu_is_deterministic(monkeypatch):
    """No atomics: two runs give bitwise equal losses and gradients."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = GPU_KL_CASES[0] + ("bfloat16",)
    first, second = _gpu_kl(case, "triton"), _gpu_kl(case, "triton")
    assert all(torch.equal(first[k], second[k]) for k in first)


if __name__ == "__main__":  # worker: python test_kernels_similarity.py OUT.pt (with TRITON_INTERPRET=1)
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from openclip_distill.kernels import triton_ops
    triton_ops.panel_rows = lambda num_rows, num_cols, element_size: min(num_rows, INTERPRETER_PANEL_ROWS)
    results = {}
    for case in KL_CASES:
        results["kl", case[0]] = (kl_result(case, "triton"), kl_result(case, "naive", float64=True))
    for case in INFONCE_CASES:
        results["infonce", case[0]] = (infonce_result(case, "triton"), infonce_result(case, "naive", float64=True))
    results["defect", "fp16-large-batch"] = emulated_large_batch_fp16()
    results["defect", "bf16-confident"] = confident_rows_bf16()
    torch.save(results, sys.argv[1])
