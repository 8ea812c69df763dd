"""The ``dlip`` loss, signal by signal, against float64 formulas written out here on tensors taken from
transformers' own BLIP forwards (a tiny random teacher: 4 + 4 layers of width 32, 4 heads; a student
with 2 + 2 layers of width 16, 2 heads, so the adapters and the head-averaged attention maps are used)."""
import os

import pytest
import torch

from hf_tiny import save_tiny_blip
from openclip_distill import create_distill_loss, list_losses
from openclip_distill.errors import DistillUsageError
from openclip_distill.losses.dlip import SIGNALS, mapped_layers
from openclip_distill.models import build_blip_student
from openclip_distill.models.blip_pair import PARTS, BlipPair, mine_hard_negatives
from openclip_distill.models.blip_student import load_blip

B = 4
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = save_tiny_blip(tmp_path_factory.mktemp("blip") / "teacher")
    t_ret, t_cap = (load_blip(os.path.join(root, k)).double().eval() for k in ("retrieval", "captioning"))
    for m in (t_ret, t_cap):
        m.requires_grad_(False)
    with torch.no_grad():  # a teacher whose captioning model has its own vision tower (as BLIP's released ones)
        t_cap.vision_model.encoder.layers[3].mlp.fc2.weight.mul_(1.5)
    kw = dict(vision_layers=2, text_layers=2, vision_width=16, text_width=16)
    s_ret, s_cap = build_blip_student(t_ret, **kw), build_blip_student(t_cap, **kw)
    teacher = BlipPair(t_ret, t_cap)
    assert not teacher.shares_vision
    student = BlipPair(s_ret, s_cap, share_vision=True).eval()
    g = torch.Generator().manual_seed(0)
    px = torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64)
    ids = torch.randint(6, 60, (B, 7), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[3, 6:] = 0
    ids[mask == 0] = 0
    s_out = student(px, ids, mask, PARTS, generator=torch.Generator().manual_seed(1))
    t_out = teacher(px, ids, mask, PARTS, itm_pairs=s_out.itm_pairs)
    return dict(teacher=teacher, student=student, px=px, ids=ids, mask=mask, s=s_out, t=t_out)


def _only(name, **extra):
    weights = {f"{k}_weight": 0.0 for k in SIGNALS}
    weights[f"{name}_weight"] = 1.0
    loss = create_distill_loss("dlip", context=dict(student_vision_width=16, teacher_vision_width=32,
                                                    student_text_width=16, teacher_text_width=32),
                               impl="naive", **weights, **extra)
    return loss.double()


def _kl(p, q):
    """sum p log(p / q) over the last axis (probabilities in, float64)."""
    return (p * (p / q).log()).sum(-1)


def _softmax_rows(x):
    e = (x - x.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def _decoder_ids(pair, ids):
    out = ids.clone()
    out[:, 0] = pair.captioning.config.text_config.bos_token_id
    return out


def test_registered_and_parts():
    assert "dlip" in list_losses()
    assert _only("lm").parts == {"lm"}
    assert _only("itm").parts == {"itc", "itm"}
    assert create_distill_loss("dlip").parts == PARTS


def test_layer_map_ends_at_the_teachers_last_layer():
    assert mapped_layers(4, 2) == [(1, 2), (2, 4)]
    assert mapped_layers(12, 5) == [(1, 2), (2, 4), (3, 7), (4, 9), (5, 12)]
    assert mapped_layers(3, 3) == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_vision_hidden(pairs, distance):
    loss = _only("vision_hidden", hidden_distance=distance)
    s_h = pairs["student"].retrieval.vision_model(pixel_values=pairs["px"], output_hidden_states=True).hidden_states
    t_h = pairs["teacher"].retrieval.vision_model(pixel_values=pairs["px"], output_hidden_states=True).hidden_states
    W, b = loss.vision_adapter.weight, loss.vision_adapter.bias
    total = 0.0
    for j, k in ((1, 2), (2, 4)):
        per = []
        for i in range(B):
            for n in range(s_h[j].shape[1]):
                x, y = W @ s_h[j][i, n] + b, t_h[k][i, n]
                per.append(1 - x.dot(y) / (x.norm() * y.norm()) if distance == "cosine" else ((x - y) ** 2).sum())
        total = total + sum(per) / len(per)
    torch.testing.assert_close(loss(pairs["s"], pairs["t"]), total / 2, **TOL)


def test_text_hidden_skips_padding(pairs):
    loss = _only("text_hidden")
    mask, ids = pairs["mask"], pairs["ids"]
    enc = lambda p: p.retrieval.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)  # noqa
    s_h, t_h = enc(pairs["student"]).hidden_states, enc(pairs["teacher"]).hidden_states
    W, b = loss.text_adapter.weight, loss.text_adapter.bias
    total = 0.0
    for j, k in ((1, 2), (2, 4)):
        per = [1 - (W @ s_h[j][i, n] + b).dot(t_h[k][i, n]) / ((W @ s_h[j][i, n] + b).norm() * t_h[k][i, n].norm())
               for i in range(B) for n in range(ids.shape[1]) if mask[i, n]]
        total = total + sum(per) / len(per)
    torch.testing.assert_close(loss(pairs["s"], pairs["t"]), total / 2, **TOL)


def _sharpened(p, tau):
    """softmax(log p / tau) written as p^(1/tau) / sum p^(1/tau)."""
    q = p ** (1.0 / tau)
    return q / q.sum(-1, keepdim=True)


def test_vision_attention_kl(pairs):
    loss = _only("vision_attention")
    attn = lambda p: p.retrieval.vision_model(pixel_values=pairs["px"], output_attentions=True).attentions[-1]  # noqa
    s_a, t_a = attn(pairs["student"]), attn(pairs["teacher"])
    assert s_a.shape[1] == 2 and t_a.shape[1] == 4  # different head counts: compared head-averaged
    p_t, p_s = _sharpened(t_a.mean(1), 0.05), _sharpened(s_a.mean(1), 0.05)
    torch.testing.assert_close(loss(pairs["s"], pairs["t"]), _kl(p_t, p_s).mean(), **TOL)


def test_cross_attention_kl_on_positive_pairs(pairs):
    loss = _only("cross_attention", attention_temperature=0.2)
    ids, mask = pairs["ids"], pairs["mask"]

    def cross(p):
        img = p.retrieval.vision_model(pixel_values=pairs["px"]).last_hidden_state
        return p.retrieval.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=img,
                                        encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long),
                                        output_attentions=True).cross_attentions[-1]
    kl = _kl(_sharpened(cross(pairs["teacher"]).mean(1), 0.2), _sharpened(cross(pairs["student"]).mean(1), 0.2))
    expected = kl[mask.bool()].mean()
    torch.testing.assert_close(loss(pairs["s"], pairs["t"]), expected, **TOL)


