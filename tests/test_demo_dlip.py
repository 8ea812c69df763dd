"""The DLIP demo in its quick form (a few steps of every phase), its teacher's tokenizer and model
builder, the shipped BLIP teacher, the ``--demo`` dispatch and the target bookkeeping."""
import json
import os

import numpy as np
import pytest
import torch

from openclip_distill.demo import blip_teacher as BT
from openclip_distill.demo import corpus as world
from openclip_distill.demo.dlip_demo import METRICS, summarise


def test_caption_tokenizer_covers_every_corpus_caption():
    tok = BT.build_caption_tokenizer()
    assert tok.pad_token_id == 0 and tok.convert_ids_to_tokens(tok.bos_token_id) == "[DEC]"
    rng = np.random.default_rng(0)
    free = {"position": "top left", "background": "striped"}
    for label in range(len(world.class_names())):
        for _ in range(3):
            free = {"position": str(rng.choice(list(world.POSITION_PHRASES))),
                    "background": str(rng.choice(world.BACKGROUNDS))}
            text = world.caption(label, free, rng)
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids, text
            # whole words: decoding gives the lower-cased caption back, up to spacing around punctuation
            assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    # an unseen word still tokenises (letters / ##letters), without [UNK]
    assert tok.unk_token_id not in tok("a zebra")["input_ids"]


