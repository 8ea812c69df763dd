"""Initialise a student from its teacher's weights (``--student-init teacher``).

TinyCLIP's manual weight inheritance (Wu et al., "TinyCLIP: CLIP Distillation via Affinity Mimicking
and Weight Inheritance", ICCV 2023): a smaller transformer of the same family starts from a subset of
the teacher's weights instead of from random numbers.

For each inherited tower (OpenCLIP ``VisionTransformer`` image towers, OpenCLIP ``TextTransformer``
text towers), with teacher depth ``L_t`` and student depth ``L_s <= L_t``:

* **layers** - uniform selection: student block ``i`` takes teacher block ``i * s`` with
  ``s = floor(L_t / L_s)``, i.e. teacher layers ``0, s, 2s, ..., (L_s - 1) s``;
* **width** - the leading ``w_s`` channels of every residual-stream tensor (layer norms, MLP
  inputs/outputs, class embedding, patch-embedding conv output channels, projections' input rows);
* **attention** - the leading ``h_s`` heads, and within each head its leading ``d_s`` dimensions
  (``q``, ``k``, ``v`` rows of ``in_proj`` and the matching ``out_proj`` columns);
* **MLP** - the leading hidden units (rows of ``c_fc``, columns of ``c_proj``);
* **embeddings** - positional embeddings cut to the student's width and length; an image grid of a
  different size is resized bicubically (as OpenCLIP does when loading a checkpoint at another
  resolution); the token embedding is copied (same vocabulary required);
* **projections** - ``visual.proj`` / ``text_projection`` cut to ``[:w_s, :embed_s]``.

Every student dimension must be <= the teacher's, and whatever cannot be mapped (a ModifiedResNet or
HF text tower, a different patch size, vocabulary or attention layout) raises a one-line
``DistillUsageError`` naming ``--student-init``.
"""
import logging
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, VisionTransformer

from ..errors import DistillUsageError

FLAG = "--student-init teacher"
IMAGE, TEXT = "image", "text"
_BLOCK = re.compile(r"^(?P<pre>.*transformer\.resblocks\.)(?P<i>\d+)(?P<post>\..*)$")


def uniform_layer_selection(teacher_layers: int, student_layers: int, flag: str = FLAG,
                            fix: str = "--student-init random") -> List[int]:
    """Teacher layers ``0, s, 2s, ...`` (``s = teacher_layers // student_layers``), one per student layer.
    ``flag``/``fix`` name the input and the alternative in the error for a student deeper than the teacher."""
    if not 0 < student_layers <= teacher_layers:
        what = "more than" if student_layers > teacher_layers else "fewer than one, against"
        raise DistillUsageError(f"{flag}: the student has {student_layers} layers, {what} the teacher's {teacher_layers}; "
                                f"pick a student with 1 to {teacher_layers} layers or {fix}")
    step = teacher_layers // student_layers
    return [i * step for i in range(student_layers)]


def head_indices(t_heads: int, t_head_dim: int, s_heads: int, s_head_dim: int, chunks: int = 1) -> torch.Tensor:
    """Rows of a (``chunks`` x heads x head_dim) teacher axis kept by the student: the leading
    ``s_heads`` heads and, inside each, the leading ``s_head_dim`` dimensions (chunks = q, k, v)."""
    idx = [c * t_heads * t_head_dim + h * t_head_dim + j
           for c in range(chunks) for h in range(s_heads) for j in range(s_head_dim)]
    return torch.tensor(idx, dtype=torch.long)


def resize_grid_pos_embed(pos: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                          prefix_tokens: int = 1) -> torch.Tensor:
    """Resize the grid part of a ViT positional embedding ``(prefix + H*W, C)`` bicubically to ``new_grid``
    (the leading ``prefix_tokens`` rows, the class token, are kept as they are)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    tok, grid = pos[:prefix_tokens], pos[prefix_tokens:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([tok, grid], dim=0)


def _tower(model, which: str):
    """(module, state-dict prefix) of an OpenCLIP CLIP's image or text transformer, or (None, None)."""
    if which == IMAGE:
        visual = getattr(model, "visual", None)
        return (visual, "visual.") if isinstance(visual, VisionTransformer) else (visual, None)
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP
        return (text, "text.") if isinstance(text, TextTransformer) else (text, None)
    if hasattr(model, "transformer") and hasattr(model, "token_embedding"):  # CLIP: text tower at top level
        return model, ""
    return None, None


