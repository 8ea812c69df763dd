"""``build_blip_student``: layer selection, widths, parameter counts, presets, the save/load round trip
and the bad inputs, on a tiny random BLIP teacher (4 + 4 layers, width 32, 4 heads of 8)."""
import json
import os

import pytest
import torch

from hf_tiny import save_tiny_blip
from openclip_distill.errors import DistillUsageError
from openclip_distill.models import build_blip_student, build_blip_student_preset, list_blip_students
from openclip_distill.models.blip_student import BlipStudentPreset, load_blip, num_params


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "teacher")


@pytest.fixture(scope="module")
def teachers(blip_dir):
    return {k: load_blip(os.path.join(blip_dir, k)).eval() for k in ("retrieval", "captioning")}


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 60, (3, 7), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return torch.randn(3, 3, 32, 32, generator=g), ids, mask


def _vision_layer(model, i):
    return {k: v for k, v in model.vision_model.encoder.layers[i].state_dict().items()}


def _text_layers(model):
    return (model.text_encoder if hasattr(model, "text_encoder") else model.text_decoder.bert).encoder.layer


@pytest.mark.parametrize("kind", ["retrieval", "captioning"])
def test_full_size_student_is_the_teacher(teachers, kind):
    teacher = teachers[kind]
    student = build_blip_student(teacher, vision_layers=4, text_layers=4).eval()
    assert type(student) is type(teacher)
    px, ids, mask = _inputs()
    with torch.no_grad():
        if kind == "retrieval":
            a = teacher(input_ids=ids, pixel_values=px, attention_mask=mask).itm_score
            b = student(input_ids=ids, pixel_values=px, attention_mask=mask).itm_score
        else:
            a = teacher(pixel_values=px, input_ids=ids, attention_mask=mask).logits
            b = student(pixel_values=px, input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["retrieval", "captioning"])
def test_layer_selection_copies_every_other_teacher_layer(teachers, kind):
    teacher = teachers[kind]
    student = build_blip_student(teacher, vision_layers=2, text_layers=1)
    assert student.config.vision_config.num_hidden_layers == 2 and student.config.text_config.num_hidden_layers == 1
    for s_i, t_i in ((0, 0), (1, 2)):  # floor(4 / 2) = 2: teacher layers 0 and 2
        for k, v in _vision_layer(student, s_i).items():
            assert torch.equal(v, _vision_layer(teacher, t_i)[k]), k
    t_layer0 = _text_layers(teacher)[0].state_dict()
    for k, v in _text_layers(student)[0].state_dict().items():
        assert torch.equal(v, t_layer0[k]), k
    # not the other teacher layers (the random teacher's layers all differ)
    assert not torch.equal(_vision_layer(student, 1)["mlp.fc1.weight"], _vision_layer(teacher, 1)["mlp.fc1.weight"])
    t_sd = teacher.state_dict()
    for k, v in student.state_dict().items():  # embeddings and heads are the teacher's
        if ".layers." not in k and ".layer." not in k:
            assert torch.equal(v, t_sd[k]), k


def test_param_count_drops_by_the_removed_layers(teachers):
    for teacher in teachers.values():
        student = build_blip_student(teacher, vision_layers=1, text_layers=3)
        per_vision = sum(p.numel() for p in teacher.vision_model.encoder.layers[0].parameters())
        per_text = sum(p.numel() for p in _text_layers(teacher)[0].parameters())
        assert num_params(student) == num_params(teacher) - 3 * per_vision - 1 * per_text


def test_narrow_student_keeps_leading_heads_and_channels(teachers):
    teacher = teachers["captioning"]
    student = build_blip_student(teacher, vision_layers=2, text_layers=2, vision_width=16, text_width=24)
    v, t = student.config.vision_config, student.config.text_config
    assert (v.hidden_size, v.num_attention_heads, v.intermediate_size) == (16, 2, 32)
    assert (t.hidden_size, t.num_attention_heads, t.intermediate_size, t.encoder_hidden_size) == (24, 3, 48, 16)
    # parameter count from the layer formulas: ViT layer 4w^2 + 4w (qkv, proj) + 2wI + I + w (MLP) + 4w (2 LN)
    vit = lambda w, i: 4 * w * w + 4 * w + 2 * w * i + i + w + 4 * w  # noqa: E731
    assert sum(p.numel() for p in student.vision_model.encoder.layers.parameters()) == 2 * vit(16, 32)
    # BERT decoder layer: self-attn 4(w^2 + w) + LN 2w, cross-attn w^2 + w + 2(e w + w) + w^2 + w + 2w, MLP 2wI + I + w + LN 2w
    bert = 4 * 24 * 24 + 4 * 24 + 48 + (2 * 24 * 24 + 2 * 24 + 2 * (16 * 24 + 24) + 48) + 2 * 24 * 48 + 48 + 24 + 48
    assert sum(p.numel() for p in student.text_decoder.bert.encoder.layer.parameters()) == 2 * bert
    T, S = teacher.state_dict(), student.state_dict()
    # qkv rows: q, k, v blocks of 32 rows each; the student keeps the first 16 (2 heads of 8) of each, 16 inputs
    qkv_t = T["vision_model.encoder.layers.2.self_attn.qkv.weight"].view(3, 32, 32)
    assert torch.equal(S["vision_model.encoder.layers.1.self_attn.qkv.weight"].view(3, 16, 16), qkv_t[:, :16, :16])
    proj_t = T["vision_model.encoder.layers.2.self_attn.projection.weight"]
    assert torch.equal(S["vision_model.encoder.layers.1.self_attn.projection.weight"], proj_t[:16, :16])
    pre = "text_decoder.bert.encoder.layer."
    key_t = T[pre + "2.crossattention.self.key.weight"]  # [text heads x head dim, vision width]
    assert torch.equal(S[pre + "1.crossattention.self.key.weight"], key_t[:24, :16])
    assert torch.equal(S["text_decoder.bert.embeddings.word_embeddings.weight"],
                       T["text_decoder.bert.embeddings.word_embeddings.weight"][:, :24])
    assert torch.equal(S["vision_model.embeddings.position_embedding"],
                       T["vision_model.embeddings.position_embedding"][..., :16])
    px, ids, mask = _inputs()
    assert student(pixel_values=px, input_ids=ids, attention_mask=mask).logits.shape == (3, 7, t.vocab_size)


