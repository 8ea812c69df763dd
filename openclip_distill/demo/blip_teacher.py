"""The DLIP demo's BLIP teacher: a small ``transformers`` BLIP (retrieval + captioning) at the demo
corpus' 32 px images, with its own BERT WordPiece tokenizer, loaded like any BLIP teacher:
``--distill-teacher hf:<TEACHER_DIR>`` (``retrieval/`` and ``captioning/`` ``save_pretrained`` dirs).

It stands in for BLIP (Li et al., "BLIP", ICML 2022), DLIP's teacher, and is trained the way BLIP is
pre-trained, on the corpus' paired ``teacher_pairs`` captions, with BLIP's three task losses summed
with weight 1 (:class:`~openclip_distill.losses.dlip.DlipLoss` with every distillation weight 0):
ITC (InfoNCE at a fixed temperature 0.07), ITM (hard negatives mined from the ITC similarities) and
LM (teacher-forced next-token cross-entropy of the image-grounded decoder). One vision tower is shared
by the two models during training (a :class:`~openclip_distill.models.blip_pair.BlipPair` with
``share_vision=True``), so both saved directories hold the same ViT weights.

Architecture (:func:`demo_blip_config`): ViT of 4 blocks, 96 wide, 3 heads, 8 px patches (17 tokens);
BERT text encoder (with cross-attention for ITM) and decoder of 2 blocks each, 96 wide; 64-d ITC space;
1.60M parameters as loaded (the two models' copies of the ViT counted twice).

Tokenizer (:func:`build_caption_tokenizer`): a lower-casing BERT WordPiece whose vocabulary is BERT's
special tokens, BLIP's decoder-start token ``[DEC]`` (the ``bos_token``), every word and punctuation
mark of the corpus' caption vocabulary, and single letters / ``##letters`` so that an unseen word
still tokenises. Built offline from :mod:`openclip_distill.demo.corpus`' word lists.

The package ships the result in ``openclip_distill/demo/assets/dlip-teacher/`` (fp16 safetensors), made with::

    python -m openclip_distill.demo.blip_teacher --out openclip_distill/demo/assets/dlip-teacher

(corpus seed 0 and :data:`TRAIN_DEFAULTS`: 1000 steps of 64 of the 20000 pairs, 416 s on a busy 2-core CPU,
one thread; progress is logged). On the 960 first eval pairs it then scores i2t / t2i R@1 7.3% / 7.3%
(R@5 35.7% / 30.9%; chance 0.1%: R@1 asks for the exact caption string among 960, most of which name the
same few attributes), BLEU-4 0.105 and CIDEr 1.22 for its greedy captions.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import string
import sys
import time
from typing import Dict, Iterable, List, Optional

import torch

from . import corpus as world

TEACHER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "dlip-teacher")
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP's processor statistics (OpenAI CLIP's)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# the corpus the teacher is trained on: only its paired teacher split (and the eval split it always has)
TEACHER_CORPUS = dict(n_teacher_pairs=20000, n_images=0, n_texts=0, n_paired=1, shard_size=5000)
TRAIN_DEFAULTS = dict(steps=1000, batch_size=64, lr=1e-3, wd=0.05, warmup=50, seed=0)

log = logging.getLogger("openclip_distill.demo")


def caption_words() -> List[str]:
    """Every word and punctuation mark the corpus' captions and prompts can contain (sorted)."""
    texts: List[str] = list(world.CAPTION_TEMPLATES) + list(world.ZEROSHOT_TEMPLATES)
    for table in (world.SYNONYMS, world.POSITION_PHRASES, world.BACKGROUND_PHRASES):
        for v in table.values():
            texts += v
    texts += list(world.COLOURS) + list(world.SHAPES) + list(world.SIZES) + ["a", "an"]
    words = set()
    for t in texts:
        t = re.sub(r"\{[a-z]\}", " ", t.lower())
        words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t))
    return sorted(words)


def build_caption_tokenizer(words: Optional[Iterable[str]] = None):
    """A BERT WordPiece tokenizer (lower case) over ``words`` (default :func:`caption_words`), with
    ``[PAD]``=0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[DEC]`` (bos), then the words, then
    letters, digits, punctuation and ``##`` letters as fall-backs."""
    from transformers import BertTokenizer

    words = caption_words() if words is None else list(words)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words + list(
        string.ascii_lowercase + string.digits + string.punctuation) + ["##" + c for c in string.ascii_lowercase]
    return BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, bos_token="[DEC]")


def demo_blip_config(tokenizer, *, vision_layers=4, text_layers=2, width=96, heads=3, mlp_ratio=4, patch_size=8,
                     embed_dim=64, max_positions=40):
    """The teacher's ``BlipConfig`` (see the module docstring)."""
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=mlp_ratio * width,
                         num_hidden_layers=text_layers, num_attention_heads=heads, encoder_hidden_size=width,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=mlp_ratio * width, num_hidden_layers=vision_layers,
                           num_attention_heads=heads, image_size=world.IMAGE_SIZE, patch_size=patch_size,
                           initializer_range=0.02),  # the vision default, 1e-10, starts every image alike
        image_text_hidden_size=embed_dim)


