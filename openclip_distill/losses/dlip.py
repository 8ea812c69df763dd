"""DLIP: module-wise distillation of BLIP (Kuang et al., "DLIP: Distilling Language-Image Pre-training", 2023).

Teacher and student are :class:`~openclip_distill.models.blip_pair.BlipPair` s run on the same batch
(their :class:`~openclip_distill.models.blip_pair.BlipOutputs` ``t`` and ``s``); the student's ITM pairs
(hard negatives mined from its own ITC similarities, as BLIP does) are scored by both. Each signal has a
weight; 0 turns it off and the pair does not compute what only it needs. With ``d`` the per-token
distance (``cosine``: ``1 - cos``, ``mse``: squared L2 summed over channels), ``KL(p || q)`` taken
teacher-first and averaged over the rows named (no ``tau^2`` factor):

    vision_hidden    mean_j mean_tokens d(A_v h_s[j], h_t[floor(j L_t / L_s)])   ViT layers j = 1..L_s
    text_hidden      the same on the unimodal text encoder, padding tokens left out
    vision_attention KL(softmax(log P_t / tau_a) || softmax(log P_s / tau_a)) over keys, last ViT layer,
                     mean over images, heads and queries (tau_a = attention_temperature, 0.05)
    cross_attention  the same on the last fusion layer's cross-attention of the positive pairs, mean over
                     non-padding text queries
    itc_kl           1/2 (KL_rows(S_t, S_s) + KL_rows(S_t^T, S_s^T)),  S = I T^T / tau_itc
                     (``openclip_distill.kernels.similarity_kl_loss``)
    itm_kl           mean over the 3B ITM pairs of KL(softmax(z_t) || softmax(z_s))            (T = 1)
    lm_kl            mean over non-padding target tokens of KL(softmax(l_t / tau_lm) || softmax(l_s / tau_lm))
                     (teacher-forced captions)
    itc              InfoNCE 1/2 (CE(S_s, diag) + CE(S_s^T, diag))
    itm              mean over the 3B pairs of CE(z_s, label), label 1 for the B positives, 0 for the 2B negatives
    lm               mean over non-padding target tokens of CE(l_s, next token)

``A_v``/``A_t``: one learned linear map per tower from the student's width to the teacher's, shared by
all mapped layers (TinyBERT's ``W_h``), present only when the widths differ; attention maps with
different head counts are compared head-averaged. The ITC temperature ``tau_itc`` is fixed (default
0.07, BLIP's initial value; transformers' BLIP keeps no temperature: its ITC score is a plain cosine).
Attention probabilities are clamped at the smallest normal float before the log (masked keys are
exact zeros). The linear maps train with the student and are saved in training checkpoints
(``loss_state_dict``), never in the exported student.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compute_dtype import at_least_fp32
from ..errors import DistillUsageError
from ..kernels import contrastive_loss, similarity_kl_loss
from ..models.blip_pair import CROSS_ATTENTION, ITC, ITM, LM, TEXT_HIDDEN, VISION_ATTENTION, VISION_HIDDEN
from ..registry import register_loss

DISTANCES = ("cosine", "mse")
TASK_SIGNALS = ("itc", "itm", "lm")  # trained on the paired data alone: they read no teacher output
# weight name -> the pair outputs it reads
SIGNALS = {
    "vision_hidden": {VISION_HIDDEN}, "vision_attention": {VISION_ATTENTION}, "text_hidden": {TEXT_HIDDEN},
    "itc_kl": {ITC}, "itm_kl": {ITC, ITM}, "cross_attention": {ITC, CROSS_ATTENTION}, "lm_kl": {LM},
    "itc": {ITC}, "itm": {ITC, ITM}, "lm": {LM},
}


def mapped_layers(teacher_layers: int, student_layers: int):
    """``[(j, floor(j L_t / L_s))]`` for student layers j = 1..L_s (hidden-state indices, 0 = embeddings)."""
    return [(j, j * teacher_layers // student_layers) for j in range(1, student_layers + 1)]


def token_distance(x: torch.Tensor, y: torch.Tensor, distance: str, mask: Optional[torch.Tensor] = None):
    """Mean over tokens (those with ``mask`` == 1) of ``1 - cos(x, y)`` or ``||x - y||^2``; x, y: [B, T, C]."""
    if distance == "cosine":
        per_token = 1.0 - F.cosine_similarity(x, y, dim=-1)
    else:
        per_token = (x - y).pow(2).sum(-1)
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Mean over rows (those with ``mask`` == 1) of KL(softmax(teacher) || softmax(student)) on the last axis."""
    log_p_t = F.log_softmax(at_least_fp32(teacher_logits), dim=-1)
    log_p_s = F.log_softmax(at_least_fp32(student_logits), dim=-1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if mask is None:
        return per_row.mean()
    mask = mask.to(per_row.dtype).expand_as(per_row)
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


def attention_kl(teacher_probs: torch.Tensor, student_probs: torch.Tensor, temperature: float,
                 query_mask: Optional[torch.Tensor] = None):
    """KL between attention maps [B, H, Q, K] sharpened by ``temperature``, averaged over images, heads and
    queries (``query_mask`` [B, Q]); head-averaged first when the head counts differ."""
    if teacher_probs.shape[1] != student_probs.shape[1]:
        teacher_probs, student_probs = teacher_probs.mean(1, keepdim=True), student_probs.mean(1, keepdim=True)
    t, s = at_least_fp32(teacher_probs), at_least_fp32(student_probs)
    t = t.clamp(min=torch.finfo(t.dtype).tiny).log() / temperature
    s = s.clamp(min=torch.finfo(s.dtype).tiny).log() / temperature
    return kl_rows(t, s, None if query_mask is None else query_mask[:, None, :])


def lm_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Next-token targets [B, T-1] and their mask (position t predicts token t+1; padding left out)."""
    return input_ids[:, 1:], attention_mask[:, 1:]


@register_loss("dlip")
class DlipLoss(nn.Module):
    """DLIP's module-wise BLIP distillation + BLIP's task losses (see the module docstring)."""

    requires_paired_data = True
    teacher_kind = "blip"

    def __init__(self, vision_hidden_weight=1.0, vision_attention_weight=1.0, text_hidden_weight=1.0,
                 itc_kl_weight=1.0, itm_kl_weight=1.0, cross_attention_weight=1.0, lm_kl_weight=1.0,
                 itc_weight=1.0, itm_weight=1.0, lm_weight=1.0, hidden_distance="cosine", attention_temperature=0.05,
                 itc_temperature=0.07, lm_temperature=1.0, student_vision_width: Optional[int] = None,
                 teacher_vision_width: Optional[int] = None, student_text_width: Optional[int] = None,
                 teacher_text_width: Optional[int] = None, impl="auto"):
        super().__init__()
        given = dict(vision_hidden=vision_hidden_weight, vision_attention=vision_attention_weight,
                     text_hidden=text_hidden_weight, itc_kl=itc_kl_weight, itm_kl=itm_kl_weight,
                     cross_attention=cross_attention_weight, lm_kl=lm_kl_weight, itc=itc_weight, itm=itm_weight,
                     lm=lm_weight)
        self.weights = {}
        for name, value in given.items():
            if float(value) < 0:
                raise DistillUsageError(f"--distill-loss-kwargs: dlip {name}_weight={value} must be >= 0")
            self.weights[name] = float(value)
        if not any(self.weights.values()):
            raise DistillUsageError("--distill-loss-kwargs: dlip needs at least one weight > 0")
        if hidden_distance not in DISTANCES:
            raise DistillUsageError(f"--distill-loss-kwargs: dlip hidden_distance={hidden_distance!r} is not one of "
                                    f"{', '.join(DISTANCES)}")
        for name, value in (("attention_temperature", attention_temperature), ("itc_temperature", itc_temperature),
                            ("lm_temperature", lm_temperature)):
            if float(value) <= 0:
                raise DistillUsageError(f"--distill-loss-kwargs: dlip {name}={value} must be > 0")
        self.hidden_distance = hidden_distance
        self.attention_temperature, self.itc_temperature = float(attention_temperature), float(itc_temperature)
        self.lm_temperature, self.impl = float(lm_temperature), impl
        self.vision_adapter = self._adapter(student_vision_width, teacher_vision_width, "vision_hidden")
        self.text_adapter = self._adapter(student_text_width, teacher_text_width, "text_hidden")

    def _adapter(self, s_width, t_width, signal):
        if self.weights[signal] and s_width and t_width and int(s_width) != int(t_width):
            return nn.Linear(int(s_width), int(t_width))
        return None

    @property
    def parts(self) -> frozenset:
        """The :class:`BlipPair` outputs this loss reads."""
        return frozenset().union(*(SIGNALS[k] for k, w in self.weights.items() if w))

    @property
    def reads_teacher(self) -> bool:
        """Whether any distillation signal is on; with only the task losses (ITC, ITM, LM) the loss never
        reads the teacher's outputs, so the task can skip the teacher's forward."""
        return any(w for k, w in self.weights.items() if k not in TASK_SIGNALS)

    def _hidden(self, s_states, t_states, adapter, mask, name):
        layers = mapped_layers(len(t_states) - 1, len(s_states) - 1)
        total = 0.0
        for j, k in layers:
            x, y = at_least_fp32(s_states[j]), at_least_fp32(t_states[k].detach())
            if adapter is not None:
                x = adapter(x.to(adapter.weight.dtype))
            if x.shape[-1] != y.shape[-1]:
                raise DistillUsageError(
                    f"--distill-loss dlip: the student's {name} width {x.shape[-1]} differs from the teacher's "
                    f"{y.shape[-1]}; build the loss with student_/teacher_{name}_width (the CLI does)")
            total = total + token_distance(x, y, self.hidden_distance, mask)
        return total / len(layers)

    def forward(self, student, teacher=None, output_dict=False):
        w, out = self.weights, {}
        mask = student.text_attention_mask
        if w["vision_hidden"]:
            out["vision_hidden_loss"] = w["vision_hidden"] * self._hidden(
                student.vision_hidden_states, teacher.vision_hidden_states, self.vision_adapter, None, "vision")
        if w["text_hidden"]:
            out["text_hidden_loss"] = w["text_hidden"] * self._hidden(
                student.text_hidden_states, teacher.text_hidden_states, self.text_adapter, mask, "text")
        if w["vision_attention"]:
            out["vision_attention_loss"] = w["vision_attention"] * attention_kl(
                teacher.vision_attentions[-1].detach(), student.vision_attentions[-1], self.attention_temperature)
        if w["cross_attention"]:
            out["cross_attention_loss"] = w["cross_attention"] * attention_kl(
                teacher.cross_attentions.detach(), student.cross_attentions, self.attention_temperature, mask)
        scale = 1.0 / self.itc_temperature
        if w["itc_kl"]:
            out["itc_kl_loss"] = w["itc_kl"] * 0.5 * similarity_kl_loss(
                student.image_embeds, student.text_embeds, teacher.image_embeds.detach(),
                teacher.text_embeds.detach(), student_scale=scale, teacher_scale=scale, bidirectional=True,
                impl=self.impl)
        if w["itm_kl"]:
            out["itm_kl_loss"] = w["itm_kl"] * kl_rows(teacher.itm_logits.detach(), student.itm_logits)
        targets, target_mask = lm_targets(student.input_ids, mask)
        if w["lm_kl"]:
            tau = self.lm_temperature
            out["lm_kl_loss"] = w["lm_kl"] * kl_rows(teacher.lm_logits[:, :-1].detach() / tau,
                                                     student.lm_logits[:, :-1] / tau, target_mask)
        if w["itc"]:
            out["itc_loss"] = w["itc"] * contrastive_loss(student.image_embeds, student.text_embeds, scale,
                                                          impl=self.impl)
        if w["itm"]:
            out["itm_loss"] = w["itm"] * F.cross_entropy(at_least_fp32(student.itm_logits), student.itm_labels)
        if w["lm"]:
            logits = at_least_fp32(student.lm_logits[:, :-1])
            per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            m = target_mask.reshape(-1).to(per_token.dtype)
            out["lm_loss"] = w["lm"] * (per_token * m).sum() / m.sum().clamp(min=1)
        if output_dict:
            return out
        return sum(out.values())
