"""Evaluate BLIP models (a teacher or a DLIP student) on paired image-caption shards.

* **retrieval** - image->text and text->image R@1/R@5 ranked by the ITC cosine ``n(vision_proj(CLS)) .
  n(text_proj(CLS))``; with ``itm_k > 0`` also BLIP's re-ranking (Li et al., "BLIP", ICML 2022,
  ``evaluation`` in ``train_retrieval.py``): each query's top ``k`` candidates by ITC are scored
  ``ITM logit[match] + ITC cosine``, the rest rank below them (keys ``itm_i2t_r1``, ...). Captions with
  the same text count as positives of each other's images (they cannot be told apart).
* **captioning** - greedy captions from ``BlipForConditionalGeneration.generate``, scored against the
  sample's caption with pycocoevalcap's ``Bleu(4)`` (BLEU-4) and ``Cider`` (CIDEr). Captions are
  tokenised simply (lower case, runs of letters and digits) instead of the PTB tokenizer, which needs Java.
* **cost** - ``params`` (distinct parameters of both models), ``flops`` (one image and one caption of
  ``caption_tokens`` tokens through every module: vision tower, text encoder, fusion encoder, decoder;
  ``torch.utils.flop_counter``, 2 FLOPs per multiply-add) and ``images_per_s`` (the ITC image embedding,
  vision tower + projection, on random images).

    python -m openclip_distill.eval.blip --model teacher=blip/ --model student=logs/run/student \\
        --data 'pairs/{0..3}.tar' --out results.json

A model directory holds ``retrieval/`` and/or ``captioning/`` ``save_pretrained`` directories (as
``--distill-teacher hf:`` takes them and the DLIP run writes them), or is one of them.
"""
import argparse
import io
import logging
import re
import sys
import tarfile
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..atomic_files import write_json_atomic
from ..data.image_shards import IMAGE_KEYS
from ..data.shard_paths import expand_patterns
from ..errors import DistillUsageError
from ..models.blip_pair import ITC, ITM, LM
from .retrieval import recall_from_scores, retrieval_recall
from .throughput import measure_encode_per_s

CAPTION_TOKENS = 20


def simple_tokenize(caption: str) -> str:
    """Lower case, runs of letters/digits kept, everything else a separator (stands in for the PTB tokenizer)."""
    return " ".join(re.findall(r"[a-z0-9]+", caption.lower()))


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Corpus BLEU-4 and CIDEr (pycocoevalcap) of ``predictions[i]`` against ``references[i]``."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise DistillUsageError("captioning metrics need pycocoevalcap: pip install 'openclip-distill[dlip]'") from None

    res = {i: [simple_tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def read_caption_pairs(pattern: str, image_size: Tuple[int, int], max_samples: int = 0, flag: str = "--data"):
    """(images [N, 3, H, W] in [0, 1], resized to ``image_size``; captions) from paired webdataset shards
    (an image member and a ``.txt`` caption per key; samples without either are skipped)."""
    from PIL import Image

    images, captions = [], []
    for path in expand_patterns(pattern, flag, exts=(".tar",), example="pairs/{00000..00009}.tar"):
        samples: Dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if not member.isfile() or "." not in member.name:
                    continue
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
        for key in sorted(samples):
            sample = samples[key]
            image_ext = next((e for e in IMAGE_KEYS if e in sample), None)
            if image_ext is None or "txt" not in sample:
                continue
            img = Image.open(io.BytesIO(sample[image_ext])).convert("RGB").resize(tuple(image_size)[::-1],
                                                                                  Image.BICUBIC)
            images.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                          .reshape(img.size[1], img.size[0], 3).permute(2, 0, 1).float() / 255.0)
            captions.append(sample["txt"].decode("utf-8").strip())
            if max_samples and len(images) >= max_samples:
                return torch.stack(images), captions
    if not images:
        raise DistillUsageError(f"{flag}: no image+caption samples in {pattern!r}; pass paired webdataset shards "
                                f"(an image and a .txt per key)")
    return torch.stack(images), captions


@torch.no_grad()
def _itc(pair, pixels, ids, mask, batch_size):
    """ITC embeddings and the last vision hidden states of every image (for ITM)."""
    img, txt, states = [], [], []
    r = pair.retrieval
    for s in range(0, pixels.shape[0], batch_size):
        h = r.vision_model(pixel_values=pixels[s:s + batch_size]).last_hidden_state
        states.append(h)
        img.append(F.normalize(r.vision_proj(h[:, 0, :]), dim=-1))
    for s in range(0, ids.shape[0], batch_size):
        t = r.text_encoder(input_ids=ids[s:s + batch_size], attention_mask=mask[s:s + batch_size]).last_hidden_state
        txt.append(F.normalize(r.text_proj(t[:, 0, :]), dim=-1))
    return torch.cat(img).float(), torch.cat(txt).float(), torch.cat(states)


@torch.no_grad()
def itm_logit(pair, image_states, ids, mask) -> torch.Tensor:
    """The ITM head's match logit for each (image states row, caption row) pair."""
    r = pair.retrieval
    atts = torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device)
    fused = r.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_states,
                           encoder_attention_mask=atts).last_hidden_state
    return r.itm_head(fused[:, 0, :])[:, 1].float()


