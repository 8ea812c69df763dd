"""The DC-CLIP demo's multilingual teacher: a small ``transformers`` ``AltCLIPModel`` with its own Unigram
tokenizer, loaded like any ``hf:`` teacher: ``create_teacher("hf:" + TEACHER_DIR)``. It stands in for
AltCLIP (Chen et al., 2022, "AltCLIP: Altering the Language Encoder in CLIP"), the teacher of DC-CLIP,
and is made the way AltCLIP was made:

* **image tower**: the English demo teacher's ViT (``demo-teacher``, the DIME-FM demo's shipped
  OpenCLIP checkpoint: 4 blocks, 128 wide, 4 px patches) copied unchanged into transformers'
  CLIP vision layout, with its projection and logit scale (AltCLIP keeps CLIP's image encoder);
* **text tower**: an XLM-R-style encoder (2 blocks, 64 wide, pooled at ``<s>``) trained by AltCLIP's
  "teacher learning": on the parallel English/Chinese captions of the bilingual ``teacher_pairs``, both
  the English and the Chinese caption regress onto the English CLIP text embedding of the English
  caption, ``L = mean_rows ||n(g(x)) - n(f_en(x_en))||^2`` with ``n`` the L2 normalisation.

The package ships the result in ``openclip_distill/demo/assets/dc-clip-teacher/`` (fp16 safetensors,
``config.json``, the tokenizer, ``preprocessor_config.json``), made with::

    python -m openclip_distill.demo.altclip_teacher --out openclip_distill/demo/assets/dc-clip-teacher

(corpus seed 0 and :data:`TRAIN_DEFAULTS`, on a CPU, a few minutes).

Tokenizer: a SentencePiece-style Unigram (``tokenizers``) trained on the captions of both languages,
with XLM-R's special ids (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3) and its ``<s> text </s>``
template; every CJK character is its own pre-token, so Chinese splits into characters and English
into sub-words.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .bilingual_corpus import LANGUAGES, generate_bilingual_corpus

TEACHER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "dc-clip-teacher")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "openclip_distill", "demo")
IMAGE_SIZE = 32
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0-3 (+ a mask token)
CJK = r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"  # CJK punctuation, unified ideographs, full-width forms

# architecture: the demo-teacher's ViT (4 x 128 wide, 4 px patches, GELU), an XLM-R-style text tower 2 x 64
ARCH = dict(vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                        image_size=IMAGE_SIZE, patch_size=4, hidden_act="gelu", layer_norm_eps=1e-5),
            text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=66, project_dim=64),
            projection_dim=64, vocab_size=800)
TRAIN_DEFAULTS: Dict[str, float] = dict(steps=700, batch_size=256, lr=3e-3, wd=0.01, warmup=50)


def build_tokenizer(texts: Sequence[str], vocab_size: int = ARCH["vocab_size"]):
    """Train the Unigram tokenizer on ``texts``; return an ``XLMRobertaTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer
    from transformers import XLMRobertaTokenizerFast

    tk = Tokenizer(Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
        pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
    ])
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>",
                             shrinking_factor=0.75, max_piece_length=12, n_sub_iterations=2)
    tk.train_from_iterator(list(texts), trainer=trainer)
    ids = {t: tk.token_to_id(t) for t in SPECIAL_TOKENS}
    assert [ids[t] for t in SPECIAL_TOKENS[:4]] == [0, 1, 2, 3], ids
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=ARCH["text"]["max_position_embeddings"] - 2)