def _itc_cosines(pair, pairs):
    """transformers' own ITC score: the image-text cosine matrix [B images, B texts]."""
    return pair.retrieval(input_ids=pairs["ids"], pixel_values=pairs["px"], attention_mask=pairs["mask"],
                          use_itm_head=False).itm_score


def test_itc_kl_and_infonce(pairs):
    S_s = _itc_cosines(pairs["student"], pairs) / 0.07
    S_t = _itc_cosines(pairs["teacher"], pairs) / 0.07
    kl = 0.5 * (_kl(_softmax_rows(S_t), _softmax_rows(S_s)).mean()
                + _kl(_softmax_rows(S_t.T), _softmax_rows(S_s.T)).mean())
    torch.testing.assert_close(_only("itc_kl")(pairs["s"], pairs["t"]), kl, **TOL)
    lse = lambda x: x.exp().sum(-1).log()  # noqa: E731
    infonce = 0.5 * ((lse(S_s) - S_s.diag()).mean() + (lse(S_s.T) - S_s.diag()).mean())
    torch.testing.assert_close(_only("itc")(pairs["s"], pairs["t"]), infonce, **TOL)


def _itm_logits(pair, pairs, img, txt):
    return pair.retrieval(input_ids=pairs["ids"][txt], pixel_values=pairs["px"][img],
                          attention_mask=pairs["mask"][txt], use_itm_head=True).itm_score


def test_itm_pairs_and_losses(pairs):
    img, txt = pairs["s"].itm_pairs
    assert torch.equal(img[:B], torch.arange(B)) and torch.equal(txt[:B], torch.arange(B))
    assert torch.equal(txt[B:2 * B], torch.arange(B)) and torch.equal(img[2 * B:], torch.arange(B))
    assert (img[B:2 * B] != torch.arange(B)).all() and (txt[2 * B:] != torch.arange(B)).all()
    z_s, z_t = _itm_logits(pairs["student"], pairs, img, txt), _itm_logits(pairs["teacher"], pairs, img, txt)
    torch.testing.assert_close(_only("itm_kl")(pairs["s"], pairs["t"]),
                               _kl(_softmax_rows(z_t), _softmax_rows(z_s)).mean(), **TOL)
    labels = [1] * B + [0] * (2 * B)
    ce = sum(z_s[r].exp().sum().log() - z_s[r, labels[r]] for r in range(3 * B)) / (3 * B)
    torch.testing.assert_close(_only("itm")(pairs["s"], pairs["t"]), ce, **TOL)