def itm_rerank_scores(sim: torch.Tensor, match_logit, k: int):
    """BLIP's re-ranking: for image ``i`` its top-``k`` texts by ``sim`` get ``match_logit(i, texts) + sim``,
    the others ``-inf``-like; the same for each text over images. Returns (i2t [N, M], t2i [M, N])."""
    low = torch.finfo(torch.float32).min
    n, m = sim.shape
    i2t = torch.full((n, m), low)
    t2i = torch.full((m, n), low)
    for i in range(n):
        top = sim[i].topk(min(k, m)).indices
        i2t[i, top.cpu()] = (match_logit(torch.full_like(top, i), top) + sim[i, top]).float().cpu()
    for t in range(m):
        top = sim[:, t].topk(min(k, n)).indices
        t2i[t, top.cpu()] = (match_logit(top, torch.full_like(top, t)) + sim[top, t]).float().cpu()
    return i2t, t2i


@torch.no_grad()
def generate_captions(pair, tokenizer, pixels, batch_size, max_new_tokens=CAPTION_TOKENS) -> List[str]:
    out = []
    for s in range(0, pixels.shape[0], batch_size):
        tokens = pair.captioning.generate(pixel_values=pixels[s:s + batch_size], max_new_tokens=max_new_tokens,
                                          num_beams=1, do_sample=False)
        out += tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return out


