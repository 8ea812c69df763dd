"""Model size and image-encoder inference throughput."""
from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import torch

from .evaluate import unwrap_model


def count_params(model, part: Optional[str] = None) -> int:
    """Number of parameters of ``model`` (``part="visual"`` / ``"text"``: only that tower; for
    ``"text"`` everything that is not under ``visual``)."""
    model = unwrap_model(model)
    if part is None:
        return sum(p.numel() for p in model.parameters())
    if part == "visual":
        return sum(p.numel() for p in model.visual.parameters())
    if part == "text":
        vis = {id(p) for p in model.visual.parameters()}
        return sum(p.numel() for n, p in model.named_parameters() if id(p) not in vis and n != "logit_scale"
                   and n != "logit_bias")
    raise ValueError(f"part must be None, 'visual' or 'text', got {part!r}")


@torch.no_grad()
def measure_images_per_s(model, image_size: Union[int, Sequence[int]], device: Union[str, torch.device] = "cpu",
                         batch_size: int = 64, iters: int = 10, warmup: int = 2) -> float:
    """Image-encoder inference throughput (images/s) on random input: ``warmup`` untimed batches,
    then ``iters`` timed ones (CUDA is synchronised around the timed region)."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = tuple(image_size)[-2:]
    dev = torch.device(device)
    try:
        dtype = next(model.visual.parameters()).dtype
    except (StopIteration, AttributeError):
        dtype = torch.float32
    x = torch.randn(batch_size, 3, h, w, device=dev, dtype=dtype)
    try:
        for _ in range(max(0, warmup)):
            model.encode_image(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(max(1, iters)):
            model.encode_image(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return batch_size * max(1, iters) / dt