def _tower_keys(model, which: str, prefix: str) -> List[str]:
    keys = [k for k in model.state_dict() if k.startswith(prefix)]
    if which == TEXT and prefix == "":
        keys = [k for k in keys if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")]
    return keys


def _heads(tower) -> Tuple[int, int]:
    attn = tower.transformer.resblocks[0].attn
    heads = int(attn.num_heads)
    return heads, tower.transformer.width // heads


def _describe(model, which):
    module, _ = _tower(model, which)
    return type(module).__name__ if module is not None else "no tower"


def cut_to_shape(src: torch.Tensor, shape: Sequence[int], key: str, index: Dict[int, torch.Tensor],
                 flag: str = FLAG, fix: str = "--student-init random") -> torch.Tensor:
    """``src`` reduced to ``shape``: the given index lists on some dims, leading slices elsewhere
    (``flag``/``fix`` as in :func:`uniform_layer_selection`)."""
    if src.dim() != len(shape):
        raise DistillUsageError(f"{flag}: {key} has {src.dim()} dimensions in the teacher and {len(shape)} in the "
                                f"student; the towers are not of the same family, use {fix}")
    out = src
    for d, n in enumerate(shape):
        if d in index:
            out = out.index_select(d, index[d].to(out.device))
        elif n > out.shape[d]:
            raise DistillUsageError(f"{flag}: student {key} {tuple(shape)} is larger than the teacher's "
                                    f"{tuple(src.shape)}; inheritance needs a student no wider than the teacher "
                                    f"(or use {fix})")
        else:
            out = out.narrow(d, 0, n)
    return out


def inherited_tower_state(student, teacher, which: str) -> Dict[str, torch.Tensor]:
    """The student's ``which`` (``"image"`` / ``"text"``) tower tensors, cut from ``teacher``'s (see the
    module docstring); keys are the student's state-dict keys."""
    s_tower, s_prefix = _tower(student, which)
    t_tower, t_prefix = _tower(teacher, which)
    if s_prefix is None or t_prefix is None:
        kind = "VisionTransformer" if which == IMAGE else "TextTransformer"
        raise DistillUsageError(f"{FLAG}: inheritance maps OpenCLIP {kind} {which} towers only, but the student's is "
                                f"{_describe(student, which)} and the teacher's {_describe(teacher, which)}; use "
                                f"--student-init random (or a ViT/transformer student)")
    if which == IMAGE:
        if tuple(s_tower.patch_size) != tuple(t_tower.patch_size):
            raise DistillUsageError(f"{FLAG}: the student's patch size {tuple(s_tower.patch_size)} differs from the "
                                    f"teacher's {tuple(t_tower.patch_size)}; pick a student with the teacher's patch "
                                    f"size or use --student-init random")
    else:
        if s_tower.vocab_size != t_tower.vocab_size:
            raise DistillUsageError(f"{FLAG}: the student's text vocabulary ({s_tower.vocab_size}) differs from the "
                                    f"teacher's ({t_tower.vocab_size}); use --student-init random")
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    layers = uniform_layer_selection(len(t_tower.transformer.resblocks), len(s_tower.transformer.resblocks))
    (t_heads, t_hd), (s_heads, s_hd) = _heads(t_tower), _heads(s_tower)
    if s_heads > t_heads or s_hd > t_hd:
        raise DistillUsageError(f"{FLAG}: the student's {which} attention ({s_heads} heads of {s_hd}) does not fit in "
                                f"the teacher's ({t_heads} heads of {t_hd}); use fewer/narrower heads or "
                                f"--student-init random")
    qkv = head_indices(t_heads, t_hd, s_heads, s_hd, chunks=3)
    per_head = head_indices(t_heads, t_hd, s_heads, s_hd)
    out = {}
    for key in _tower_keys(student, which, s_prefix):
        local = key[len(s_prefix):]
        m = _BLOCK.match(local)
        t_local = f"{m['pre']}{layers[int(m['i'])]}{m['post']}" if m else local
        t_key = t_prefix + t_local
        if t_key not in t_sd:
            raise DistillUsageError(f"{FLAG}: the teacher has no {t_key} for the student's {key}; the {which} towers "
                                    f"differ in kind, use --student-init random")
        src, shape = t_sd[t_key].detach(), s_sd[key].shape
        index = {}
        if m and ".attn.in_proj_" in local:
            index[0] = qkv
        elif m and (".attn.out_proj.weight" in local or ".attn.ln_inner." in local):
            index[src.dim() - 1] = per_head
        if which == IMAGE and local == "positional_embedding":
            src = resize_grid_pos_embed(src, t_tower.grid_size, s_tower.grid_size)
        out[key] = cut_to_shape(src, shape, key, index).to(s_sd[key].dtype).clone()
    return out


@torch.no_grad()
def inherit_from_teacher(student, teacher, towers: Iterable[str] = (IMAGE, TEXT),
                         teacher_name: Optional[str] = None) -> int:
    """Copy the teacher-derived weights of ``towers`` into ``student`` (both OpenCLIP CLIP models), and the
    teacher's logit scale (and bias when both have one). Returns the number of tensors written."""
    state = {}
    for which in towers:
        state.update(inherited_tower_state(student, teacher, which))
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    for k in ("logit_scale", "logit_bias"):
        if k in s_sd and k in t_sd:
            state[k] = t_sd[k].detach().reshape(s_sd[k].shape).to(s_sd[k].dtype)
    for k, v in state.items():
        s_sd[k].copy_(v)
    logging.info(f"Student initialised from teacher {teacher_name or ''} ({', '.join(towers)} towers, "
                 f"{len(state)} tensors; uniform layer selection)")
    return len(state)
