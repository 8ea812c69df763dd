"""The frozen teacher: built from any OpenCLIP name and pretrained tag/path, never trained.

QuickGELU follows the pretrained tag's config (OpenAI's ViT-L-14 weights need it), the model is
put in ``eval()`` with ``requires_grad=False`` and is never wrapped in DDP/ZeRO.
"""
import logging
import os

import open_clip

from ..errors import DistillUsageError

_SCHEMAS = ("hf-hub:", "local-dir:")


def check_model_name(name: str, flag: str) -> None:
    """Raise a one-line error when ``name`` is neither a known config nor an hf-hub/local-dir id."""
    if name.startswith(_SCHEMAS):
        if name.startswith("local-dir:") and not os.path.isdir(name[len("local-dir:"):]):
            raise DistillUsageError(f"{flag}: folder {name[len('local-dir:'):]!r} does not exist")
        return
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(name.lower()[:5])][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DistillUsageError(f"{flag}: unknown model {name!r}{hint}; see --list-models for the choices")


def resolve_pretrained(name: str, pretrained, flag: str):
    """Return (pretrained, quick_gelu) after checking the tag or path exists."""
    if not pretrained:
        return None, False
    if os.path.isfile(pretrained):
        return pretrained, False
    if name.startswith(_SCHEMAS):
        return pretrained, False
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        choices = f"one of {', '.join(tags)} or " if tags else ""
        raise DistillUsageError(f"{flag}: {pretrained!r} is neither a pretrained tag of {name} nor a file; "
                                f"pass {choices}a local .pt/.safetensors path")
    return pretrained, bool(cfg.get("quick_gelu", False))


def create_frozen_model(name, pretrained, *, device, precision="fp32", cache_dir=None, flag="--distill-teacher"):
    """Build an OpenCLIP model for inference only; returns (model, preprocess_val, tokenizer)."""
    check_model_name(name, flag)
    pretrained, quick_gelu = resolve_pretrained(name, pretrained, f"{flag}-pretrained")
    model_precision = {"fp16": "fp16", "bf16": "bf16"}.get(precision, "fp32")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained, precision=model_precision, device=device, force_quick_gelu=quick_gelu,
            output_dict=True, cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DistillUsageError(
            f"{flag}-pretrained: could not load weights {pretrained!r} for {name} ({reason}); "
            f"without internet, download them beforehand into --cache-dir or pass a local "
            f".pt/.safetensors file") from None
    model.eval().requires_grad_(False)
    logging.info(f"Teacher {name} ({pretrained or 'random init'}), quick_gelu={quick_gelu}, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, frozen")
    return model, preprocess, tokenizer


def create_teacher(args, device):
    """The teacher of ``--distill-teacher``/``--distill-teacher-pretrained``."""
    precision = args.distill_teacher_precision or args.precision
    return create_frozen_model(args.distill_teacher, args.distill_teacher_pretrained, device=device,
                               precision=precision, cache_dir=args.cache_dir)

