"""The shipped student configs are registered with OpenCLIP and fit their intended teachers."""
import open_clip
import torch

import openclip_distill
from openclip_distill.models.text_tower import adopt_text_tower, text_tower_state_dict


def test_configs_registered():
    names = openclip_distill.list_student_models()
    assert {"DimeFM-ViT-B-32-L14text", "ViT-B-32-6L", "ViT-S-32-6L", "demo-student", "test-tiny-student"} <= set(names)
    assert set(names) <= set(open_clip.list_models())


def test_dime_fm_students_share_vit_l14_text_tower():
    """--student-text-tower teacher with the OpenAI ViT-L-14 teacher: same text_cfg, embed_dim and QuickGELU."""
    teacher = open_clip.get_model_config("ViT-L-14")
    quick_gelu = open_clip.get_pretrained_cfg("ViT-L-14", "openai").get("quick_gelu", False)
    for name in ("DimeFM-ViT-B-32-L14text", "DimeFM-ViT-S-32-L14text"):
        cfg = open_clip.get_model_config(name)
        assert cfg["text_cfg"] == teacher["text_cfg"] and cfg["embed_dim"] == teacher["embed_dim"]
        assert cfg.get("quick_gelu", False) == quick_gelu


def test_adopt_teacher_text_tower_copies_and_freezes():
    teacher = open_clip.create_model("test-tiny-teacher")
    student = open_clip.create_model("test-tiny-student")
    adopt_text_tower(student, text_tower_state_dict(teacher), "test-tiny-student", "test-tiny-teacher")
    tokens = open_clip.get_tokenizer("test-tiny-teacher")(["a red square", "a blue circle"])
    with torch.no_grad():
        torch.testing.assert_close(student.encode_text(tokens), teacher.encode_text(tokens))
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert "token_embedding.weight" in frozen and "logit_scale" in frozen
    assert not any(n.startswith("visual.") for n in frozen)
