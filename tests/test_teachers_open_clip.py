"""The OpenCLIP teacher behind the Teacher contract, against the model's own encoders."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

import openclip_distill
from openclip_distill.errors import DistillUsageError


def test_open_clip_teacher_matches_the_model():
    torch.manual_seed(0)
    teacher = openclip_distill.create_teacher("test-tiny-teacher")
    model, tok = teacher.model, open_clip.get_tokenizer("test-tiny-teacher")
    assert teacher.modalities == frozenset({"image", "text"}) and teacher.kind == "open_clip"
    assert teacher.image_size == (32, 32) and teacher.embed_dim == 32 and teacher.logit_bias is None
    assert teacher.logit_scale == pytest.approx(float(model.logit_scale.exp()))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    views = torch.rand(3, 3, 48, 48)  # larger views: the teacher resizes them itself
    resized = F.interpolate(views, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want_i = F.normalize(model.encode_image((resized - mean) / std), dim=-1)
        want_t = F.normalize(model.encode_text(tok(["a red square", "two blue circles on grass"])), dim=-1)
    torch.testing.assert_close(teacher.encode_image(views), want_i, rtol=0, atol=1e-6)
    torch.testing.assert_close(teacher.encode_text(["a red square", "two blue circles on grass"]), want_t,
                               rtol=0, atol=1e-6)
    tower = teacher.text_tower_state_dict()
    assert "token_embedding.weight" in tower and "logit_scale" in tower and not any(k.startswith("visual.")
                                                                                    for k in tower)
    assert teacher.describe()["teacher_kind"] == "open_clip"


@pytest.mark.parametrize("name, pretrained, needle", [
    ("ViT-Nope-1", None, "--distill-teacher"),
    ("test-tiny-teacher", "no-such-tag", "--distill-teacher-pretrained"),
    ("hf:/no/such/dir", None, "--distill-teacher"),
])
def test_create_teacher_bad_names(name, pretrained, needle):
    with pytest.raises(DistillUsageError) as e:
        openclip_distill.create_teacher(name, pretrained)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)  # library code raises ValueError; the CLI prints one line
