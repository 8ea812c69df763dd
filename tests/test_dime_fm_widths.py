"""DIME-FM with a teacher of another width (e.g. an `hf:` teacher): L_vl and L_udist compare
similarity matrices only, so any widths work; L_pvl compares features directly and is refused."""
import pytest
import torch

from openclip_distill.errors import DistillUsageError
from openclip_distill.losses import DimeFMLoss


def kl_rows(teacher_logits, student_logits):
    p = teacher_logits.softmax(-1)
    return (p * (p.log() - student_logits.log_softmax(-1))).sum(-1).mean()


def n(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_vl_and_udist_with_different_widths_match_the_formula(impl):
    g = torch.Generator().manual_seed(0)
    v_s, t_s = (torch.randn(7, 12, generator=g, dtype=torch.float64) for _ in range(2))
    v_t, t_t = torch.randn(7, 20, generator=g, dtype=torch.float64), torch.randn(5, 20, generator=g, dtype=torch.float64)
    t_s = t_s[:5]
    loss = DimeFMLoss(vl_weight=0.7, pvl_weight=0, udist_weight=0.5, impl=impl)
    out = loss(v_s, v_t, t_t, text_features=t_s, output_dict=True)
    s = 100.0
    vl = kl_rows(s * n(v_t) @ n(t_t).T, s * n(v_s) @ n(t_s).T) + kl_rows(s * n(t_t) @ n(v_t).T, s * n(t_s) @ n(v_s).T)
    ud = 2 * kl_rows(s * n(v_t) @ n(v_t).T / 7, s * n(v_s) @ n(v_s).T / 7) \
        + 2 * kl_rows(s * n(t_t) @ n(t_t).T / 7, s * n(t_s) @ n(t_s).T / 7)
    # chunked keeps fp32 statistics: logits up to 100 carry ~1e-5 absolute error, a small KL (1e-3) ~1e-4 relative
    rel = 1e-6 if impl == "naive" else 1e-3
    assert float(out["vl_loss"]) == pytest.approx(0.7 * float(vl), rel=rel)
    assert float(out["udist_loss"]) == pytest.approx(0.5 * float(ud), rel=rel)


def test_pvl_with_different_widths_is_refused_up_front():
    with pytest.raises(DistillUsageError, match="pvl_weight=0"):
        DimeFMLoss(student_embed_dim=12, teacher_embed_dim=20)
    with pytest.raises(DistillUsageError, match="pvl_weight=0"):
        DimeFMLoss()(torch.randn(3, 12), torch.randn(3, 20), torch.randn(3, 20))