def test_random_init_copies_nothing(teachers):
    teacher = teachers["retrieval"]
    torch.manual_seed(0)
    student = build_blip_student(teacher, vision_layers=2, text_layers=2, init="random")
    assert not torch.equal(student.itm_head.weight, teacher.itm_head.weight)
    assert not torch.equal(student.vision_model.encoder.layers[0].mlp.fc1.weight,
                           teacher.vision_model.encoder.layers[0].mlp.fc1.weight)


def test_save_pretrained_round_trip(teachers, tmp_path):
    from transformers import BlipForImageTextRetrieval

    student = build_blip_student(teachers["retrieval"], vision_layers=2, text_layers=2, text_width=16).eval()
    student.save_pretrained(tmp_path / "s")
    loaded = BlipForImageTextRetrieval.from_pretrained(tmp_path / "s").eval()
    assert loaded.config.text_config.hidden_size == 16 and loaded.config.vision_config.num_hidden_layers == 2
    px, ids, mask = _inputs(1)
    with torch.no_grad():
        a = student(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False).itm_score
        b = loaded(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False).itm_score
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a directory works as the teacher too
    from_dir = build_blip_student(tmp_path / "s", vision_layers=1, text_layers=1)
    assert torch.equal(from_dir.itm_head.weight, student.itm_head.weight)


def test_presets_are_fractions_of_the_teacher(teachers):
    assert {"blip-small", "blip-tiny"} <= set(list_blip_students())
    cfg = teachers["retrieval"].config
    assert BlipStudentPreset(0.5, 0.5).resolve(cfg) == dict(vision_layers=2, vision_width=32, text_layers=2,
                                                            text_width=32)
    # half of 32 channels in heads of 8; a quarter of 4 layers
    assert BlipStudentPreset(0.25, 0.25, 0.5, 0.4).resolve(cfg) == dict(vision_layers=1, vision_width=16,
                                                                        text_layers=1, text_width=8)
    small = build_blip_student_preset(teachers["captioning"], "blip-small")
    assert small.config.text_config.num_hidden_layers == 2 and small.config.vision_config.hidden_size == 32


def test_list_models_shows_the_presets(capsys):
    from openclip_distill import main as distill_main

    assert distill_main.main(["--list-models"]) == 0
    names = capsys.readouterr().out.split()
    assert "blip-small" in names and "blip-tiny" in names


def test_bad_inputs_are_one_line_errors(teachers, tmp_path):
    teacher = teachers["retrieval"]
    with pytest.raises(DistillUsageError, match="vision_layers=5: the student has 5 layers, more than the teacher's 4"):
        build_blip_student(teacher, vision_layers=5, text_layers=2)
    with pytest.raises(DistillUsageError, match="text_layers=0"):
        build_blip_student(teacher, vision_layers=2, text_layers=0)
    with pytest.raises(DistillUsageError, match="vision_width=12: .* multiple of its head width 8"):
        build_blip_student(teacher, vision_layers=2, text_layers=2, vision_width=12)
    with pytest.raises(DistillUsageError, match="text_width=64"):
        build_blip_student(teacher, vision_layers=2, text_layers=2, text_width=64)
    with pytest.raises(DistillUsageError, match="init='copy'"):
        build_blip_student(teacher, vision_layers=2, text_layers=2, init="copy")
    with pytest.raises(DistillUsageError, match="a Linear is not one of BlipForImageTextRetrieval"):
        build_blip_student(torch.nn.Linear(2, 2), vision_layers=1, text_layers=1)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(DistillUsageError, match="holds a bert model"):
        build_blip_student(bert, vision_layers=1, text_layers=1)
    with pytest.raises(DistillUsageError, match="no config.json"):
        build_blip_student(tmp_path / "missing", vision_layers=1, text_layers=1)
    with pytest.raises(DistillUsageError, match="unknown BLIP student 'blip-huge'"):
        build_blip_student_preset(teacher, "blip-huge")
