"""``--distill-teacher hf:<dir>`` for a BLIP (the teacher of ``--distill-loss dlip``).

transformers splits BLIP into ``BlipForImageTextRetrieval`` (ITC + ITM) and
``BlipForConditionalGeneration`` (captioning), so a BLIP teacher is a local directory holding

* ``retrieval/`` and/or ``captioning/``: ``save_pretrained`` directories of those two classes (with the
  tokenizer and, optionally, ``preprocessor_config.json``), or
* the ``save_pretrained`` directory of one of them (a retrieval-only or captioning-only teacher).

The two may have their own vision towers (BLIP's released checkpoints were fine-tuned apart); their
tokenizer and image size must agree. The image size, mean and std come from the first directory's
``preprocessor_config.json`` (BLIP's processor: a plain resize, CLIP statistics by default).
As a :class:`Teacher` it encodes with the retrieval model's ITC heads: ``n(vision_proj(CLS))`` and
``n(text_proj(CLS))`` of the unimodal text encoder; the DLIP task runs its :class:`BlipPair` (``pair``).
"""
import json
import os
from typing import Dict, Optional, Sequence

import torch

from ..errors import DistillUsageError
from ..models.blip_pair import BlipPair
from .hf_clip import _height_width
from .hf_teacher import FLAG, HFSource, HFTeacher, load_model, load_tokenizer, text_position_limit

ROLES = {"retrieval": "BlipForImageTextRetrieval", "captioning": "BlipForConditionalGeneration"}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAPTION_TOKENS = 35  # BLIP's caption length in training (``max_length=35`` in blip_retrieval.py / blip.py)


def _blip_role(directory: str) -> Optional[str]:
    """"retrieval" / "captioning" when ``directory`` holds a BLIP of that class, else None."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if config.get("model_type") != "blip":
        return None
    for role, cls in ROLES.items():
        if cls in (config.get("architectures") or []):
            return role
    return None


def blip_teacher_dirs(ref: str) -> Optional[Dict[str, str]]:
    """``{"retrieval": dir, "captioning": dir}`` (one may be missing) for a BLIP teacher directory, or
    None when ``ref`` is not one (see the module docstring for the layouts)."""
    if not os.path.isdir(ref):
        return None
    role = _blip_role(ref)
    if role is not None:
        return {role: ref}
    found = {r: os.path.join(ref, r) for r in ROLES if _blip_role(os.path.join(ref, r)) == r}
    return found or None


def _image_spec(source: HFSource, config):
    proc = source.json("preprocessor_config.json") or {}
    size = _height_width(proc.get("size")) or _height_width(int(config.vision_config.image_size))
    if proc.get("do_normalize", True) is False:
        return size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return size, tuple(proc.get("image_mean") or OPENAI_CLIP_MEAN), tuple(proc.get("image_std") or OPENAI_CLIP_STD)


class BlipTeacher(HFTeacher):
    """A frozen BLIP retrieval and/or captioning model (``pair``) with its tokenizer and image spec."""

    def __init__(self, ref: str, dirs: Dict[str, str], *, device="cpu", precision="fp32"):
        import transformers

        models, sources = {}, {}
        for role in ROLES:
            if role in dirs:
                sources[role] = HFSource(dirs[role])
                models[role] = load_model(sources[role], getattr(transformers, ROLES[role]))
        first = next(iter(sources.values()))
        configs = [m.config for m in models.values()]
        if len(configs) == 2:
            a, b = configs
            if (a.text_config.vocab_size, a.vision_config.image_size) != (b.text_config.vocab_size,
                                                                          b.vision_config.image_size):
                raise DistillUsageError(f"{FLAG} hf:{ref}: retrieval/ and captioning/ differ in vocabulary or image "
                                        f"size; a BLIP teacher's two models must share the tokenizer and input size")
        config = configs[0]
        tokenizer = load_tokenizer(first, "", config.text_config.vocab_size)
        pair = BlipPair(models.get("retrieval"), models.get("captioning"))
        max_length = min(text_position_limit(config.text_config), CAPTION_TOKENS)
        super().__init__(pair, tokenizer, first, device=device, precision=precision, kind="hf-blip",
                         max_length=max_length)
        self.name = f"hf:{ref}"
        self.pair = self.model
        self.dirs = dict(dirs)
        self.image_size, self.image_mean, self.image_std = _image_spec(first, config)
        if "retrieval" in dirs:
            self.modalities = frozenset({"image", "text"})
            self.embed_dim = int(config.image_text_hidden_size)
        else:
            self.modalities = frozenset()

    def tokenize_captions(self, texts: Sequence[str]):
        """(input_ids, attention_mask) of ``texts``, padded to the longest, at most ``max_length`` tokens."""
        enc = self.tokenize(texts)
        return enc["input_ids"], enc["attention_mask"]

    def _text_features(self, texts):
        ids, mask = self.tokenize_captions(texts)
        r = self.pair.retrieval
        return r.text_proj(r.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0, :])

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        r = self.pair.retrieval
        return r.vision_proj(r.vision_model(pixel_values=pixel_values).last_hidden_state[:, 0, :])

    def describe(self) -> dict:
        return {**super().describe(), "teacher_dirs": self.dirs}
