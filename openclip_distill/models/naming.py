"""OpenCLIP model names and pretrained tags: checked up front, with one-line errors naming the flag."""
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
