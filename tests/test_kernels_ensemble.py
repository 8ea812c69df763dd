"""Similarity KL and entropy against a teacher ensemble (MobileCLIP's average after softmax).

``chunked`` and ``naive`` are checked against an independent float64 formula written here with explicit
probabilities (``exp / sum``, no log-softmax), values and gradients, for several K, unequal teacher widths
and scales; a one-teacher sequence is the single-teacher loss bit for bit.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

from openclip_distill.kernels import chunked, similarity_entropy, similarity_kl_loss
from openclip_distill.kernels.chunked_ensemble import similarity_kl_ensemble_chunked
from openclip_distill.kernels.layout import LossLayout

# (name, N, M, d_student, teacher widths, teacher scales, bidirectional, temperature, student_b mode)
CASES = [
    ("k2-rect-bi", 13, 9, 7, (7, 11), (100.0, 30.0), True, 1.0, "own"),
    ("k3-rows", 11, 17, 5, (4, 9, 6), (50.0, 100.0, 10.0), False, 3.0, "own"),
    ("k2-self-sim", 10, 10, 6, (8, 5), (100.0, 100.0), False, 7.0, "student_a"),
    ("k4-bi-tau", 9, 14, 8, (8, 3, 12, 8), (20.0, 60.0, 100.0, 5.0), True, 2.0, "own"),
    ("k2-one", 1, 1, 3, (3, 2), (10.0, 20.0), True, 1.0, "own"),
]


def _normalized(*shape, generator):
    center = torch.randn(shape[-1], generator=generator, dtype=torch.float64)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64) + center / center.norm() * shape[-1] ** 0.5
    return F.normalize(x, dim=-1)


def make_inputs(case):
    name, n, m, d_s, widths, scales, bidirectional, tau, mode = case
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    student_a = _normalized(n, d_s, generator=g)
    student_b = student_a if mode == "student_a" else _normalized(m, d_s, generator=g)
    teachers_a = [_normalized(n, d, generator=g) for d in widths]
    teachers_b = teachers_a if mode == "student_a" else [_normalized(m, d, generator=g) for d in widths]
    return student_a, student_b, teachers_a, teachers_b, list(scales), 90.0, bidirectional, tau


def formula(student_a, student_b, teachers_a, teachers_b, scales, student_scale, bidirectional, tau):
    """The ensemble KL from its definition in float64 (probabilities first, then logs)."""
    def softmax_rows(x):
        e = torch.exp(x - x.max(1, keepdim=True).values)
        return e / e.sum(1, keepdim=True)

    def kl(teacher_logits, student_logits):
        p = sum(softmax_rows(a / tau) for a in teacher_logits) / len(teacher_logits)
        q = softmax_rows(student_logits / tau)
        return (p * (torch.log(p) - torch.log(q))).sum(1).mean()

    t = [s * a.double() @ b.double().T for a, b, s in zip(teachers_a, teachers_b, scales)]
    st = student_scale * student_a @ student_b.T
    loss = kl(t, st)
    if bidirectional:
        loss = loss + kl([x.T for x in t], st.T)
    return loss


def run(impl, case, *, reference=False):
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, bidirectional, tau = make_inputs(case)
    a = student_a.clone().requires_grad_()
    b = a if student_b is student_a else student_b.clone().requires_grad_()
    scale = torch.tensor(s_scale, dtype=torch.float64, requires_grad=True)
    if reference:
        loss = formula(a, b, teachers_a, teachers_b, scales, scale, bidirectional, tau)
    else:
        loss = similarity_kl_loss(a, b, teachers_a, teachers_b, student_scale=scale,
                                  teacher_scale=[torch.tensor(s) for s in scales], temperature=tau,
                                  bidirectional=bidirectional, impl=impl)
    wrt = [a, scale] if b is a else [a, b, scale]
    return loss.detach(), torch.autograd.grad(loss, wrt)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_ROWS", 4)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ensemble_kl_matches_the_float64_formula(case, impl, small_chunks):
    loss, grads = run(impl, case)
    ref_loss, ref_grads = run(None, case, reference=True)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_ensemble_kl_in_float32_stays_close_to_float64(small_chunks):
    case = CASES[0]
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, bidirectional, tau = make_inputs(case)
    a32 = student_a.float().requires_grad_()
    loss = similarity_kl_loss(a32, student_b.float(), [t.float() for t in teachers_a], [t.float() for t in teachers_b],
                              student_scale=s_scale, teacher_scale=scales, impl="chunked")
    loss.backward()
    ref, (ref_grad, *_) = run(None, case, reference=True)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)
    assert (a32.grad.double() - ref_grad).norm() <= 1e-4 * ref_grad.norm()


@pytest.mark.parametrize("impl", ["chunked", "naive", "auto"])
def test_one_teacher_sequence_is_the_single_teacher_loss_bit_for_bit(impl, small_chunks):
    case = ("k1", 12, 9, 6, (6,), (70.0,), True, 2.0, "own")
    student_a, student_b, (ta,), (tb,), (ts,), s_scale, bidirectional, tau = make_inputs(case)
    kwargs = dict(student_scale=s_scale, temperature=tau, bidirectional=bidirectional, impl=impl)
    single = similarity_kl_loss(student_a.float(), student_b.float(), ta.float(), tb.float(), teacher_scale=ts,
                                **kwargs)
    listed = similarity_kl_loss(student_a.float(), student_b.float(), [ta.float()], [tb.float()], teacher_scale=[ts],
                                **kwargs)
    assert torch.equal(single, listed)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_ensemble_kernel_with_one_teacher_equals_the_single_teacher_kernel(bidirectional):
    """The K-teacher autograd function with K = 1 and the single-teacher one agree to fp64 round-off."""
    case = ("k1-kernel", 15, 11, 6, (9,), (40.0,), bidirectional, 1.0, "own")
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, _, _ = make_inputs(case)
    layout = LossLayout.local(11, row_weight=1 / 15, col_weight=1 / 11 if bidirectional else 0.0)
    a = student_a.clone().requires_grad_()
    s_mult, t_mult = torch.tensor(s_scale, dtype=torch.float64), torch.tensor(scales[0], dtype=torch.float64)
    ens = similarity_kl_ensemble_chunked(a, student_b, teachers_a, teachers_b, s_mult, [t_mult], layout, chunk_rows=4)
    (g_ens,) = torch.autograd.grad(ens, [a])
    one = chunked.similarity_kl_chunked(a, student_b, teachers_a[0], teachers_b[0], s_mult, t_mult, layout,
                                        chunk_rows=4)
    (g_one,) = torch.autograd.grad(one, [a])
    torch.testing.assert_close(ens, one, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_ens, g_one, rtol=1e-11, atol=1e-13)


def test_teachers_get_no_gradient():
    case = CASES[0]
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, _, _ = make_inputs(case)
    teachers_a = [t.clone().requires_grad_() for t in teachers_a]
    a = student_a.clone().requires_grad_()
    similarity_kl_loss(a, student_b, teachers_a, teachers_b, student_scale=s_scale, teacher_scale=scales,
                       impl="chunked").backward()
    assert all(t.grad is None for t in teachers_a) and a.grad.abs().sum() > 0


def test_identical_teachers_give_the_single_teacher_loss():
    """K copies of one teacher average to that teacher's softmax."""
    case = CASES[0]
    student_a, student_b, (ta, _), (tb, _), (s0, _), s_scale, _, _ = make_inputs(case)
    single = similarity_kl_loss(student_a, student_b, ta, tb, student_scale=s_scale, teacher_scale=s0, impl="naive")
    many = similarity_kl_loss(student_a, student_b, [ta] * 3, [tb] * 3, student_scale=s_scale, teacher_scale=[s0] * 3,
                              impl="chunked")
    torch.testing.assert_close(many, single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_ensemble_entropy_matches_the_float64_formula(bidirectional):
    case = CASES[3]
    _, _, teachers_a, teachers_b, scales, _, _, tau = make_inputs(case)

    def entropy_rows(ts):
        p = sum(torch.softmax(t / tau, 1) for t in ts) / len(ts)
        return -(p * torch.log(p)).sum(1).mean()

    t = [s * a @ b.T for a, b, s in zip(teachers_a, teachers_b, scales)]
    ref = entropy_rows(t) + (entropy_rows([x.T for x in t]) if bidirectional else 0.0)
    got = similarity_entropy(teachers_a, teachers_b, scales, temperature=tau, bidirectional=bidirectional, tile=4)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    one = similarity_entropy(teachers_a[:1], teachers_b[:1], scales[:1], temperature=tau, bidirectional=bidirectional)
    assert torch.equal(one, similarity_entropy(teachers_a[0], teachers_b[0], scales[0], temperature=tau,
                                               bidirectional=bidirectional))


def test_ensemble_refuses_triton_and_unequal_lists():
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, _, _ = make_inputs(CASES[0])
    with pytest.raises(ValueError, match=r"--distill-teacher .*--loss-impl chunked\|naive"):
        similarity_kl_loss(student_a, student_b, teachers_a, teachers_b, student_scale=s_scale, teacher_scale=scales,
                           impl="triton")
    with pytest.raises(ValueError, match="as many"):
        similarity_kl_loss(student_a, student_b, teachers_a, teachers_b[:1], student_scale=s_scale,
                           teacher_scale=scales, impl="chunked")


def test_chunked_ensemble_keeps_fp32_logits_under_autocast(small_chunks):
    """Losses run under the student's AMP autocast: the ensemble's matmuls must not drop to bf16."""
    student_a, student_b, teachers_a, teachers_b, scales, s_scale, _, _ = make_inputs(CASES[0])
    args = [x.float() for x in (student_a, student_b)]
    kwargs = dict(student_scale=s_scale, teacher_scale=scales, impl="chunked")
    plain = similarity_kl_loss(*args, [t.float() for t in teachers_a], [t.float() for t in teachers_b], **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = similarity_kl_loss(*args, [t.float() for t in teachers_a], [t.float() for t in teachers_b], **kwargs)
        entropy = similarity_entropy([t.float() for t in teachers_a], [t.float() for t in teachers_b], scales)
    assert amp.dtype == torch.float32 and torch.equal(amp, plain)
    assert torch.equal(entropy, similarity_entropy([t.float() for t in teachers_a], [t.float() for t in teachers_b],
                                                   scales))
