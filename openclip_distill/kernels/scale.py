"""Logit scales as 0-d fp32 tensors on the features' device (python floats or 0-d/1-element tensors)."""
import torch


def scale_tensor(scale, like: torch.Tensor) -> torch.Tensor:
    """``scale`` as a 0-d fp32 tensor on ``like.device``; differentiable when ``scale`` is a tensor."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"a logit scale must have one element, got shape {tuple(scale.shape)}")
        return scale.to(device=like.device, dtype=torch.float32).reshape(())
    return torch.tensor(float(scale), device=like.device, dtype=torch.float32)
