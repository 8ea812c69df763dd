"""Model size and image-encoder inference throughput."""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, Union

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
def measure_encode_per_s(encode: Callable, x: torch.Tensor, iters: int = 10, warmup: int = 2) -> float:
    """Throughput (inputs/s) of ``encode(x)``: ``warmup`` untimed calls, then ``iters`` timed ones
    (CUDA is synchronised around the timed region)."""
    for _ in range(max(0, warmup)):
        encode(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    for _ in range(max(1, iters)):
        encode(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return x.shape[0] * max(1, iters) / (time.perf_counter() - t0)


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
        return measure_encode_per_s(model.encode_image, x, iters=iters, warmup=warmup)
    finally:
        model.train(was_training)
