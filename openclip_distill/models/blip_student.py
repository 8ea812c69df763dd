"""A smaller BLIP built from a BLIP teacher: fewer (and optionally narrower) layers, teacher-initialised.

DLIP (Kuang et al., "DLIP: Distilling Language-Image Pre-training", 2023) compresses BLIP module by
module, starting each student module from a uniform selection of the teacher's layers. Hugging Face's
``BlipForImageTextRetrieval`` (``vision_model``, ``text_encoder``, ``vision_proj``, ``text_proj``,
``itm_head``) and ``BlipForConditionalGeneration`` (``vision_model``, ``text_decoder``) are handled the
same way; the result is a model of the teacher's class that ``save_pretrained`` / ``from_pretrained``
read like any other.

With ``init="teacher-layers"`` (TinyCLIP-style weight inheritance, as ``weight_inheritance`` does for
OpenCLIP towers):

* **layers** - student layer ``i`` of a tower with ``L_s`` layers copies teacher layer ``i * floor(L_t / L_s)``
  (teacher layers ``0, s, 2s, ...``), for the ViT and for the BERT text encoder/decoder alike;
* **width** - a narrower tower keeps the teacher's head width ``d``: ``width / d`` heads (the leading ones),
  the leading ``width`` channels of every residual-stream tensor (embeddings, layer norms, MLP inputs,
  projections' inputs, the cross-attention's image-side key/value inputs) and the leading
  ``intermediate_size * width / teacher_width`` MLP hidden units;
* **everything else** (patch/position/word embeddings, ``vision_proj``, ``text_proj``, ``itm_head``,
  the LM head) is copied, cut to the student's widths.

``init="random"`` builds the same architecture with transformers' own initialisation.
"""
import copy
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..errors import DistillUsageError
from .weight_inheritance import cut_to_shape, head_indices, uniform_layer_selection

INITS = ("teacher-layers", "random")
BLIP_CLASSES = ("BlipForImageTextRetrieval", "BlipForConditionalGeneration")
_VISION_LAYER = re.compile(r"^(?P<pre>vision_model\.encoder\.layers\.)(?P<i>\d+)(?P<post>\..*)$")
_TEXT_LAYER = re.compile(r"^(?P<pre>(?:text_encoder|text_decoder\.bert)\.encoder\.layer\.)(?P<i>\d+)(?P<post>\..*)$")


def _blip_class(name: str):
    import transformers

    return getattr(transformers, name)


