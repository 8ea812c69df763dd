"""What every ``transformers`` teacher shares: where its files are, precision, tokenising, the output.

A :class:`HFSource` is the ``hf:`` reference resolved once (a local directory or a hub repo id, with
``cache_dir`` and ``revision``); the adapters read their optional files (``preprocessor_config.json``,
sentence-transformers configs) through it, so a local directory and a hub snapshot behave alike.

:class:`HFTeacher` holds the frozen model and implements the parts of the :class:`Teacher` contract
that do not depend on the architecture:

- precision: ``fp32``; ``fp16``/``bf16`` (and ``pure_fp16``/``pure_bf16``) cast the model;
  ``amp``/``amp_bf16`` keep fp32 weights and run under ``torch.autocast`` on the device type
  (``amp`` = float16 on CUDA, bfloat16 on CPU, as ``torch.autocast``'s own default). Outputs are
  always float32: ``encode_*`` return ``e / ||e||_2`` computed in float32.
- tokenising: the teacher's own tokenizer, truncated to ``max_length`` (the model's position limit,
  never more than the tokenizer's ``model_max_length``), in chunks of ``batch_size`` texts.
"""
import contextlib
import json
import logging
import os
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import DistillUsageError
from .base import Teacher

FLAG = "--distill-teacher"
PRECISION_FLAG = "--distill-teacher-precision"
CAST_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
               "pure_fp16": torch.float16, "pure_bf16": torch.bfloat16}
AUTOCAST_DTYPES = {"amp": None, "amp_bf16": torch.bfloat16, "amp_bfloat16": torch.bfloat16}
PRECISIONS = tuple(CAST_DTYPES) + tuple(AUTOCAST_DTYPES)

# Text models whose position ids start at padding_idx + 1 (RoBERTa's convention), so only
# ``max_position_embeddings - padding_idx - 1`` tokens fit.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                            "altclip_text_model", "mpnet", "longformer")


class HFSource:
    """An ``hf:`` reference: a local directory (``is_local``) or a hub repo id, plus loading kwargs."""

    def __init__(self, ref: str, *, cache_dir: Optional[str] = None, revision: Optional[str] = None):
        self.ref = ref
        self.name = f"hf:{ref}"
        self.is_local = os.path.isdir(ref)
        self.kwargs = {"cache_dir": cache_dir}
        if revision and not self.is_local:
            self.kwargs["revision"] = revision

    def hub_error(self, what: str, err: BaseException) -> DistillUsageError:
        return DistillUsageError(
            f"{FLAG} {self.name}: could not load {what} from the Hugging Face hub ({one_line(err)}); "
            f"without internet pass a local directory saved with save_pretrained (hf:/path/to/dir), "
            f"or set HF_HUB_OFFLINE=1 to use only the local cache")

    def file(self, filename: str, subfolder: str = "") -> Optional[str]:
        """Local path of an optional file of the model (``None`` when it does not exist)."""
        if self.is_local:
            path = os.path.join(self.ref, subfolder, filename)
            return path if os.path.isfile(path) else None
        from transformers.utils import cached_file
        return cached_file(self.ref, filename, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **self.kwargs)

    def json(self, filename: str, subfolder: str = "") -> Optional[dict]:
        """An optional JSON file of the model, parsed (``None`` when absent); a broken one is a usage error."""
        path = self.file(filename, subfolder)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise DistillUsageError(f"{FLAG} {self.name}: cannot read {os.path.join(subfolder, filename)} "
                                    f"({one_line(e)}); re-save the model with save_pretrained") from None


def one_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception message, shortened (for one-line usage errors)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DistillUsageError(f"{PRECISION_FLAG}: unknown precision {precision!r} for an hf: teacher; "
                                f"use one of {', '.join(PRECISIONS)}")
    return precision