def build_demo_blip(tokenizer, seed: int = 0, **config_kw):
    """A freshly initialised teacher :class:`BlipPair` (retrieval + captioning, one shared vision tower)."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    from ..models.blip_pair import BlipPair

    torch.manual_seed(seed)
    config = demo_blip_config(tokenizer, **config_kw)
    return BlipPair(BlipForImageTextRetrieval(config), BlipForConditionalGeneration(config), share_vision=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Views in [0, 1] -> the teacher's pixel values ((x - mean) / std, BLIP's processor)."""
    mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def task_loss():
    """BLIP's pre-training objective: ITC + ITM + LM (weight 1 each), no distillation signal."""
    from ..losses.dlip import DlipLoss

    off = {f"{k}_weight": 0.0 for k in ("vision_hidden", "vision_attention", "text_hidden", "itc_kl", "itm_kl",
                                        "cross_attention", "lm_kl")}
    return DlipLoss(**off)


def train_demo_blip(pair, tokenizer, images: torch.Tensor, captions: List[str], *, steps: int, batch_size: int,
                    lr: float, wd: float, warmup: int, seed: int = 0, log_every: int = 50) -> List[Dict[str, float]]:
    """Train ``pair`` in place on (``images`` in [0, 1], ``captions``) with :func:`task_loss`: AdamW, linear
    warm-up then cosine decay, random batches; returns the logged loss rows."""
    from ..models.blip_pair import ITC, ITM, LM

    loss_fn = task_loss()
    params = [p for p in pair.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pair.train()
    rows, t0, n = [], time.time(), images.shape[0]
    for step in range(steps):
        idx = torch.randint(n, (batch_size,), generator=gen)
        enc = tokenizer([captions[i] for i in idx.tolist()], padding="longest", truncation=True, max_length=35,
                        return_tensors="pt")
        out = pair(normalise(images[idx]), enc["input_ids"], enc["attention_mask"], {ITC, ITM, LM},
                   itc_temperature=loss_fn.itc_temperature)
        terms = loss_fn(out, out, output_dict=True)
        total = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                   "elapsed_s": round(time.time() - t0, 1)}
            rows.append(row)
            log.info("[blip teacher] step %d/%d loss %.3f (itc %.3f itm %.3f lm %.3f) %.0f s", step + 1, steps,
                     row["loss"], row["itc_loss"], row["itm_loss"], row["lm_loss"], row["elapsed_s"])
    pair.eval()
    return rows


def save_demo_blip(pair, tokenizer, out: str, dtype=torch.float16) -> str:
    """Write ``out/retrieval`` and ``out/captioning`` (weights in ``dtype``, tokenizer, preprocessor config);
    ``out`` is replaced atomically (written beside, then renamed)."""
    from transformers import BlipImageProcessor

    out = os.path.abspath(out)
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    processor = BlipImageProcessor(size={"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
                                   image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))
    for role in ("retrieval", "captioning"):
        d = os.path.join(tmp, role)
        model = getattr(pair, role)
        model.to(dtype).save_pretrained(d)
        model.float()
        tokenizer.save_pretrained(d)
        processor.save_pretrained(d)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.demo.blip_teacher",
                                description="Train and save the DLIP demo's BLIP teacher.")
    p.add_argument("--out", required=True, help="Directory to write (retrieval/ and captioning/)")
    p.add_argument("--cache-dir", default="./logs/demo_cache", help="Where the demo corpus is generated/cached")
    p.add_argument("--eval-samples", type=int, default=960, help="Eval pairs for the report (0: skip)")
    for k, v in TRAIN_DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    log.setLevel(logging.INFO)
    from ..eval.blip import read_caption_pairs

    t0 = time.time()
    corpus = world.generate_demo_corpus(os.path.join(a.cache_dir, f"dlip-corpus-seed{a.seed}"), a.seed,
                                        **TEACHER_CORPUS)
    images, captions = read_caption_pairs(corpus["teacher_pairs"], (world.IMAGE_SIZE, world.IMAGE_SIZE))
    log.info("[blip teacher] %d caption pairs loaded in %.0f s", len(captions), time.time() - t0)
    tokenizer = build_caption_tokenizer()
    pair = build_demo_blip(tokenizer, seed=a.seed)
    train_demo_blip(pair, tokenizer, images, captions, steps=a.steps, batch_size=a.batch_size, lr=a.lr, wd=a.wd,
                    warmup=a.warmup, seed=a.seed)
    out = save_demo_blip(pair, tokenizer, a.out)
    log.info("[blip teacher] written to %s after %.0f s", out, time.time() - t0)
    if a.eval_samples:
        from ..eval.blip import evaluate_blip, load_blip_model

        teacher = load_blip_model(out)
        ev_images, ev_captions = read_caption_pairs(corpus["eval"], teacher.image_size, a.eval_samples)
        res = evaluate_blip(teacher, ev_images, ev_captions)
        log.info("[blip teacher] eval (%d pairs): %s", len(ev_captions),
                 ", ".join(f"{k} {v:.4g}" for k, v in sorted(res.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
