"""BLIP evaluation (``openclip_distill.eval.blip``) against computations written out here: BLEU-4 and
CIDEr-D by their formulas, recall from hand-made scores, BLIP's ITM re-ranking, ViT FLOPs by layer
formulas, and the retrieval/captioning numbers of a tiny model against transformers' own outputs."""
import json
import math
import os
from collections import Counter

import pytest
import torch

from hf_tiny import save_tiny_blip
from openclip_distill.eval.blip import (blip_flops, caption_metrics, count_flops, evaluate_blip, itm_rerank_scores,
                                        load_blip_model, main, read_caption_pairs, simple_tokenize)
from openclip_distill.eval.retrieval import recall_from_scores, retrieval_recall

PREDS = ["a red cat sits on the mat", "two dogs run in the green park", "a man is riding a red bike"]
REFS = [["the red cat sits on a mat", "a cat sits on the mat"],
        ["two dogs run in a park", "dogs running in the green park"],
        ["a man riding a red bike", "a man is riding a bike on the street"]]


def _ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def naive_bleu4(preds, refs):
    """Corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions over the corpus, geometric mean,
    brevity penalty against the reference length closest to each hypothesis (the shorter on a tie)."""
    correct, total, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for p, rs in zip(preds, refs):
        w, rws = p.split(), [r.split() for r in rs]
        hyp_len += len(w)
        ref_len += min((abs(len(r) - len(w)), len(r)) for r in rws)[1]
        for n in range(1, 5):
            hyp = _ngrams(w, n)
            best = Counter()
            for r in rws:
                best |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, best[g]) for g, c in hyp.items())
            total[n - 1] += max(len(w) - n + 1, 0)
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.prod(c / t for c, t in zip(correct, total)) ** 0.25


def naive_cider_d(preds, refs, sigma=6.0):
    """CIDEr-D (Vedantam et al. 2015): tf-idf n-gram vectors (idf from the references' document frequency),
    clipped cosine per n, Gaussian length penalty, mean over n = 1..4 and references, times 10."""
    n_docs = len(refs)
    df = Counter()
    for rs in refs:
        df.update({g for r in rs for n in range(1, 5) for g in _ngrams(r.split(), n)})

    def vec(s, n):
        return {g: tf * (math.log(n_docs) - math.log(max(1.0, df[g]))) for g, tf in _ngrams(s.split(), n).items()}

    scores = []
    for p, rs in zip(preds, refs):
        total = 0.0
        for n in range(1, 5):
            vh = vec(p, n)
            for r in rs:
                vr = vec(r, n)
                num = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())
                norms = math.sqrt(sum(v * v for v in vh.values())) * math.sqrt(sum(v * v for v in vr.values()))
                penalty = math.exp(-((len(p.split()) - len(r.split())) ** 2) / (2 * sigma ** 2))
                total += (num / norms if norms else 0.0) * penalty
        scores.append(10.0 * total / (4 * len(rs)))
    return sum(scores) / len(scores)


def test_simple_tokenize():
    assert simple_tokenize("A Red-cat, sits!  On 2 mats.") == "a red cat sits on 2 mats"


def test_caption_metrics_match_the_formulas():
    got = caption_metrics([p.upper() + "." for p in PREDS], REFS)  # case and punctuation are tokenised away
    assert got["bleu4"] == pytest.approx(naive_bleu4(PREDS, REFS), rel=1e-6)
    assert got["cider"] == pytest.approx(naive_cider_d(PREDS, REFS), rel=1e-9)
    perfect = caption_metrics([r[0] for r in REFS], [[r[0]] for r in REFS])
    assert perfect["bleu4"] == pytest.approx(1.0, rel=1e-6)


def test_recall_and_itm_rerank():
    sim = torch.tensor([[0.9, 0.8, 0.1],   # image 0: its text 0 first
                        [0.7, 0.6, 0.5],   # image 1: text 1 second
                        [0.2, 0.3, 0.1]])  # image 2: text 2 last
    positives = torch.eye(3, dtype=torch.bool)
    # the same as ranking features whose dot products are ``sim``
    assert recall_from_scores(sim, sim.T, positives, ks=(1, 2)) == retrieval_recall(
        sim, torch.eye(3), positives=positives, ks=(1, 2))
    assert recall_from_scores(sim, sim.T, positives, ks=(1, 2)) == {
        "i2t_r1": 1 / 3, "i2t_r2": 2 / 3, "t2i_r1": 1 / 3, "t2i_r2": 2 / 3}
    # an ITM head that knows the answer: logit 10 for matching pairs, 0 otherwise
    calls = []

    def match_logit(i, t):
        calls.append((i.tolist(), t.tolist()))
        return (i == t).float() * 10.0

    i2t, t2i = itm_rerank_scores(sim, match_logit, k=2)
    # image 1's top 2 texts by ITC are 0 and 1: re-scored 0.7 + 0 and 0.6 + 10; text 2 stays below
    assert i2t[1, 1] == pytest.approx(10.6) and i2t[1, 0] == pytest.approx(0.7) and i2t[1, 2] < -1e30
    # image 2's top 2 are texts 1 and 0: its own text is outside, so it cannot be found
    assert recall_from_scores(i2t, t2i, positives, ks=(1,)) == {"i2t_r1": 2 / 3, "t2i_r1": 2 / 3}
    assert ([2, 2], [1, 0]) in calls


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "teacher")


