"""Loss registry in the style of timm's model registry.

    @register_loss("my-loss")
    class MyLoss(nn.Module): ...

    loss = create_distill_loss("my-loss", weight=0.5)
    list_losses()  # ['clip-distill', 'dime-fm', 'my-loss', ...]
"""
import inspect
from typing import Callable, Dict, List, Optional

from .errors import DistillUsageError

_LOSSES: Dict[str, Callable] = {}


def register_loss(name: str):
    """Decorator: register a loss class (or factory) under ``name``."""

    def _register(fn):
        if name in _LOSSES and _LOSSES[name] is not fn:
            raise ValueError(f"distillation loss {name!r} is already registered")
        _LOSSES[name] = fn
        fn.registry_name = name
        return fn

    return _register


def list_losses() -> List[str]:
    return sorted(_LOSSES)


def get_loss_class(name: str):
    if name not in _LOSSES:
        raise DistillUsageError(
            f"--distill-loss: unknown loss {name!r}; choose one of {', '.join(list_losses())} "
            f"(or register your own with openclip_distill.register_loss)")
    return _LOSSES[name]


def create_distill_loss(name: str, context: Optional[dict] = None, **kwargs):
    """Instantiate the registered loss ``name`` with ``kwargs``.

    ``context``: facts about the run a loss may need to build itself (``student_embed_dim``,
    ``teacher_embed_dim``, ...); each is passed only when the constructor declares it and the user
    did not set it in ``kwargs``."""
    cls = get_loss_class(name)
    for key, value in (context or {}).items():
        if key not in kwargs and key in inspect.signature(cls).parameters:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise DistillUsageError(f"--distill-loss-kwargs: {name!r} rejected its arguments ({e})") from None
