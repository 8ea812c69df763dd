"""Logit scales as 0-d fp32 tensors on the features' device (python floats or 0-d/1-element tensors).

fp64 features (the tests' high-precision reference runs) get an fp64 scale, so nothing is rounded to fp32;
any other features get an fp32 scale.
"""
import torch


def scale_dtype(scale, like: torch.Tensor) -> torch.dtype:
    """fp64 for fp64 features, else fp32 (whatever the scale's own dtype)."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def scale_tensor(scale, like: torch.Tensor) -> torch.Tensor:
    """``scale`` as a 0-d fp32 tensor on ``like.device``; differentiable when ``scale`` is a tensor."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"a logit scale must have one element, got shape {tuple(scale.shape)}")
        return scale.to(device=like.device, dtype=scale_dtype(scale, like)).reshape(())
    return torch.tensor(float(scale), device=like.device, dtype=scale_dtype(scale, like))
