"""The DC-CLIP demo: its quick form (every phase in a few steps), the shipped AltCLIP teacher, the
teacher's image tower against the OpenCLIP original, and the student's own (byte-level) tokenizer."""
import json
import os

import pytest
import torch

from openclip_distill.demo import altclip_teacher as A

SHIPPED = os.path.isfile(os.path.join(A.TEACHER_DIR, "config.json"))
ROWS = ("teacher", "stage1", "student", "baseline")
KEYS = ("zeroshot_top1_en", "zeroshot_top1_zh", "i2t_r1_en", "i2t_r1_zh", "t2i_r1_en", "t2i_r1_zh",
        "params", "images_per_s")


def test_quick_dc_clip_demo_runs_every_phase(tmp_path):
    import open_clip

    import openclip_distill  # noqa: F401  (registers demo-student-ml)
    from openclip_distill.demo.run_dc_clip import STUDENT_MODEL, run_dc_clip_demo

    res = run_dc_clip_demo(logs=str(tmp_path), name="q", quick=True)
    saved = json.loads((tmp_path / "q" / "demo_results.json").read_text(encoding="utf-8"))
    assert set(ROWS) <= set(saved)
    for who in ROWS:
        for key in KEYS:
            assert key in saved[who], (who, key)
        assert all(0.0 <= saved[who][k] <= 1.0 for k in KEYS[:6])
        assert saved[who]["params"] > 0 and saved[who]["images_per_s"] > 0
    s, b = saved["student"], saved["baseline"]
    assert s["steps"] == b["steps"] == saved["stage1"]["steps"] + 2 == sum(s["stage_steps"])
    assert s["stage_batch_sizes"] == [saved["stage1"]["batch_size"], b["batch_size"]]
    assert {"student_over_teacher_en", "student_over_teacher_zh", "target_met"} <= set(s)
    assert res["student"]["zeroshot_top1_zh"] == s["zeroshot_top1_zh"]
    # the run's stage file is the packaged recipe with this run's data, and it ran both stages
    import yaml
    stages = yaml.safe_load((tmp_path / "q" / "stages.yaml").read_text())["stages"]
    assert [st["distill-loss"] for st in stages] == ["feature", "contrastive"]
    assert "teacher-cache" in stages[0] and "train-data" in stages[1]
    ck = torch.load(s["checkpoint"], map_location="cpu", weights_only=False)
    assert ck["stage"] == "contrastive-alignment" and ck["stage_index"] == 1
    # both student checkpoints load with plain open_clip after `import openclip_distill`
    for who in ("stage1", "student", "baseline"):
        open_clip.create_model_and_transforms(STUDENT_MODEL, pretrained=saved[who]["checkpoint"])


def test_student_tokenizer_reads_both_languages_and_differs_from_the_teachers():
    import open_clip
    from open_clip.tokenizer import decode

    import openclip_distill  # noqa: F401
    from openclip_distill.demo.run_dc_clip import STUDENT_MODEL

    tok = open_clip.get_tokenizer(STUDENT_MODEL)
    texts = ["一个大的红色星形在左上角", "a large red star in the top left corner"]
    ids = tok(texts)
    assert ids.shape == (2, 64)
    for row, text in zip(ids, texts):
        n = int((row != 0).sum())
        assert n < 64  # the longest demo captions fit the context
        # byte-level BPE: decoding gives the text back, Chinese included
        assert decode(row[:n]).replace("<start_of_text>", "").replace("<end_of_text>", "").strip() \
            == text.lower()
    teacher_tok = A.build_tokenizer(texts)
    assert teacher_tok(texts[0])["input_ids"] != ids[0][: int((ids[0] != 0).sum())].tolist()


def test_teacher_tokenizer_splits_chinese_into_characters():
    tok = A.build_tokenizer(["一个大的红色星形在左上角", "a large red star in the top left corner"] * 20)
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    pieces = tok.convert_ids_to_tokens(tok("红色星形")["input_ids"])
    assert pieces[0] == "<s>" and pieces[-1] == "</s>"
    assert [p for p in pieces[1:-1] if p != "\u2581"] == list("红色星形")


def test_vision_conversion_matches_open_clip():
    """The teacher's image tower is the OpenCLIP demo teacher's ViT, renamed: same embeddings."""
    import open_clip

    import openclip_distill  # noqa: F401

    torch.manual_seed(0)
    ref = open_clip.create_model("demo-teacher").eval()
    sd = {k: v for k, v in ref.state_dict().items()}
    model = A.build_model(vocab_size=10)
    missing, unexpected = model.load_state_dict(A.vision_state_dict_from_open_clip(sd), strict=False)
    assert not unexpected and all(k.startswith(("text_model.", "text_projection")) for k in missing)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model.get_image_features(pixel_values=x)
        got = getattr(got, "pooler_output", got)
        want = ref.encode_image(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(model.logit_scale.exp(), ref.logit_scale.exp())


@pytest.mark.skipif(not SHIPPED, reason="dc-clip teacher not shipped")
def test_shipped_teacher_loads_through_hf_and_classifies_both_languages():
    from openclip_distill.demo.bilingual_corpus import generate_bilingual_corpus
    from openclip_distill.eval import evaluate_languages, evaluate_teacher
    from openclip_distill.teachers import create_teacher

    import safetensors.torch
    weights = safetensors.torch.load_file(os.path.join(A.TEACHER_DIR, "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    teacher = create_teacher("hf:" + A.TEACHER_DIR)
    assert teacher.family == "altclip" and teacher.image_size == (32, 32)
    ids = teacher.tokenizer(["一个大的红色星形"])["input_ids"][0]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 2 + len("一个大的红色星形") + 1  # <s> ▁ chars </s>
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        corpus = generate_bilingual_corpus(os.path.join(tmp, "c"), n_teacher_pairs=0, n_images=0, n_texts=0,
                                           n_paired=2, n_eval_per_class=1, shard_size=240)
        res = evaluate_languages(lambda s: evaluate_teacher(teacher, s), corpus["eval_dir"])
    # 240 classes (chance 0.4%): the teacher knows them in both languages
    assert res["zeroshot_top1_en"] > 0.5 and res["zeroshot_top1_zh"] > 0.5, res


def test_demo_flag_names_the_demo(tmp_path, capsys):
    from openclip_distill.main import main
    from openclip_distill.params import parse_args

    assert parse_args(["--demo", "--logs", "x"]).demo == "dime-fm"  # --demo alone stays DIME-FM
    assert parse_args(["--demo", "dc-clip"]).demo == "dc-clip"
    assert parse_args(["--logs", "x"]).demo is None
    assert main(["--demo", "bogus", "--logs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --demo: unknown demo 'bogus'; choose one of dime-fm, dc-clip, dlip"]
    assert not list(tmp_path.iterdir())  # nothing started
