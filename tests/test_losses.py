"""DIME-FM terms and clip-distill against independent formulas (and OpenCLIP's DistillClipLoss)."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

import openclip_distill
from openclip_distill import DimeFMLoss, create_distill_loss, list_losses, register_loss

from numerics import assert_close_in_norm, rounding_tolerance

S = 100.0
# Everything below is float64 (the naive kernels keep float64), compared with float64 formulas written
# out here: the two differ only by summation order. Bound (numerics.rounding_tolerance): amplification
# S / tau_min = 100 (a relative error of the features moves the logits, hence the softmaxes, by up to
# 100x as much), terms 16 (the longest accumulation: the 16-wide dot products; batches are <= 9).
TOL64 = rounding_tolerance(torch.float64, terms=16, amplification=S)


def kl_rows(a, b, tau):
    """mean_i sum_j p_ij log(p_ij / q_ij), p = softmax(a/tau), q = softmax(b/tau) -- written out."""
    p = torch.softmax(a.double() / tau, dim=1)
    q = torch.softmax(b.double() / tau, dim=1)
    return (p * (p.log() - q.log())).sum(1).mean()


def n(x):
    return x / x.norm(dim=1, keepdim=True)


def feats(seed, ni=6, nt=9, d=16):
    g = torch.Generator().manual_seed(seed)
    v_s = torch.randn(ni, d, generator=g, dtype=torch.float64)
    v_t = torch.randn(ni, d, generator=g, dtype=torch.float64)
    t_t = torch.randn(nt, d, generator=g, dtype=torch.float64)
    t_s = torch.randn(nt, d, generator=g, dtype=torch.float64)
    return v_s, v_t, t_t, t_s


def reference_dime_fm(v_s, v_t, t_t, t_s, w=(0.7, 0.3, 0.0), tau=(1.0, 3.0, 7.0)):
    v_s, v_t, t_t = n(v_s), n(v_t), n(t_t)
    t = t_t if t_s is None else n(t_s)
    a, b = S * v_t @ t_t.T, S * v_s @ t.T
    vl = kl_rows(a, b, tau[0]) + kl_rows(a.T, b.T, tau[0])
    pvl = 2 * kl_rows(S * v_t @ v_t.T, S * v_s @ v_t.T, tau[1])
    ud = 2 * kl_rows(S * v_t @ v_t.T, S * v_s @ v_s.T, tau[2])
    if t_s is not None:
        pvl = pvl + 2 * kl_rows(S * t_t @ t_t.T, S * t @ t_t.T, tau[1])
        ud = ud + 2 * kl_rows(S * t_t @ t_t.T, S * t @ t.T, tau[2])
    return {"vl_loss": w[0] * vl, "pvl_loss": w[1] * pvl, "udist_loss": w[2] * ud}


@pytest.mark.parametrize("train_text", [False, True])
@pytest.mark.parametrize("weights", [(0.7, 0.3, 0.0), (0.5, 0.2, 0.3), (0.0, 0.0, 1.0)])
def test_dime_fm_terms_match_reference(train_text, weights):
    v_s, v_t, t_t, t_s = feats(0)
    loss = DimeFMLoss(vl_weight=weights[0], pvl_weight=weights[1], udist_weight=weights[2], impl="naive")
    got = loss(v_s * 3.0, v_t * 0.5, t_t * 2.0, text_features=t_s if train_text else None, output_dict=True)
    want = reference_dime_fm(v_s, v_t, t_t, t_s if train_text else None, weights)
    for k in want:
        assert got[k].dtype == torch.float64
        assert_close_in_norm(got[k], want[k], TOL64, k)
    total = loss(v_s, v_t, t_t, text_features=t_s if train_text else None)
    assert_close_in_norm(total, sum(want.values()), TOL64, "total")


def test_dime_fm_gradients_match_reference():
    v_s, v_t, t_t, t_s = feats(1)
    a = v_s.clone().requires_grad_(True)
    b = t_s.clone().requires_grad_(True)
    DimeFMLoss(udist_weight=0.4, impl="naive")(a, v_t, t_t, text_features=b).backward()
    a2 = v_s.clone().requires_grad_(True)
    b2 = t_s.clone().requires_grad_(True)
    sum(reference_dime_fm(a2, v_t, t_t, b2, (0.7, 0.3, 0.4)).values()).backward()
    assert_close_in_norm(a.grad, a2.grad, TOL64, "image grad")
    assert_close_in_norm(b.grad, b2.grad, TOL64, "text grad")


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_half_precision_features_give_an_fp32_loss(impl):
    """bf16 features: logits and softmaxes in fp32 (float64 ones stay float64, checked above)."""
    half = [x.to(torch.bfloat16).requires_grad_(True) for x in feats(7)]
    loss = DimeFMLoss(udist_weight=0.3, impl=impl)(half[0], half[1], half[2], text_features=half[3])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert half[0].grad.dtype == torch.bfloat16


def test_dime_fm_perfect_student_has_zero_loss_and_teacher_gets_no_grad():
    v_s, v_t, t_t, _ = feats(2)
    teacher_img = v_t.clone().requires_grad_(True)
    loss = DimeFMLoss(udist_weight=1.0, impl="naive")(v_t.clone(), teacher_img, t_t, output_dict=True)
    for v in loss.values():
        assert abs(float(v)) < 1e-5
    assert not sum(loss.values()).requires_grad or teacher_img.grad is None


def test_dime_fm_temperature_changes_value():
    v_s, v_t, t_t, _ = feats(3)
    a = DimeFMLoss(impl="naive")(v_s, v_t, t_t)
    b = DimeFMLoss(vl_temperature=2.0, impl="naive")(v_s, v_t, t_t)
    assert abs(float(a) - float(b)) > 1e-3


def test_clip_distill_matches_openclip_distill_loss():
    g = torch.Generator().manual_seed(4)
    img, txt, t_img, t_txt = (n(torch.randn(8, 12, generator=g, dtype=torch.float64)) for _ in range(4))
    scale, t_scale = torch.tensor(14.0, dtype=torch.float64), torch.tensor(50.0, dtype=torch.float64)
    ours = create_distill_loss("clip-distill", impl="naive")(img, txt, scale, t_img, t_txt, t_scale, output_dict=True)
    ref = DistillClipLoss()(img, txt, scale, t_img, t_txt, t_scale, output_dict=True)
    for k in ("contrastive_loss", "distill_loss"):
        assert ours[k].dtype == torch.float64
        assert_close_in_norm(ours[k], ref[k], TOL64, k)


def test_clip_distill_gradients_match_openclip():
    g = torch.Generator().manual_seed(5)
    base = [n(torch.randn(6, 10, generator=g, dtype=torch.float64)) for _ in range(4)]
    grads = []
    for fn in (lambda *a: sum(create_distill_loss("clip-distill", impl="naive")(*a, output_dict=True).values()),
               lambda *a: sum(DistillClipLoss()(*a, output_dict=True).values())):
        img, txt = base[0].clone().requires_grad_(True), base[1].clone().requires_grad_(True)
        scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
        fn(img, txt, scale, base[2], base[3], torch.tensor(30.0, dtype=torch.float64)).backward()
        grads.append((img.grad, txt.grad, scale.grad))
    for a, b, what in zip(*grads, ("image", "text", "scale")):
        assert_close_in_norm(a, b, TOL64, what)


def test_clip_distill_accepts_siglip_teacher_bias():
    g = torch.Generator().manual_seed(6)
    x = [n(torch.randn(5, 8, generator=g)) for _ in range(4)]
    loss = create_distill_loss("clip-distill", impl="naive")
    a = loss(*x[:2], torch.tensor(10.0), *x[2:], torch.tensor(10.0), dist_logit_bias=torch.tensor(-10.0))
    b = loss(*x[:2], torch.tensor(10.0), *x[2:], torch.tensor(10.0))
    torch.testing.assert_close(a, b)


def test_registry():
    assert {"dime-fm", "clip-distill"} <= set(list_losses())

    @register_loss("test-registry-double")
    class Double(torch.nn.Module):
        requires_paired_data = False

        def __init__(self, factor=2.0):
            super().__init__()
            self.factor = factor

    assert "test-registry-double" in list_losses()
    assert create_distill_loss("test-registry-double", factor=3.0).factor == 3.0
    with pytest.raises(openclip_distill.DistillUsageError, match="--distill-loss"):
        create_distill_loss("no-such-loss")
    with pytest.raises(openclip_distill.DistillUsageError, match="--distill-loss-kwargs"):
        create_distill_loss("dime-fm", bogus=1)
