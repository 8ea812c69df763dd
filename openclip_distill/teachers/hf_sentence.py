"""Text-only teachers: a ``transformers`` encoder (BERT, XLM-R, MPNet, ...) + sentence pooling.

A sentence-transformers directory (Reimers & Gurevych, 2019) describes its pipeline in
``modules.json``: a Transformer (weights at the module's path: the root or a subfolder), a Pooling
(``1_Pooling/config.json``) and optionally Normalize. Pooling over the token states ``h_i`` of the
real (attention-mask ``m_i = 1``) tokens:

    mean:                  sum_i m_i h_i / max(sum_i m_i, 1e-9)
    mean_sqrt_len_tokens:  sum_i m_i h_i / sqrt(max(sum_i m_i, 1e-9))
    max:                   max_i over real tokens of h_i            (per dimension)
    cls:                   h at the first real token
    lasttoken:             h at the last real token
    weightedmean:          sum_i w_i m_i h_i / sum_i w_i m_i, w_i = 1, 2, ... from the first real token
Several active modes are concatenated in the order above's config keys (cls, max, mean,
mean_sqrt_len, weightedmean, lasttoken), as sentence-transformers does. Without ``modules.json``
(a plain ``save_pretrained`` encoder) the pooling is mean. The output is L2-normalised (the
teacher contract), so a Normalize module changes nothing. ``sentence_bert_config.json``'s
``max_seq_length`` caps the tokens and ``do_lower_case`` lower-cases the texts first.

The teacher has no temperature of its own: ``logit_scale`` is 1.0 (the contract's value for a
model without one), ``embed_dim`` the pooled width.
"""
import os
from typing import Optional, Sequence

import torch

from ..errors import DistillUsageError
from .hf_teacher import FLAG, HFSource, HFTeacher, load_model, text_position_limit

# sentence-transformers Pooling config keys (legacy booleans) -> mode, in its concatenation order
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
POOLING_MODES = tuple(POOLING_KEYS.values())
ST_MODULES = ("Transformer", "Pooling", "Normalize")
# an encoder's position limit when its config has none and its tokenizer has no model_max_length
FALLBACK_MAX_LENGTH = 512


def read_modules(source: HFSource):
    """sentence-transformers ``modules.json`` -> (transformer subfolder, pooling subfolder or None).
    ``None`` when the directory is not a sentence-transformers one."""
    modules = source.json("modules.json")
    if modules is None:
        return None
    kinds = {}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_MODULES:
            raise DistillUsageError(
                f"{FLAG} {source.name}: its modules.json has a {module.get('type')!r} module; an hf: sentence "
                f"teacher supports {', '.join(ST_MODULES)} (a Transformer, then Pooling, optionally Normalize)")
        kinds.setdefault(kind, str(module.get("path", "")))
    if "Transformer" not in kinds:
        raise DistillUsageError(f"{FLAG} {source.name}: its modules.json lists no Transformer module")
    return kinds["Transformer"], kinds.get("Pooling")


def pooling_modes(source: HFSource, pooling_dir: Optional[str]) -> tuple:
    """The active pooling modes of ``<pooling_dir>/config.json`` (``("mean",)`` when absent)."""
    cfg = source.json("config.json", pooling_dir) if pooling_dir is not None else None
    if not cfg:
        return ("mean",)
    if "pooling_mode" in cfg:  # sentence-transformers >= 6 writes one key: a mode or a list of modes
        modes = (cfg["pooling_mode"],) if isinstance(cfg["pooling_mode"], str) else tuple(cfg["pooling_mode"])
    else:
        modes = tuple(mode for key, mode in POOLING_KEYS.items() if cfg.get(key, False)) or ("mean",)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise DistillUsageError(f"{FLAG} {source.name}: {pooling_dir}/config.json asks for pooling {unknown}; "
                                f"supported: {', '.join(POOLING_MODES)}")
    return modes


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One sentence-pooling mode over ``hidden[B, L, D]`` with ``mask[B, L]`` (1 = real token), in float32."""
    h = hidden.float()
    m = mask.to(h.dtype).unsqueeze(-1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if mode == "cls":
        first = mask.to(torch.int64).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), first]
    if mode == "lasttoken":
        last = (mask.to(torch.int64) * positions).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), last]
    if mode == "max":
        return h.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode == "weightedmean":
        first = mask.to(torch.int64).argmax(dim=1, keepdim=True)
        w = m * (positions.unsqueeze(0) - first + 1).to(h.dtype).unsqueeze(-1)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
    count = m.sum(dim=1).clamp(min=1e-9)
    total = (h * m).sum(dim=1)
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len_tokens":
        return total / count.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


class HFSentenceTeacher(HFTeacher):
    """A frozen text encoder with sentence pooling (see the module docstring)."""

    modalities = frozenset({"text"})

    def __init__(self, source: HFSource, config, tokenizer, *, subfolder: str = "", pooling_dir: Optional[str] = None,
                 device="cpu", precision="fp32", pretrained: Optional[str] = None):
        from transformers import AutoModel

        model = load_model(source, AutoModel, subfolder)
        st_config = source.json("sentence_bert_config.json", subfolder) or {}
        limits = [int(tokenizer.model_max_length)]
        if getattr(config, "max_position_embeddings", None):
            limits.append(text_position_limit(config))
        if st_config.get("max_seq_length"):
            limits.append(int(st_config["max_seq_length"]))
        max_length = min(limits)
        if max_length > 10 ** 9:  # neither the config nor the tokenizer says
            max_length = FALLBACK_MAX_LENGTH
        super().__init__(model, tokenizer, source, device=device, precision=precision, kind="hf-sentence",
                         max_length=max_length, pretrained=pretrained)
        self.lower_case = bool(st_config.get("do_lower_case", False))
        self.pooling = pooling_modes(source, pooling_dir)
        self.embed_dim = int(config.hidden_size) * len(self.pooling)
        self.logit_scale, self.logit_bias = 1.0, None
        if tokenizer.pad_token_id is None:
            raise DistillUsageError(f"{FLAG} {self.name}: its tokenizer has no pad token; set pad_token in "
                                    f"{os.path.join(subfolder, 'tokenizer_config.json')}")

    def prepare_texts(self, texts: Sequence[str]) -> Sequence[str]:
        return [t.lower() for t in texts] if self.lower_case else texts

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        keys = tuple(dict.fromkeys(("input_ids", "attention_mask", *self.tokenizer.model_input_names)))
        batch = self.tokenize(texts, keys=keys)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        return torch.cat([pool(hidden, mask, mode) for mode in self.pooling], dim=-1)
