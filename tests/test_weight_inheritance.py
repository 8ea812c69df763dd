"""--student-init teacher (TinyCLIP weight inheritance): hand-written slices of the teacher's tensors on tiny
configs, OpenCLIP's own position-embedding resize as the reference for a different grid, an identical copy
when the architectures match, one-line errors when they cannot map, and a CLI run."""
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from open_clip.model import resize_pos_embed

import openclip_distill  # noqa: F401  (registers the shipped configs)
from openclip_distill.errors import DistillUsageError
from openclip_distill.models.weight_inheritance import (inherit_from_teacher, inherited_tower_state,
                                                        uniform_layer_selection)


def _cfg(image_size, patch, layers, width, head_width, t_width, t_heads, t_layers, ctx, embed, mlp_ratio=4.0):
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch,
                           "head_width": head_width, "mlp_ratio": mlp_ratio},
            "text_cfg": {"context_length": ctx, "vocab_size": 500, "width": t_width, "heads": t_heads,
                         "layers": t_layers}}


CONFIGS = {
    # teacher: 4 layers, 4 heads of 16 (image) / 4 heads of 8 (text)
    "inh-teacher": _cfg(32, 8, 4, 64, 16, 32, 4, 4, 16, 32),
    # half depth, leading 2 of 4 heads (same head width), a 6x6 grid instead of 4x4, shorter context
    "inh-student-heads": _cfg(48, 8, 2, 32, 16, 16, 2, 2, 12, 16, mlp_ratio=3.0),
    # narrower heads: 4 heads of 8 dims (the leading half of each teacher head)
    "inh-student-narrow": _cfg(32, 8, 2, 32, 8, 16, 4, 2, 16, 16),
    "inh-student-patch16": _cfg(32, 16, 2, 32, 16, 16, 2, 2, 16, 16),
    "inh-student-wide-mlp": _cfg(32, 8, 2, 32, 16, 16, 2, 2, 16, 16, mlp_ratio=16.0),
    "inh-student-many-heads": _cfg(32, 8, 2, 128, 16, 16, 2, 2, 16, 16),
    "inh-student-deep": _cfg(32, 8, 6, 32, 16, 16, 2, 2, 16, 16),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("inh_configs")
    for name, cfg in CONFIGS.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    torch.manual_seed(0)
    return lambda name: open_clip.create_model(name)


def _head_rows(w, t_heads, t_hd, s_heads, s_hd, chunks):
    """Hand slices: per chunk (q, k, v), per kept head, its leading s_hd rows."""
    return torch.cat([w[c * t_heads * t_hd + h * t_hd: c * t_heads * t_hd + h * t_hd + s_hd]
                      for c in range(chunks) for h in range(s_heads)])


def test_uniform_layer_selection():
    assert uniform_layer_selection(4, 2) == [0, 2]
    assert uniform_layer_selection(12, 5) == [0, 2, 4, 6, 8]
    assert uniform_layer_selection(24, 12) == list(range(0, 24, 2))
    assert uniform_layer_selection(3, 3) == [0, 1, 2]
    with pytest.raises(DistillUsageError, match="--student-init"):
        uniform_layer_selection(2, 3)


@pytest.mark.parametrize("student_name,s_heads,s_hd,t_s_heads,t_s_hd",
                         [("inh-student-heads", 2, 16, 2, 8), ("inh-student-narrow", 4, 8, 4, 4)])
def test_inherited_tensors_are_the_hand_cut_teacher_slices(models, student_name, s_heads, s_hd, t_s_heads, t_s_hd):
    teacher, student = models("inh-teacher"), models(student_name)
    n = inherit_from_teacher(student, teacher, ("image", "text"))
    s, t = student.state_dict(), teacher.state_dict()
    assert n == len(s)  # every tensor of both towers + the logit scale
    eq = torch.testing.assert_close
    ws, mlp = 32, student.visual.transformer.resblocks[0].mlp.c_fc.out_features
    for i, ti in enumerate([0, 2]):  # uniform selection of 2 of 4 layers
        sp, tp = f"visual.transformer.resblocks.{i}.", f"visual.transformer.resblocks.{ti}."
        eq(s[sp + "attn.in_proj_weight"], _head_rows(t[tp + "attn.in_proj_weight"], 4, 16, s_heads, s_hd, 3)[:, :ws])
        eq(s[sp + "attn.in_proj_bias"], _head_rows(t[tp + "attn.in_proj_bias"], 4, 16, s_heads, s_hd, 3))
        eq(s[sp + "attn.out_proj.weight"],
           _head_rows(t[tp + "attn.out_proj.weight"].T, 4, 16, s_heads, s_hd, 1).T[:ws])
        eq(s[sp + "attn.out_proj.bias"], t[tp + "attn.out_proj.bias"][:ws])
        eq(s[sp + "mlp.c_fc.weight"], t[tp + "mlp.c_fc.weight"][:mlp, :ws])
        eq(s[sp + "mlp.c_fc.bias"], t[tp + "mlp.c_fc.bias"][:mlp])
        eq(s[sp + "mlp.c_proj.weight"], t[tp + "mlp.c_proj.weight"][:ws, :mlp])
        for ln in ("ln_1", "ln_2"):
            eq(s[sp + ln + ".weight"], t[tp + ln + ".weight"][:ws])
            eq(s[sp + ln + ".bias"], t[tp + ln + ".bias"][:ws])
        sp, tp = f"transformer.resblocks.{i}.", f"transformer.resblocks.{ti}."
        eq(s[sp + "attn.in_proj_weight"], _head_rows(t[tp + "attn.in_proj_weight"], 4, 8, t_s_heads, t_s_hd, 3)[:, :16])
        eq(s[sp + "attn.out_proj.weight"],
           _head_rows(t[tp + "attn.out_proj.weight"].T, 4, 8, t_s_heads, t_s_hd, 1).T[:16])
    eq(s["visual.conv1.weight"], t["visual.conv1.weight"][:ws])
    eq(s["visual.class_embedding"], t["visual.class_embedding"][:ws])
    eq(s["visual.ln_pre.weight"], t["visual.ln_pre.weight"][:ws])
    eq(s["visual.ln_post.bias"], t["visual.ln_post.bias"][:ws])
    eq(s["visual.proj"], t["visual.proj"][:ws, :16])
    # position embeddings: OpenCLIP's own checkpoint resize (class token kept, bicubic grid) then the channel cut
    ref = {"visual.positional_embedding": t["visual.positional_embedding"].clone()}
    resize_pos_embed(ref, student)
    eq(s["visual.positional_embedding"], ref["visual.positional_embedding"][:, :ws])
    ctx = student.positional_embedding.shape[0]
    eq(s["positional_embedding"], t["positional_embedding"][:ctx, :16])
    eq(s["token_embedding.weight"], t["token_embedding.weight"][:, :16])
    eq(s["text_projection"], t["text_projection"][:16, :16])
    eq(s["ln_final.weight"], t["ln_final.weight"][:16])
    eq(s["logit_scale"], t["logit_scale"])


def test_same_architecture_is_an_exact_copy(models):
    teacher, student = models("inh-teacher"), models("inh-teacher")
    inherit_from_teacher(student, teacher)
    for k, v in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(student.encode_image(x), teacher.encode_image(x))


def test_only_the_requested_towers_change(models):
    teacher, student = models("inh-teacher"), models("inh-student-heads")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    inherit_from_teacher(student, teacher, ("image",))
    after = student.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("visual.") and k != "logit_scale")
    assert not torch.equal(after["visual.proj"], before["visual.proj"])