def count_flops(fn) -> int:
    """FLOPs ``fn()`` performs, by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def blip_flops(pair, image_size, caption_tokens=CAPTION_TOKENS, device="cpu") -> int:
    """FLOPs of one image and one ``caption_tokens``-token caption through every module of ``pair``."""
    parts = set()
    if pair.retrieval is not None:
        parts |= {ITC, ITM}
    if pair.captioning is not None:
        parts.add(LM)
    dtype = next(pair.parameters()).dtype
    pixels = torch.zeros(1, 3, *image_size, device=device, dtype=dtype)
    ids = torch.full((1, caption_tokens), 7, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    one = (torch.zeros(1, dtype=torch.long, device=device),) * 2
    return count_flops(lambda: pair(pixels, ids, mask, parts, itm_pairs=one))


def images_per_s(pair, image_size, device="cpu", batch_size=32, iters=5) -> float:
    """Throughput of the ITC image embedding (vision tower + projection) on random images."""
    model = pair.retrieval or pair.captioning
    dtype = next(pair.parameters()).dtype
    x = torch.rand(batch_size, 3, *image_size, device=device, dtype=dtype)
    if pair.retrieval is not None:
        encode = lambda v: model.vision_proj(model.vision_model(pixel_values=v).last_hidden_state[:, 0, :])  # noqa
    else:
        encode = lambda v: model.vision_model(pixel_values=v).last_hidden_state  # noqa: E731
    return measure_encode_per_s(encode, x, iters=iters, warmup=1)


def evaluate_blip(teacher_like, images: torch.Tensor, captions: Sequence[str], *, itm_k: int = 0,
                  batch_size: int = 32, device="cpu", max_new_tokens: int = CAPTION_TOKENS,
                  measure_speed: bool = True) -> Dict[str, float]:
    """Every metric of the module docstring for a :class:`~openclip_distill.teachers.hf_blip.BlipTeacher`
    (``pair``, ``tokenizer``, ``image_input()``) on ``images`` (views in [0, 1]) and their ``captions``."""
    pair = teacher_like.pair.eval()
    pixels = teacher_like.image_input()(images.to(device)).to(teacher_like.dtype)
    out: Dict[str, float] = {"params": float(sum(p.numel() for p in pair.parameters()))}
    if pair.retrieval is not None:
        ids, mask = teacher_like.tokenize_captions(list(captions))
        img, txt, states = _itc(pair, pixels, ids, mask, batch_size)
        positives = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.bool)
        out.update(retrieval_recall(img.cpu(), txt.cpu(), positives=positives))
        if itm_k > 0:
            sim = img @ txt.T
            i2t, t2i = itm_rerank_scores(sim, lambda i, t: itm_logit(pair, states[i], ids[t], mask[t]), itm_k)
            out.update({f"itm_{k}": v for k, v in recall_from_scores(i2t, t2i, positives).items()})
    if pair.captioning is not None:
        predictions = generate_captions(pair, teacher_like.tokenizer, pixels, batch_size, max_new_tokens)
        out.update(caption_metrics(predictions, [[c] for c in captions]))
    size = tuple(teacher_like.image_size)
    out["flops"] = float(blip_flops(pair, size, device=device))
    if measure_speed:
        out["images_per_s"] = images_per_s(pair, size, device=device, batch_size=batch_size)
    return out


def load_blip_model(path: str, device="cpu"):
    """A BLIP model directory (see the module docstring) as a :class:`BlipTeacher`."""
    from ..teachers.hf_blip import BlipTeacher, blip_teacher_dirs

    dirs = blip_teacher_dirs(path)
    if dirs is None:
        raise DistillUsageError(f"--model: {path!r} holds no BLIP model; pass a directory with retrieval/ and/or "
                                f"captioning/ save_pretrained models (a DLIP run writes <logs>/<name>/student)")
    return BlipTeacher(path, dirs, device=device)


def _format(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.eval.blip", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="A BLIP model directory to evaluate, named (repeat for several)")
    p.add_argument("--data", required=True, help="Paired webdataset shards (image + .txt caption per key)")
    p.add_argument("--max-samples", type=int, default=0, help="Evaluate on the first N pairs (0 = all)")
    p.add_argument("--itm-k", type=int, default=0, help="Also re-rank each query's top K by ITM (BLIP uses 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="Write the rows as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        models = {}
        for spec in args.model:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise DistillUsageError(f"--model: {spec!r} is not NAME=DIR (e.g. student=logs/run/student)")
            models[name] = load_blip_model(path, args.device)
        size = next(iter(models.values())).image_size
        images, captions = read_caption_pairs(args.data, size, args.max_samples)
        rows = {name: evaluate_blip(m, images, captions, itm_k=args.itm_k, batch_size=args.batch_size,
                                    device=args.device) for name, m in models.items()}
    except DistillUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = list(next(iter(rows.values())))
    print("model".ljust(12) + "".join(k.rjust(14) for k in keys))
    for name, row in rows.items():
        print(name.ljust(12) + "".join(_format(row.get(k, float("nan"))).rjust(14) for k in keys))
    if args.out:
        write_json_atomic(args.out, {"samples": len(captions), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