def load_blip(model_or_dir, flag: str = "teacher"):
    """A ``BlipForImageTextRetrieval`` / ``BlipForConditionalGeneration`` given as a model or a directory
    (its class read from ``config.json``'s ``architectures``)."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise DistillUsageError(f"{flag}: {path!r} is not a model directory (no config.json); pass a "
                                    f"save_pretrained directory of a BLIP retrieval or captioning model")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        arch = [a for a in (getattr(config, "architectures", None) or []) if a in BLIP_CLASSES]
        if config.model_type != "blip" or not arch:
            raise DistillUsageError(f"{flag}: {path!r} holds a {config.model_type} model "
                                    f"({', '.join(getattr(config, 'architectures', None) or ['no architecture'])}), "
                                    f"not one of {', '.join(BLIP_CLASSES)}; pass a BLIP retrieval or captioning model")
        return _blip_class(arch[0]).from_pretrained(path)
    if type(model_or_dir).__name__ not in BLIP_CLASSES:
        raise DistillUsageError(f"{flag}: a {type(model_or_dir).__name__} is not one of {', '.join(BLIP_CLASSES)}; "
                                f"pass a BLIP retrieval or captioning model")
    return model_or_dir


def _narrowed(sub_config, layers: int, width: Optional[int], what: str):
    """A copy of a vision/text sub-config with ``layers`` layers and ``width`` channels (same head width)."""
    cfg = copy.deepcopy(sub_config)
    t_width, t_heads = sub_config.hidden_size, sub_config.num_attention_heads
    head_dim = t_width // t_heads
    width = t_width if width is None else int(width)
    if not 0 < width <= t_width or width % head_dim:
        raise DistillUsageError(f"{what}_width={width}: a student {what} tower must be at most the teacher's "
                                f"{t_width} channels and a multiple of its head width {head_dim}")
    cfg.num_hidden_layers = int(layers)
    cfg.hidden_size, cfg.num_attention_heads = width, width // head_dim
    cfg.intermediate_size = max(1, round(sub_config.intermediate_size * width / t_width))
    return cfg


def blip_student_config(teacher_config, *, vision_layers: int, text_layers: int, vision_width: Optional[int] = None,
                        text_width: Optional[int] = None):
    """The teacher's ``BlipConfig`` with the student's depths and widths."""
    for what, n, t in (("vision", vision_layers, teacher_config.vision_config.num_hidden_layers),
                       ("text", text_layers, teacher_config.text_config.num_hidden_layers)):
        uniform_layer_selection(t, int(n), flag=f"{what}_layers={n}", fix="a smaller preset")
    config = copy.deepcopy(teacher_config)
    config.vision_config = _narrowed(teacher_config.vision_config, vision_layers, vision_width, "vision")
    config.text_config = _narrowed(teacher_config.text_config, text_layers, text_width, "text")
    config.text_config.encoder_hidden_size = config.vision_config.hidden_size
    return config


def _head_index(t_cfg, s_cfg) -> torch.Tensor:
    t_heads, s_heads = t_cfg.num_attention_heads, s_cfg.num_attention_heads
    head_dim = t_cfg.hidden_size // t_heads
    return head_indices(t_heads, head_dim, s_heads, head_dim)


def inherited_blip_state(student, teacher) -> Dict[str, torch.Tensor]:
    """Every student tensor cut from the teacher's (see the module docstring); keys are the student's."""
    t_cfg, s_cfg = teacher.config, student.config
    vision_layers = uniform_layer_selection(t_cfg.vision_config.num_hidden_layers,
                                            s_cfg.vision_config.num_hidden_layers, flag="vision_layers")
    text_layers = uniform_layer_selection(t_cfg.text_config.num_hidden_layers, s_cfg.text_config.num_hidden_layers,
                                          flag="text_layers")
    v_qkv = head_indices(t_cfg.vision_config.num_attention_heads,
                         t_cfg.vision_config.hidden_size // t_cfg.vision_config.num_attention_heads,
                         s_cfg.vision_config.num_attention_heads,
                         t_cfg.vision_config.hidden_size // t_cfg.vision_config.num_attention_heads, chunks=3)
    v_heads = _head_index(t_cfg.vision_config, s_cfg.vision_config)
    t_heads = _head_index(t_cfg.text_config, s_cfg.text_config)
    t_sd, out = teacher.state_dict(), {}
    for key, value in student.state_dict().items():
        m_v, m_t = _VISION_LAYER.match(key), _TEXT_LAYER.match(key)
        index = {}
        if m_v:
            t_key = f"{m_v['pre']}{vision_layers[int(m_v['i'])]}{m_v['post']}"
            if ".self_attn.qkv." in key:
                index[0] = v_qkv
            elif key.endswith(".self_attn.projection.weight"):
                index[1] = v_heads
        elif m_t:
            t_key = f"{m_t['pre']}{text_layers[int(m_t['i'])]}{m_t['post']}"
            if re.search(r"\.self\.(query|key|value)\.", key):
                index[0] = t_heads
            elif re.search(r"(attention|crossattention)\.output\.dense\.weight$", key):
                index[1] = t_heads
        else:
            t_key = key
        if t_key not in t_sd:
            raise DistillUsageError(f"teacher: no {t_key} for the student's {key}; the teacher and the student "
                                    f"are not the same BLIP class")
        out[key] = cut_to_shape(t_sd[t_key].detach(), value.shape, key, index, flag="teacher",
                                fix="init='random'").to(value.dtype).clone()
    return out


def build_blip_student(teacher, *, vision_layers: int, text_layers: int, vision_width: Optional[int] = None,
                       text_width: Optional[int] = None, init: str = "teacher-layers"):
    """A BLIP of the teacher's class with ``vision_layers`` ViT layers and ``text_layers`` BERT layers
    (``vision_width`` / ``text_width`` channels, the teacher's by default), initialised per ``init``.

    ``teacher``: a ``BlipForImageTextRetrieval`` / ``BlipForConditionalGeneration`` or its directory."""
    if init not in INITS:
        raise DistillUsageError(f"init={init!r}: choose one of {', '.join(INITS)}")
    teacher = load_blip(teacher)
    config = blip_student_config(teacher.config, vision_layers=vision_layers, text_layers=text_layers,
                                 vision_width=vision_width, text_width=text_width)
    param = next(teacher.parameters())
    student = type(teacher)(config).to(device=param.device, dtype=param.dtype)
    if init == "teacher-layers":
        with torch.no_grad():
            state = inherited_blip_state(student, teacher)
            s_sd = student.state_dict()
            for k, v in state.items():
                s_sd[k].copy_(v)
    logging.info(f"BLIP student {type(student).__name__}: {vision_layers} vision / {text_layers} text layers, "
                 f"{num_params(student) / 1e6:.2f}M params (teacher {num_params(teacher) / 1e6:.2f}M), init {init}")
    return student


def num_params(model) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


# -- presets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlipStudentPreset:
    """A student as fractions of its teacher: depth per tower (layers rounded, at least 1) and width
    (rounded down to a multiple of the teacher's head width, at least one head)."""

    vision_depth: float
    text_depth: float
    vision_width: float = 1.0
    text_width: float = 1.0

    def resolve(self, teacher_config) -> dict:
        """``build_blip_student`` keywords for a teacher with ``teacher_config`` (a ``BlipConfig``)."""
        out = {}
        for what, depth, width in (("vision", self.vision_depth, self.vision_width),
                                   ("text", self.text_depth, self.text_width)):
            sub = getattr(teacher_config, f"{what}_config")
            head_dim = sub.hidden_size // sub.num_attention_heads
            out[f"{what}_layers"] = max(1, round(sub.num_hidden_layers * depth))
            out[f"{what}_width"] = max(head_dim, int(sub.hidden_size * width) // head_dim * head_dim)
        return out


_PRESETS: Dict[str, BlipStudentPreset] = {}


def register_blip_student(name: str, preset: BlipStudentPreset) -> None:
    """Register a BLIP student preset under ``name`` (listed by ``--list-models``)."""
    if name in _PRESETS and _PRESETS[name] != preset:
        raise ValueError(f"BLIP student preset {name!r} is already registered")
    _PRESETS[name] = preset


def list_blip_students() -> List[str]:
    return sorted(_PRESETS)


def get_blip_student_preset(name: str) -> BlipStudentPreset:
    if name not in _PRESETS:
        raise DistillUsageError(f"--model: unknown BLIP student {name!r}; choose one of "
                                f"{', '.join(list_blip_students())} (see --list-models)")
    return _PRESETS[name]


def build_blip_student_preset(teacher, name: str, init: str = "teacher-layers"):
    """``build_blip_student`` with the depths/widths of the preset ``name`` applied to ``teacher``."""
    teacher = load_blip(teacher)
    return build_blip_student(teacher, init=init, **get_blip_student_preset(name).resolve(teacher.config))


# DLIP's headline student is about half of BLIP-base (213M -> 108M): half the layers of each tower
register_blip_student("blip-small", BlipStudentPreset(vision_depth=0.5, text_depth=0.5))
# a quarter of the layers at half the width (about a tenth of the teacher's transformer weights)
register_blip_student("blip-tiny", BlipStudentPreset(vision_depth=0.25, text_depth=0.25, vision_width=0.5,
                                                     text_width=0.5))
# half the layers and a 2/3-wide ViT (the DLIP demo's student: ~3.4x the teacher's images/s at 96 -> 64 channels)
register_blip_student("blip-small-narrow", BlipStudentPreset(vision_depth=0.5, text_depth=0.5, vision_width=2 / 3))