@pytest.mark.parametrize("student_name,tower,needle", [
    ("inh-student-patch16", "image", "patch size"),
    ("inh-student-wide-mlp", "image", "larger than the teacher"),
    ("inh-student-many-heads", "image", "8 heads of 16"),
    ("inh-student-deep", "image", "more than the teacher"),
    ("demo-student", "image", "ModifiedResNet"),
])
def test_unmappable_architectures_raise_one_line(models, student_name, tower, needle):
    teacher, student = models("inh-teacher"), models(student_name)
    with pytest.raises(DistillUsageError, match="--student-init") as e:
        inherited_tower_state(student, teacher, tower)
    assert needle in str(e.value) and "\n" not in str(e.value)


def _run_cli(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "openclip_distill.main", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _cli_args(corpus, logs, name, teacher_ckpt, model, *extra):
    return ["--distill-teacher", "demo-teacher", "--distill-teacher-pretrained", teacher_ckpt, "--model", model,
            "--train-images", corpus["images"], "--train-texts", corpus["texts"], "--batch-size", "8",
            "--epochs", "1", "--train-num-samples", "16", "--lr", "0", "--warmup", "1", "--wd", "0",
            "--precision", "fp32", "--workers", "0", "--logs", str(logs), "--name", name, "--device", "cpu",
            "--report-to", "", *extra]


def test_cli_student_init_teacher(tiny_corpus, tmp_path):
    torch.manual_seed(1)
    teacher = open_clip.create_model("demo-teacher")
    ckpt = str(tmp_path / "teacher.pt")
    torch.save({"state_dict": teacher.state_dict()}, ckpt)
    res = _run_cli(_cli_args(tiny_corpus, tmp_path, "inh", ckpt, "demo-student-vit", "--student-init", "teacher",
                             "--student-text-tower", "train"))
    assert res.returncode == 0, res.stderr[-3000:]
    # lr 0: the written student is the inherited initialisation
    s = torch.load(tmp_path / "inh" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    t = teacher.state_dict()
    eq = torch.testing.assert_close
    eq(s["visual.transformer.resblocks.1.mlp.c_fc.weight"], t["visual.transformer.resblocks.2.mlp.c_fc.weight"][:256, :64])
    eq(s["visual.transformer.resblocks.1.attn.in_proj_weight"],
       _head_rows(t["visual.transformer.resblocks.2.attn.in_proj_weight"], 4, 32, 2, 32, 3)[:, :64])
    eq(s["visual.proj"], t["visual.proj"][:64])
    eq(s["token_embedding.weight"], t["token_embedding.weight"])  # same text tower: copied whole
    eq(s["transformer.resblocks.1.attn.in_proj_weight"], t["transformer.resblocks.1.attn.in_proj_weight"])
    assert "initialised from teacher" in (tmp_path / "inh" / "out.log").read_text()
    # a ModifiedResNet student cannot inherit: one line naming the flag, exit status 2
    res = _run_cli(_cli_args(tiny_corpus, tmp_path, "bad", ckpt, "demo-student", "--student-init", "teacher"))
    assert res.returncode == 2 and "--student-init teacher" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --student-init teacher: inheritance maps")


def test_run_without_an_open_clip_teacher_cannot_inherit(models):
    import types
    from openclip_distill.task_factory import _inherit_teacher_weights
    args = types.SimpleNamespace(distill_teacher="hf:/models/altclip", student_text_tower="train")
    student = models("inh-student-heads")
    with pytest.raises(DistillUsageError, match="--student-init teacher: --teacher-cache keeps no teacher weights"):
        _inherit_teacher_weights(args, student, None, ("image",))
    hf_like = types.SimpleNamespace(kind="hf_clip")
    with pytest.raises(DistillUsageError, match="is not an OpenCLIP model"):
        _inherit_teacher_weights(args, student, hf_like, ("image",))