# files a saved tokenizer consists of (one is enough); without any, transformers 5 silently builds an
# empty default tokenizer for the model type instead of failing
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(source: HFSource, subfolder: str = "", vocab_size: Optional[int] = None):
    """``AutoTokenizer.from_pretrained`` with one-line usage errors: no tokenizer files, a tokenizer that
    cannot be loaded, or one with more tokens than the model's embedding table (``vocab_size``)."""
    from transformers import AutoTokenizer

    fix = ("the model directory needs the files written by tokenizer.save_pretrained "
           "(tokenizer.json + tokenizer_config.json)")
    if not any(source.file(f, subfolder) for f in TOKENIZER_FILES):
        raise DistillUsageError(f"{FLAG} {source.name}: it has no tokenizer; {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.ref, subfolder=subfolder, **source.kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, TypeError, KeyError, ... here
        raise DistillUsageError(f"{FLAG} {source.name}: could not load its tokenizer ({one_line(e)}); {fix}") from None
    if not callable(tokenizer) or not hasattr(tokenizer, "pad_token_id"):
        raise DistillUsageError(f"{FLAG} {source.name}: AutoTokenizer returned {type(tokenizer).__name__}, not a "
                                f"text tokenizer; {fix}")
    if vocab_size is not None and len(tokenizer) > int(vocab_size):
        raise DistillUsageError(f"{FLAG} {source.name}: its tokenizer has {len(tokenizer)} tokens but the text model "
                                f"only {vocab_size} embeddings; save the tokenizer the model was trained with")
    return tokenizer


def load_model(source: HFSource, model_class, subfolder: str = ""):
    """``model_class.from_pretrained`` in float32 (the teacher casts it afterwards), one-line errors."""
    try:
        return model_class.from_pretrained(source.ref, subfolder=subfolder, dtype=torch.float32, **source.kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        if not source.is_local:
            raise source.hub_error(f"the weights of {model_class.__name__}", e) from None
        raise DistillUsageError(f"{FLAG} {source.name}: could not load the weights of {model_class.__name__} "
                                f"({one_line(e)}); save the model with model.save_pretrained(dir)") from None


def text_position_limit(text_config) -> int:
    """How many tokens the text model's position embeddings cover (RoBERTa-style ids start at pad + 1)."""
    limit = int(text_config.max_position_embeddings)
    if getattr(text_config, "model_type", "") in PADDING_OFFSET_POSITIONS:
        limit -= int(text_config.pad_token_id if text_config.pad_token_id is not None else 1) + 1
    return limit


def pooled_embedding(output) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or an output object
    whose ``pooler_output`` holds it (transformers 5.x)."""
    if torch.is_tensor(output):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"expected a tensor or an output with pooler_output, got {type(output).__name__}")
    return pooled


class HFTeacher(Teacher):
    """A frozen ``transformers`` model behind the :class:`Teacher` contract (architecture-independent part).

    Subclasses set ``modalities``, ``embed_dim`` (and the image attributes) and implement
    ``_text_features(batch)`` / ``_image_features(pixel_values)`` returning unnormalised embeddings.
    """

    batch_size = 256  # texts / images per forward inside encode_*

    def __init__(self, model: torch.nn.Module, tokenizer, source: HFSource, *, device, precision: str, kind: str,
                 max_length: int, pretrained: Optional[str] = None):
        self.name, self.pretrained, self.kind = source.name, pretrained, kind
        self.source = source
        self.device = torch.device(device)
        self.precision = check_precision(precision)
        self.dtype = CAST_DTYPES.get(precision, torch.float32)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        if self.max_length <= 0:
            raise DistillUsageError(f"{FLAG} {self.name}: the text model takes no tokens (max length {max_length}); "
                                    f"check max_position_embeddings in its config.json")
        self._pixels = None

    # -- precision -----------------------------------------------------------------------------
    def autocast(self):
        """``torch.autocast`` for ``amp``/``amp_bf16``, a no-op context otherwise."""
        if self.precision not in AUTOCAST_DTYPES:
            return contextlib.nullcontext()
        dtype = AUTOCAST_DTYPES[self.precision]
        kwargs = {} if dtype is None else {"dtype": dtype}
        return torch.autocast(device_type=self.device.type, **kwargs)

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], padding="longest",
                 keys=("input_ids", "attention_mask")) -> Dict[str, torch.Tensor]:
        """The tokenizer's output for ``texts`` (only ``keys`` it returns), truncated to ``max_length``, on device."""
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: enc[k].to(self.device) for k in keys if k in enc}

    def prepare_texts(self, texts: Sequence[str]) -> Sequence[str]:
        """Hook for text normalisation before tokenising (identity here)."""
        return texts

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if "text" not in self.modalities:
            return super().encode_text(texts)
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, got one string")
        texts = list(self.prepare_texts(list(texts)))
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                with self.autocast():
                    features = self._text_features(texts[i:i + self.batch_size])
                out.append(self._finish(features))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- images --------------------------------------------------------------------------------
    def encode_image(self, views: torch.Tensor) -> torch.Tensor:
        if "image" not in self.modalities:
            return super().encode_image(views)
        if self._pixels is None:
            self._pixels = self.image_input()
        out = []
        with torch.no_grad():
            for i in range(0, views.shape[0], self.batch_size):
                pixels = self._pixels(views[i:i + self.batch_size].to(self.device)).to(self.dtype)
                with self.autocast():
                    features = self._image_features(pixels)
                out.append(self._finish(features))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _finish(features: torch.Tensor) -> torch.Tensor:
        """float32 ``e / max(||e||_2, eps)``."""
        return F.normalize(features.float(), dim=-1)

    def log_loaded(self):
        logging.info(f"Teacher {self.name} ({type(self.model).__name__}, {self.kind}), "
                     f"{self.num_params() / 1e6:.2f}M params, precision {self.precision}, "
                     f"modalities {'+'.join(sorted(self.modalities))}, frozen")
