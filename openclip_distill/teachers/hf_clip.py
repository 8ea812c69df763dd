"""Two-tower ``transformers`` teachers: ``CLIPModel``, ``AltCLIPModel``, ``SiglipModel``, ``ChineseCLIPModel``.

Image tower: the shared views (float RGB in [0, 1]) are resized to the processor's input size and
normalised with its mean/std (``preprocessor_config.json``; the crop size when the processor
centre-crops, since a view already is the crop), then ``get_image_features``.

Text tower, per family (what each model was trained with):
- CLIP (Radford et al., 2021): causal text transformer pooled at the first end-of-text token. The
  model finds that token by ``config.text_config.eos_token_id``; when the config disagrees with the
  tokenizer (checkpoints converted before transformers PR #24773 say 2), the model is told the
  tokenizer's id, so it pools where the tokenizer put the end of the text.
- AltCLIP (Chen et al., 2022) / Chinese-CLIP (Yang et al., 2022): an XLM-R / BERT encoder pooled at the
  first token, with the attention mask (padding is ignored, so batching does not change a text's embedding).
- SigLIP (Zhai et al., 2023): pools the *last* position, so texts are padded to the full length
  (``padding="max_length"``) and, as in the released model, no attention mask is passed (the
  padding is part of the input the model saw in training).
Truncation: to the position limit of the text model (RoBERTa-style positions start at pad + 1).
"""
import logging
from typing import Optional, Sequence, Tuple

import torch

from ..errors import DistillUsageError
from .hf_teacher import FLAG, HFSource, HFTeacher, load_model, pooled_embedding, text_position_limit

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# model_type -> (transformers class, text inputs passed to the model, text padding, default mean, default std)
FAMILIES = {
    "clip": ("CLIPModel", ("input_ids", "attention_mask"), "longest", OPENAI_MEAN, OPENAI_STD),
    "altclip": ("AltCLIPModel", ("input_ids", "attention_mask", "token_type_ids"), "longest", OPENAI_MEAN, OPENAI_STD),
    "chinese_clip": ("ChineseCLIPModel", ("input_ids", "attention_mask", "token_type_ids"), "longest",
                     OPENAI_MEAN, OPENAI_STD),
    "siglip": ("SiglipModel", ("input_ids",), "max_length", HALF, HALF),
}


def _height_width(size) -> Optional[Tuple[int, int]]:
    """A processor ``size``/``crop_size`` entry -> (height, width): an int, [h, w], {"height", "width"},
    or {"shortest_edge"} (square views: the short side is the side)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def image_spec(source: HFSource, config, family: str):
    """(image_size, mean, std) from ``preprocessor_config.json``, falling back to the vision config's
    ``image_size`` and the family's normalisation."""
    proc = source.json("preprocessor_config.json") or {}
    size = None
    if proc.get("do_center_crop", False):
        size = _height_width(proc.get("crop_size"))
    if size is None:
        size = _height_width(proc.get("size"))
    if size is None:
        size = _height_width(int(config.vision_config.image_size))
    _, _, _, mean, std = FAMILIES[family]
    if proc.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = tuple(proc.get("image_mean") or mean), tuple(proc.get("image_std") or std)
    if len(mean) != 3 or len(std) != 3:
        raise DistillUsageError(f"{FLAG} {source.name}: preprocessor_config.json needs 3 image_mean/image_std "
                                f"values (RGB), got {list(mean)}, {list(std)}")
    return size, mean, std


class HFClipTeacher(HFTeacher):
    """A frozen two-tower ``transformers`` CLIP-family model (see the module docstring for the pooling)."""

    modalities = frozenset({"image", "text"})

    def __init__(self, source: HFSource, config, tokenizer, *, device="cpu", precision="fp32",
                 pretrained: Optional[str] = None):
        import transformers

        family = config.model_type
        class_name, self.text_keys, self.padding, _, _ = FAMILIES[family]
        model = load_model(source, getattr(transformers, class_name))
        limit = text_position_limit(config.text_config)
        super().__init__(model, tokenizer, source, device=device, precision=precision, kind=f"hf-{family}",
                         max_length=min(limit, int(tokenizer.model_max_length)), pretrained=pretrained)
        self.family = family
        self.image_size, self.image_mean, self.image_std = image_spec(source, config, family)
        self.embed_dim = int(config.vision_config.hidden_size if family == "siglip" else config.projection_dim)
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())
        self.logit_bias = float(self.model.logit_bias.detach().float()) if family == "siglip" else None
        if tokenizer.pad_token_id is None:
            if family == "clip" and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token  # OpenAI's CLIP pads with its end-of-text token
            else:
                raise DistillUsageError(f"{FLAG} {self.name}: its tokenizer has no pad token; set pad_token in "
                                        f"tokenizer_config.json")
        if family == "clip":
            self._match_clip_eos(config)

    def _match_clip_eos(self, config):
        """CLIP pools at the first ``eos_token_id`` of the model: make it the tokenizer's end-of-text id."""
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(["a"], truncation=True, max_length=self.max_length)["input_ids"][0]
        if eos is None or eos not in ids:
            raise DistillUsageError(f"{FLAG} {self.name}: its tokenizer does not end a text with an end-of-text "
                                    f"token (eos_token={self.tokenizer.eos_token!r}); CLIP pools at that token, so "
                                    f"load a CLIP tokenizer that appends it")
        text_model = self.model.text_model
        if config.text_config.eos_token_id != eos or getattr(text_model, "eos_token_id", eos) != eos:
            logging.warning(f"Teacher {self.name}: config eos_token_id={config.text_config.eos_token_id} differs from "
                            f"the tokenizer's {eos} ({self.tokenizer.eos_token}); pooling at the tokenizer's token")
            text_model.eos_token_id = eos

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenize(texts, padding=self.padding, keys=self.text_keys)
        return pooled_embedding(self.model.get_text_features(**batch))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled_embedding(self.model.get_image_features(pixel_values=pixel_values))