def test_demo_blip_shares_one_vision_tower_and_starts_images_apart():
    from openclip_distill.models.blip_pair import ITC

    tok = BT.build_caption_tokenizer()
    pair = BT.build_demo_blip(tok, seed=0)
    assert pair.shares_vision
    cfg = pair.config
    assert cfg.vision_config.image_size == world.IMAGE_SIZE
    assert cfg.text_config.encoder_hidden_size == cfg.vision_config.hidden_size
    assert cfg.text_config.vocab_size == len(tok)
    enc = tok(["a red circle", "a big blue star"] * 2, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = pair(BT.normalise(torch.rand(4, 3, 32, 32)), enc["input_ids"], enc["attention_mask"], {ITC})
    # transformers' vision default initializer_range (1e-10) would make every image embedding equal
    assert out.image_embeds.std(0).mean() > 1e-3


def test_normalise_matches_the_formula():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    mean = torch.tensor(BT.IMAGE_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(BT.IMAGE_STD, dtype=torch.float64)[:, None, None]
    assert torch.allclose(BT.normalise(x), (x - mean) / std)


def test_teacher_training_lowers_the_task_loss_and_saves_fp16(tmp_path):
    tok = BT.build_caption_tokenizer()
    pair = BT.build_demo_blip(tok, seed=0, vision_layers=1, text_layers=1, width=32, heads=1)
    rng = np.random.default_rng(1)
    labels = list(range(8))
    images = torch.rand(8, 3, 32, 32)
    captions = [world.caption(lab, {"position": "left", "background": "plain"}, rng) for lab in labels]
    rows = BT.train_demo_blip(pair, tok, images, captions, steps=30, batch_size=8, lr=3e-3, wd=0.0, warmup=2,
                              log_every=29)
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"]
    out = BT.save_demo_blip(pair, tok, str(tmp_path / "t"))
    from openclip_distill.eval.blip import load_blip_model
    from safetensors.torch import load_file

    sd = load_file(os.path.join(out, "retrieval", "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    teacher = load_blip_model(out)
    assert teacher.image_size == (32, 32)
    assert torch.equal(teacher.pair.retrieval.itm_head.weight, pair.retrieval.itm_head.weight.half().float())


def _row(i2t, t2i, cider, speed, params):
    return {"i2t_r1": i2t, "t2i_r1": t2i, "cider": cider, "images_per_s": speed, "params": params}


def test_summarise_ratios_and_target():
    res = {"teacher": _row(0.5, 0.4, 2.0, 100.0, 10.0), "student": _row(0.48, 0.39, 1.95, 190.0, 5.0),
           "baseline": _row(0.40, 0.41, 1.5, 190.0, 5.0)}
    summarise(res)
    s = res["student"]
    assert s["i2t_r1_over_teacher"] == pytest.approx(0.96) and s["cider_over_teacher"] == pytest.approx(0.975)
    assert s["speedup_over_teacher"] == pytest.approx(1.9) and s["params_over_teacher"] == pytest.approx(0.5)
    assert s["beats_baseline"] and s["beats_baseline_on"] == ["i2t_r1", "cider"] and s["target_met"]
    res["student"]["images_per_s"] = 170.0  # 1.7x: too slow
    summarise(res)
    assert not res["student"]["target_met"]
    res["student"].update(images_per_s=190.0, t2i_r1=0.37)  # 92.5% of the teacher's t2i R@1
    summarise(res)
    assert not res["student"]["target_met"]
    assert set(METRICS) == {"i2t_r1", "t2i_r1", "cider"}


def test_unknown_demo_is_a_usage_error(capsys):
    from openclip_distill import main as distill_main

    assert distill_main.main(["--demo", "nope"]) == 2
    assert "--demo: unknown demo 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(os.path.join(BT.TEACHER_DIR, "retrieval")), reason="teacher not shipped")
def test_shipped_teacher_loads_as_an_hf_blip_teacher():
    from openclip_distill.teachers import create_teacher

    teacher = create_teacher(f"hf:{BT.TEACHER_DIR}", None, device="cpu")
    assert teacher.kind == "hf-blip" and set(teacher.dirs) == {"retrieval", "captioning"}
    assert teacher.image_size == (32, 32)
    assert len(teacher.tokenizer) == len(BT.build_caption_tokenizer())
    # one vision tower, saved twice
    r, c = teacher.pair.retrieval.vision_model.state_dict(), teacher.pair.captioning.vision_model.state_dict()
    assert all(torch.equal(r[k], c[k]) for k in r)
    # trained: the ITC embeddings tell the captions of two different classes apart
    emb = teacher.encode_text(["a large red circle", "a large red circle", "a small blue star"])
    assert (emb[0] @ emb[1]) > (emb[0] @ emb[2]) + 0.1
    # the demo's student: half the layers, a 64-wide ViT (the teacher's head width, 32, kept)
    from openclip_distill.demo.dlip_demo import STUDENT_MODEL
    from openclip_distill.models.blip_student import get_blip_student_preset

    assert get_blip_student_preset(STUDENT_MODEL).resolve(teacher.pair.config) == dict(
        vision_layers=2, vision_width=64, text_layers=1, text_width=96)


def test_quick_dlip_demo_runs_every_phase(tmp_path):
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    from openclip_distill.demo import run_named_demo

    res = run_named_demo("dlip", logs=str(tmp_path), name="q", quick=True)
    saved = json.loads((tmp_path / "q" / "demo_results.json").read_text())
    assert set(saved) == {"teacher", "student", "baseline"}
    for who in saved:
        for key in ("i2t_r1", "t2i_r1", "bleu4", "cider", "params", "images_per_s"):
            assert key in saved[who], (who, key)
        assert 0.0 <= saved[who]["i2t_r1"] <= 1.0 and saved[who]["images_per_s"] > 0
    s, b, t = saved["student"], saved["baseline"], saved["teacher"]
    assert s["params"] == b["params"] <= 0.6 * t["params"]
    assert s["steps"] == b["steps"] > 0 and s["batch_size"] == b["batch_size"]
    assert "target_met" in s and "speedup_over_teacher" in s
    assert res["student"]["cider"] == s["cider"]
    for who in ("student", "baseline"):
        run = tmp_path / "q" / who
        BlipForImageTextRetrieval.from_pretrained(run / "student" / "retrieval")
        BlipForConditionalGeneration.from_pretrained(run / "student" / "captioning")
        rows = [json.loads(line) for line in open(run / "losses.jsonl")]
        distill_terms = {"vision_hidden_loss", "itc_kl_loss", "itm_kl_loss", "lm_kl_loss", "cross_attention_loss"}
        # the student is distilled; the baseline has the task losses only
        assert (distill_terms <= set(rows[0])) == (who == "student"), (who, rows[0])
        assert {"itc_loss", "itm_loss", "lm_loss"} <= set(rows[0])
