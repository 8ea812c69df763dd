"""A BLIP as DLIP sees it: the retrieval model (ITC + ITM) and the captioning model (LM) side by side.

transformers has no class with all three BLIP heads: ``BlipForImageTextRetrieval`` holds the ViT, the
BERT text encoder (unimodal for ITC, image-grounded through its cross-attention for ITM), the ITC
projections and the ITM head; ``BlipForConditionalGeneration`` holds a ViT and the image-grounded BERT
decoder (LM). :class:`BlipPair` runs them on one batch and returns every tensor the DLIP losses read
(:class:`BlipOutputs`). A student pair shares one vision tower (the same module in both models); a
teacher pair may have two (BLIP's released retrieval and captioning checkpoints were fine-tuned apart),
in which case the decoder reads the captioning model's own image features.

ITM follows BLIP (Li et al., "BLIP", ICML 2022, ``blip_retrieval.py``): every image and every text of
the batch gets one hard negative drawn from the softmax of the ITC similarities over the other items
(:func:`mine_hard_negatives`), giving 3B pairs: B positives, B (negative image, text), B (image,
negative text). The text-side tensors follow the transformers forwards: the fusion encoder reads the
caption tokens as they are (as ``BlipForImageTextRetrieval`` does); the decoder reads them with the
first token replaced by the decoder's BOS token (as ``BlipForConditionalGeneration.generate`` starts).
"""
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DistillUsageError

# what a loss may ask a pair to compute
VISION_HIDDEN, VISION_ATTENTION, TEXT_HIDDEN = "vision_hidden", "vision_attention", "text_hidden"
ITC, ITM, CROSS_ATTENTION, LM = "itc", "itm", "cross_attention", "lm"
PARTS = frozenset({VISION_HIDDEN, VISION_ATTENTION, TEXT_HIDDEN, ITC, ITM, CROSS_ATTENTION, LM})


@dataclass
class BlipOutputs:
    """Tensors of one BLIP pair on one batch of B images and B captions (None when not computed).

    vision_hidden_states: ViT residual stream, ``(embeddings, layer 1, ..., layer L)``, each [B, N, C].
    vision_attentions: ViT self-attention probabilities per layer, each [B, H, N, N].
    text_hidden_states: unimodal text encoder, ``(embeddings, layer 1, ..., layer L)``, each [B, T, C].
    text_attention_mask: [B, T] caption padding mask (1 = token).
    image_embeds, text_embeds: L2-normalised ITC features ``n(vision_proj(CLS))``, ``n(text_proj(CLS))``.
    itm_pairs: (image index, text index), each [3B] (positives first); itm_logits: [3B, 2]; itm_labels: [3B].
    cross_attentions: last fusion layer's cross-attention on the B positive pairs, [B, H, T, N].
    input_ids: [B, T] caption tokens; lm_logits: decoder logits [B, T, V] (position t predicts token t+1).
    """

    text_attention_mask: torch.Tensor
    input_ids: torch.Tensor
    vision_hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    vision_attentions: Optional[Tuple[torch.Tensor, ...]] = None
    text_hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    image_embeds: Optional[torch.Tensor] = None
    text_embeds: Optional[torch.Tensor] = None
    itm_pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    itm_logits: Optional[torch.Tensor] = None
    itm_labels: Optional[torch.Tensor] = None
    cross_attentions: Optional[torch.Tensor] = None
    lm_logits: Optional[torch.Tensor] = None


@torch.no_grad()
def mine_hard_negatives(sim_i2t: torch.Tensor, generator: Optional[torch.Generator] = None):
    """BLIP's ITM pairs from an image-text similarity matrix ``sim_i2t`` [B, B] (logits, pair i = (i, i)).

    For text ``t`` a negative image is drawn with probability ``softmax_i(sim[:, t])`` over ``i != t``;
    for image ``i`` a negative text with probability ``softmax_t(sim[i, :])`` over ``t != i``.
    Returns ``(image_index, text_index)``, each [3B]: positives, (negative image, text), (image, negative text)."""
    n = sim_i2t.shape[0]
    if n < 2:
        raise DistillUsageError("--batch-size: ITM hard negatives need at least 2 image-caption pairs per batch")
    eye = torch.eye(n, dtype=torch.bool, device=sim_i2t.device)
    sim = sim_i2t.detach().float()
    w_t2i = F.softmax(sim.t(), dim=1).masked_fill(eye, 0)  # row t: over images
    w_i2t = F.softmax(sim, dim=1).masked_fill(eye, 0)  # row i: over texts
    # rows whose softmax underflowed to 0 off the diagonal: uniform over the others
    w_t2i = torch.where(w_t2i.sum(1, keepdim=True) > 0, w_t2i, (~eye).float())
    w_i2t = torch.where(w_i2t.sum(1, keepdim=True) > 0, w_i2t, (~eye).float())
    neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    idx = torch.arange(n, device=sim_i2t.device)
    return torch.cat([idx, neg_image, idx]), torch.cat([idx, idx, neg_text])


def _tied_vision(retrieval, captioning) -> bool:
    return retrieval is not None and captioning is not None and retrieval.vision_model is captioning.vision_model


