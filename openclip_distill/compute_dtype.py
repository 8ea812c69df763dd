"""The dtype losses and their feature gradients are computed in: ``promote(float32, *input dtypes)``.

fp16/bf16 model outputs are promoted to fp32 before a softmax over the batch (as ``.float()`` would);
float64 inputs keep float64 instead of being rounded to fp32, so a float64 run is float64 end to end
(the tests check GradCache and the losses against exact formulas that way).
"""
import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when one of ``tensors`` is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``compute_dtype(x)`` (``x`` itself when it already is)."""
    return x.to(compute_dtype(x))