def test_vit_flops_match_the_layer_formula(blip_dir):
    model = load_blip_model(blip_dir)
    vit = model.pair.retrieval.vision_model
    n, c, i, layers = 17, 32, 64, 4  # 16 patches of 8 px + CLS, width 32, MLP 64
    per_layer = 2 * n * c * 3 * c + 2 * n * n * c + 2 * n * n * c + 2 * n * c * c + 2 * (2 * n * c * i)
    patch = 2 * 16 * c * 3 * 8 * 8
    assert count_flops(lambda: vit(pixel_values=torch.zeros(1, 3, 32, 32))) == patch + layers * per_layer
    total = blip_flops(model.pair, (32, 32))
    assert total > 2 * (patch + layers * per_layer)  # two vision towers (teacher), text encoder, fusion, decoder


def test_evaluate_blip_against_transformers(blip_dir, tiny_corpus):
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipForImageTextRetrieval

    model = load_blip_model(blip_dir)
    images, captions = read_caption_pairs(tiny_corpus["paired"], (32, 32), max_samples=8)
    assert images.shape == (8, 3, 32, 32) and len(captions) == 8
    got = evaluate_blip(model, images, captions, itm_k=3, batch_size=4, measure_speed=False)
    # transformers' own ITC score matrix and captions, on the processor's normalisation
    mean, std = torch.tensor(model.image_mean)[:, None, None], torch.tensor(model.image_std)[:, None, None]
    pixels = (images - mean) / std
    tok = AutoTokenizer.from_pretrained(os.path.join(blip_dir, "retrieval"))
    enc = tok(captions, padding=True, return_tensors="pt")
    retrieval = BlipForImageTextRetrieval.from_pretrained(os.path.join(blip_dir, "retrieval")).eval()
    with torch.no_grad():
        sim = retrieval(input_ids=enc.input_ids, pixel_values=pixels, attention_mask=enc.attention_mask,
                        use_itm_head=False).itm_score
    positives = torch.tensor([[a == b for b in captions] for a in captions])
    ranks = lambda s: {k: v for k, v in retrieval_recall(s, torch.eye(8), positives=positives).items()}  # noqa
    for k, v in ranks(sim).items():
        assert got[k] == pytest.approx(v), k
    assert set(got) >= {"itm_i2t_r1", "itm_t2i_r5", "bleu4", "cider", "params", "flops"}
    captioning = BlipForConditionalGeneration.from_pretrained(os.path.join(blip_dir, "captioning")).eval()
    with torch.no_grad():
        generated = tok.batch_decode(captioning.generate(pixel_values=pixels, max_new_tokens=20), skip_special_tokens=True)
    expected = caption_metrics(generated, [[c] for c in captions])
    assert got["bleu4"] == pytest.approx(expected["bleu4"]) and got["cider"] == pytest.approx(expected["cider"])
    assert got["params"] == sum(p.numel() for p in retrieval.parameters()) + sum(
        p.numel() for p in captioning.parameters())


def test_cli_writes_rows_and_rejects_bad_input(blip_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--model", f"teacher={blip_dir}", "--model", f"cap={os.path.join(blip_dir, 'captioning')}",
                 "--data", tiny_corpus["paired"], "--max-samples", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"teacher", "cap"} and "i2t_r1" in rows["teacher"] and "i2t_r1" not in rows["cap"]
    assert rows["teacher"]["images_per_s"] > 0 and rows["cap"]["cider"] >= 0
    capsys.readouterr()
    assert main(["--model", f"x={tmp_path}", "--data", tiny_corpus["paired"]]) == 2
    assert "holds no BLIP model" in capsys.readouterr().err
    assert main(["--model", blip_dir, "--data", tiny_corpus["paired"]]) == 2
    assert "is not NAME=DIR" in capsys.readouterr().err