class BlipPair(nn.Module):
    """``retrieval`` (``BlipForImageTextRetrieval`` or None) and ``captioning``
    (``BlipForConditionalGeneration`` or None); ``share_vision=True`` makes the captioning model use the
    retrieval model's vision tower (one module, trained once)."""

    def __init__(self, retrieval=None, captioning=None, share_vision: bool = False):
        super().__init__()
        if retrieval is None and captioning is None:
            raise ValueError("BlipPair needs a retrieval or a captioning model")
        self.retrieval, self.captioning = retrieval, captioning
        if share_vision and retrieval is not None and captioning is not None:
            captioning.vision_model = retrieval.vision_model

    @property
    def shares_vision(self) -> bool:
        return _tied_vision(self.retrieval, self.captioning)

    @property
    def vision_model(self):
        return (self.retrieval or self.captioning).vision_model

    @property
    def config(self):
        return (self.retrieval or self.captioning).config

    def available_parts(self) -> FrozenSet[str]:
        parts = {VISION_HIDDEN, VISION_ATTENTION}
        if self.retrieval is not None:
            parts |= {TEXT_HIDDEN, ITC, ITM, CROSS_ATTENTION}
        if self.captioning is not None:
            parts.add(LM)
        return frozenset(parts)

    def forward(self, pixel_values, input_ids, attention_mask, parts, *, itm_pairs=None, itc_temperature=0.07,
                generator=None) -> BlipOutputs:
        """Run what ``parts`` (a subset of ``PARTS``) needs. ``itm_pairs``: the ITM pairs to score (another
        pair's, so teacher and student score the same ones); mined here from this pair's ITC similarities
        divided by ``itc_temperature`` when not given."""
        parts = frozenset(parts)
        missing = parts - self.available_parts()
        if missing:
            which = "captioning" if missing == {LM} else "retrieval"
            raise DistillUsageError(f"--distill-teacher: the BLIP pair has no {which} model, needed for "
                                    f"{', '.join(sorted(missing))}; give both models or set those loss weights to 0")
        out = BlipOutputs(text_attention_mask=attention_mask, input_ids=input_ids)
        want_attn = VISION_ATTENTION in parts
        vision = self.vision_model(pixel_values=pixel_values, output_hidden_states=VISION_HIDDEN in parts,
                                   output_attentions=want_attn)
        image_states = vision.last_hidden_state
        if VISION_HIDDEN in parts:
            out.vision_hidden_states = vision.hidden_states
        if want_attn:
            if not vision.attentions:
                raise ValueError("the BLIP vision tower returned no attention maps; load it with "
                                 "attn_implementation='eager'")
            out.vision_attentions = vision.attentions
        image_mask = torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device)
        if parts & {TEXT_HIDDEN, ITC, ITM, CROSS_ATTENTION}:
            r = self.retrieval
            text = r.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  output_hidden_states=TEXT_HIDDEN in parts)
            if TEXT_HIDDEN in parts:
                out.text_hidden_states = text.hidden_states
            out.image_embeds = F.normalize(r.vision_proj(image_states[:, 0, :]), dim=-1)
            out.text_embeds = F.normalize(r.text_proj(text.last_hidden_state[:, 0, :]), dim=-1)
        if parts & {ITM, CROSS_ATTENTION}:
            if itm_pairs is None:
                sim = out.image_embeds @ out.text_embeds.t() / itc_temperature
                itm_pairs = mine_hard_negatives(sim, generator)
            img_idx, txt_idx = itm_pairs
            n = input_ids.shape[0]
            if ITM not in parts:  # cross-attention maps only: the positives
                img_idx, txt_idx = img_idx[:n], txt_idx[:n]
            fused = self.retrieval.text_encoder(
                input_ids=input_ids[txt_idx], attention_mask=attention_mask[txt_idx],
                encoder_hidden_states=image_states[img_idx], encoder_attention_mask=image_mask[img_idx],
                output_attentions=CROSS_ATTENTION in parts)
            if ITM in parts:
                out.itm_pairs = (img_idx, txt_idx)
                out.itm_logits = self.retrieval.itm_head(fused.last_hidden_state[:, 0, :])
                out.itm_labels = (torch.arange(len(img_idx), device=img_idx.device) < n).long()
            if CROSS_ATTENTION in parts:
                if not fused.cross_attentions:
                    raise ValueError("the BLIP text encoder returned no cross-attention maps; load it with "
                                     "attn_implementation='eager'")
                out.cross_attentions = fused.cross_attentions[-1][:n]
        if LM in parts:
            c = self.captioning
            cap_states = image_states if self.shares_vision or self.retrieval is None else \
                c.vision_model(pixel_values=pixel_values).last_hidden_state
            decoder_ids = input_ids.clone()
            decoder_ids[:, 0] = c.config.text_config.bos_token_id
            out.lm_logits = c.text_decoder(input_ids=decoder_ids, attention_mask=attention_mask,
                                           encoder_hidden_states=cap_states,
                                           encoder_attention_mask=image_mask).logits
        return out