def test_lm_kl_and_lm_loss(pairs):
    ids, mask = pairs["ids"], pairs["mask"]
    dec = _decoder_ids(pairs["student"], ids)
    logits = {k: pairs[k].captioning(pixel_values=pairs["px"], input_ids=dec, attention_mask=mask).logits
              for k in ("student", "teacher")}
    tau = 2.0
    kl = _kl(_softmax_rows(logits["teacher"][:, :-1] / tau), _softmax_rows(logits["student"][:, :-1] / tau))
    expected = kl[mask[:, 1:].bool()].mean()
    torch.testing.assert_close(_only("lm_kl", lm_temperature=tau)(pairs["s"], pairs["t"]), expected, **TOL)
    # the task LM loss is transformers' own captioning loss with the padding labelled -100
    labels = dec.masked_fill(mask == 0, -100)
    hf = pairs["student"].captioning(pixel_values=pairs["px"], input_ids=dec, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(_only("lm")(pairs["s"], pairs["t"]), hf, **TOL)


def test_total_is_the_weighted_sum_and_trains_only_the_student(pairs):
    loss = create_distill_loss("dlip", context=dict(student_vision_width=16, teacher_vision_width=32,
                                                    student_text_width=16, teacher_text_width=32),
                               itm_weight=0.5, lm_kl_weight=2.0).double()
    terms = loss(pairs["s"], pairs["t"], output_dict=True)
    assert set(terms) == {f"{k}_loss" for k in SIGNALS}
    torch.testing.assert_close(terms["itm_loss"], 0.5 * _only("itm")(pairs["s"], pairs["t"]), **TOL)
    torch.testing.assert_close(terms["lm_kl_loss"], 2.0 * _only("lm_kl")(pairs["s"], pairs["t"]), **TOL)
    total = loss(pairs["s"], pairs["t"])
    torch.testing.assert_close(total, sum(terms.values()), **TOL)
    total.backward()
    student = pairs["student"]
    assert student.captioning.vision_model is student.retrieval.vision_model
    for name in ("retrieval.vision_model.encoder.layers.0.mlp.fc1.weight", "retrieval.itm_head.weight",
                 "captioning.text_decoder.bert.encoder.layer.1.crossattention.self.key.weight"):
        assert dict(student.named_parameters())[name].grad.abs().sum() > 0, name
    assert loss.vision_adapter.weight.grad is not None and loss.text_adapter.weight.grad is not None
    assert all(p.grad is None for p in pairs["teacher"].parameters())


def test_pair_computes_only_the_parts_asked(pairs):
    out = pairs["student"](pairs["px"], pairs["ids"], pairs["mask"], {"lm"})
    assert out.lm_logits is not None
    assert out.image_embeds is None and out.itm_logits is None and out.vision_hidden_states is None
    with pytest.raises(DistillUsageError, match="no captioning model"):
        BlipPair(pairs["student"].retrieval)(pairs["px"], pairs["ids"], pairs["mask"], {"lm"})


def test_hard_negatives_follow_the_similarities():
    sim = torch.full((3, 3), -50.0)
    sim.fill_diagonal_(50.0)
    sim[0, 2] = 40.0  # image 0 is close to text 2: text 2's negative image is 0, image 0's negative text is 2
    img, txt = mine_hard_negatives(sim, torch.Generator().manual_seed(0))
    assert img[3 + 2] == 0 and txt[6 + 0] == 2
    draws = torch.stack([mine_hard_negatives(torch.zeros(4, 4), torch.Generator().manual_seed(s))[0][4:8]
                         for s in range(50)])
    assert (draws != torch.arange(4)).all()  # never the positive
    assert len(set(draws[:, 0].tolist())) == 3  # uniform similarities: every other image is drawn
    with pytest.raises(DistillUsageError, match="at least 2"):
        mine_hard_negatives(torch.zeros(1, 1))


def test_bad_kwargs():
    with pytest.raises(DistillUsageError, match="itm_weight=-1"):
        create_distill_loss("dlip", itm_weight=-1)
    with pytest.raises(DistillUsageError, match="at least one weight"):
        create_distill_loss("dlip", **{f"{k}_weight": 0 for k in SIGNALS})
    with pytest.raises(DistillUsageError, match="hidden_distance='l1'"):
        create_distill_loss("dlip", hidden_distance="l1")
    with pytest.raises(DistillUsageError, match="attention_temperature=0"):
        create_distill_loss("dlip", attention_temperature=0)