def build_model(vocab_size: int, seed: int = 0):
    """A randomly initialised ``AltCLIPModel`` of :data:`ARCH` (XLM-R ids: pad 1, bos 0, eos 2)."""
    from transformers import AltCLIPConfig, AltCLIPModel

    config = AltCLIPConfig(
        text_config=dict(ARCH["text"], vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        vision_config=dict(ARCH["vision"]), projection_dim=ARCH["projection_dim"])
    torch.manual_seed(seed)
    return AltCLIPModel(config)


def read_captions(pattern_or_dir: str) -> Dict[str, List[str]]:
    """The captions of the ``teacher_pairs`` shards per language (``<key>.<lang>.txt``), in shard order."""
    d = pattern_or_dir if os.path.isdir(pattern_or_dir) else os.path.dirname(pattern_or_dir)
    captions: Dict[str, List[str]] = {lang: [] for lang in LANGUAGES}
    for shard in sorted(f for f in os.listdir(d) if f.endswith(".tar")):
        with tarfile.open(os.path.join(d, shard)) as tar:
            for m in tar:
                ext = m.name.split(".", 1)[1]
                if ext.endswith(".txt") and ext[:-4] in captions:
                    captions[ext[:-4]].append(tar.extractfile(m).read().decode("utf-8"))
    return captions


def vision_state_dict_from_open_clip(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An OpenCLIP ViT's ``visual.*`` weights (and ``logit_scale``) renamed to transformers' CLIP vision
    layout (``vision_model.*``, ``visual_projection``): the fused ``in_proj`` splits into q, k, v and the
    ``proj`` matrix (width x embed) becomes the projection's weight (embed x width)."""
    out = {
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "logit_scale": sd["logit_scale"],
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for t in ("weight", "bias"):
            out[f"vision_model.{ours}.{t}"] = sd[f"visual.{theirs}.{t}"]
    n_blocks = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    for i in range(n_blocks):
        src, dst = f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for t in ("weight", "bias"):
            for name, chunk in zip("qkv", sd[src + f"attn.in_proj_{t}"].chunk(3)):
                out[dst + f"self_attn.{name}_proj.{t}"] = chunk
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{ours}.{t}"] = sd[src + f"{theirs}.{t}"]
    return {k: v.float().clone() for k, v in out.items()}


def english_text_targets(captions: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """The English demo teacher's L2-normalised text embeddings of ``captions`` (the regression targets)."""
    import open_clip

    from .teacher import TEACHER_MODEL, get_demo_teacher

    model = open_clip.create_model(TEACHER_MODEL, pretrained=get_demo_teacher()).eval()
    tokenizer = open_clip.get_tokenizer(TEACHER_MODEL)
    with torch.no_grad():
        return torch.cat([F.normalize(model.encode_text(tokenizer(list(captions[i:i + batch_size]))).float(), dim=-1)
                          for i in range(0, len(captions), batch_size)])


def build_teacher_from_demo_teacher(tokenizer, seed: int = 0):
    """The ``AltCLIPModel`` of :data:`ARCH` with the demo teacher's image tower and logit scale loaded
    (frozen) and a randomly initialised text tower."""
    from .teacher import get_demo_teacher

    model = build_model(len(tokenizer), seed=seed)
    sd = torch.load(get_demo_teacher(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(vision_state_dict_from_open_clip(sd), strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(("vision_model.", "visual_projection"))], missing
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("text_model.", "text_projection")))
    return model


def save_teacher(model, tokenizer, out_dir: str) -> str:
    """Write the model in fp16 (safetensors), the tokenizer and ``preprocessor_config.json``."""
    from transformers import CLIPImageProcessor

    os.makedirs(out_dir, exist_ok=True)
    model.half().save_pretrained(out_dir)
    model.float()
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)).save_pretrained(out_dir)
    return out_dir


def train_dc_clip_teacher(corpus, out_dir: str = TEACHER_DIR, *, seed: int = 0, steps: int = 700,
                          batch_size: int = 256, lr: float = 3e-3, wd: float = 0.01, warmup: int = 50,
                          log_every: int = 100) -> str:
    """Build and train the teacher on ``corpus['teacher_pairs']`` (see the module docstring); save it to
    ``out_dir``. Each step: ``batch_size`` caption pairs, English and Chinese rows against one target."""
    log = logging.getLogger("openclip_distill.demo")
    t0 = time.time()
    captions = read_captions(str(corpus["teacher_pairs"]))
    n = len(captions["en"])
    tokenizer = build_tokenizer(captions["en"] + captions["zh"])
    tokens = {lang: tokenizer(captions[lang], padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="pt")
              for lang in LANGUAGES}
    targets = english_text_targets(captions["en"])
    model = build_teacher_from_demo_teacher(tokenizer, seed=seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("dc-clip teacher: %d caption pairs, tokenizer of %d pieces, %.2fM parameters (%.2fM trained), "
             "%d steps of %d (prepared in %.0f s)", n, len(tokenizer), sum(p.numel() for p in model.parameters()) / 1e6,
             sum(p.numel() for p in params) / 1e6, steps, batch_size, time.time() - t0)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        ids = torch.cat([tokens[lang]["input_ids"][idx] for lang in LANGUAGES])
        mask = torch.cat([tokens[lang]["attention_mask"][idx] for lang in LANGUAGES])
        keep = int(mask.sum(1).max())
        emb = model.get_text_features(input_ids=ids[:, :keep], attention_mask=mask[:, :keep])
        emb = F.normalize(getattr(emb, "pooler_output", emb), dim=-1)
        loss = (emb - targets[idx].repeat(len(LANGUAGES), 1)).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            log.info("dc-clip teacher: step %d/%d loss %.4f lr %.2e (%.0f s)", step + 1, steps, loss.item(),
                     sched.get_last_lr()[0], time.time() - t0)
    save_teacher(model.eval(), tokenizer, out_dir)
    log.info("dc-clip teacher: trained in %.0f s -> %s", time.time() - t0, out_dir)
    return out_dir


def get_dc_clip_teacher(corpus=None, *, seed: int = 0, cache_dir: str = CACHE_DIR) -> str:
    """Directory of the teacher: the shipped one (seed 0), else a cached one, else trained now."""
    if seed == 0 and os.path.isfile(os.path.join(TEACHER_DIR, "config.json")):
        return TEACHER_DIR
    out = os.path.join(cache_dir, f"dc-clip-teacher-seed{seed}")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    return train_dc_clip_teacher(_as_corpus(corpus, seed), out, seed=seed)


def _as_corpus(corpus, seed: int):
    if corpus is None:
        corpus = os.path.join(CACHE_DIR, f"bilingual-corpus-seed{seed}")
    if isinstance(corpus, (str, os.PathLike)):
        corpus = generate_bilingual_corpus(str(corpus), seed=seed, n_images=0, n_texts=0, n_paired=2)
    return corpus


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.demo.altclip_teacher",
                                description="Train the DC-CLIP demo's AltCLIP teacher on the bilingual corpus.")
    p.add_argument("--out", default=TEACHER_DIR, help="output directory (save_pretrained layout)")
    p.add_argument("--data", default=None, help="bilingual corpus root (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    for k, v in TRAIN_DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    logging.getLogger("openclip_distill.demo").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="dc-clip-corpus-") as tmp:
        corpus = _as_corpus(a.data or os.path.join(tmp, "corpus"), a.seed)
        train_dc_clip_teacher(corpus, a.out, seed=a.seed, **{k: getattr(a, k) for k in TRAIN_DEFAULTS})
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
