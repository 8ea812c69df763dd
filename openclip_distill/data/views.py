"""Replayable augmented views shared by the student and the teacher.

The loader turns each image into ONE augmented view: a float tensor in [0, 1] of size
``view_size x view_size``. Student and (frozen) teacher both consume that same view; each resizes
and normalises it for itself on the device (:class:`ModelInput`). The augmentation is described by
five integers (``top, left, crop_h, crop_w, flip``, in source pixels) so that it can be stored
(e.g. next to cached teacher embeddings) and replayed with :func:`apply_view`.

Per-sample randomness comes from :func:`view_seed` (a stable hash of seed, epoch and sample key),
so a sample's view does not depend on the number of DataLoader workers, on the rank, or on
whether the run was resumed.
"""
import math
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .seeding import derive_seed

VIEW_FIELDS = ("top", "left", "crop_h", "crop_w", "flip")


def _check_size(width: int, height: int):
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")


def _params(top, left, crop_h, crop_w, flip) -> torch.Tensor:
    return torch.tensor([int(top), int(left), int(crop_h), int(crop_w), int(bool(flip))], dtype=torch.long)


def sample_view_params(
        width: int,
        height: int,
        generator: torch.Generator,
        scale: Sequence[float] = (0.9, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip_prob: float = 0.0,
) -> torch.Tensor:
    """Draw one RandomResizedCrop (+ optional horizontal flip) for a ``width x height`` image.

    Returns ``LongTensor[5] = (top, left, crop_h, crop_w, flip)`` in source pixels. The crop is
    drawn exactly like ``torchvision.transforms.RandomResizedCrop.get_params`` (10 tries, then the
    centre-crop fallback), but from ``generator`` instead of the global RNG; the flip is drawn
    afterwards (one more draw, always made, so ``hflip_prob`` never changes the crop).
    """
    _check_size(width, height)
    width, height = int(width), int(height)
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"scale must satisfy 0 < min <= max, got {tuple(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
    area = height * width
    # same float32 arithmetic as torchvision, so a seeded generator reproduces its crops
    log_ratio = torch.log(torch.tensor(ratio))
    crop = None
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            crop = (top, left, h, w)
            break
    if crop is None:  # fallback: centre crop with the aspect ratio clamped into ``ratio``
        in_ratio = width / height
        if in_ratio < min(ratio):
            w = width
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = height
            w = int(round(h * max(ratio)))
        else:
            w, h = width, height
        crop = ((height - h) // 2, (width - w) // 2, h, w)
    flip = torch.rand(1, generator=generator).item() < hflip_prob
    return _params(*crop, flip)


def center_view_params(width: int, height: int) -> torch.Tensor:
    """The evaluation view: the largest centred square, no flip.

    Resizing it to ``S x S`` equals OpenCLIP's validation transform (resize the shortest side to
    ``S``, then centre-crop ``S x S``) up to resampling differences.
    """
    _check_size(width, height)
    side = min(int(width), int(height))
    top = int(round((int(height) - side) / 2.0))
    left = int(round((int(width) - side) / 2.0))
    return _params(top, left, side, side, False)


def apply_view(img: Image.Image, params, size: int) -> torch.Tensor:
    """Render a view: RGB convert, crop ``params``, bicubic resize to ``size x size``, flip.

    ``params`` is ``(top, left, crop_h, crop_w, flip)`` (tensor or sequence). Returns a
    ``FloatTensor[3, size, size]`` in [0, 1]. Deterministic: the same image and params always give
    the same tensor, bit for bit (this is how stored views are replayed).
    """
    top, left, crop_h, crop_w, flip = (int(v) for v in (params.tolist() if torch.is_tensor(params) else params))
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"view crop must be non-empty, got crop_h={crop_h}, crop_w={crop_w}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.crop((left, top, left + crop_w, top + crop_h))
    img = img.resize((int(size), int(size)), resample=Image.BICUBIC)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def view_seed(seed: int, epoch: int, key: str) -> int:
    """Deterministic 63-bit seed for the augmentation of sample ``key`` at ``epoch``.

    A stable hash (BLAKE2b), so it is identical across processes, worker counts, ranks and resumes.
    """
    return derive_seed("view", int(seed), int(epoch), str(key))


def _to_2tuple(size) -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {size!r}")
        return int(size[0]), int(size[1])
    return int(size), int(size)


class ModelInput(torch.nn.Module):
    """Turn shared views into one model's input: bicubic antialiased resize, then normalise.

    ``forward(views)``: ``views`` is ``[B, 3, H, W]`` float in [0, 1] (uint8 in [0, 255] is also
    accepted). The resize is skipped when ``(H, W)`` already equals ``image_size``; the resized
    values are clamped to [0, 1] (bicubic overshoots; the PIL pipeline OpenCLIP uses clamps too).
    The output is float32 ``(x - mean) / std`` of shape ``[B, 3, *image_size]``. No parameters;
    ``mean``/``std`` are non-persistent buffers (they follow ``.to(device)`` but stay out of
    checkpoints).
    """

    def __init__(self, image_size: Union[int, Sequence[int]], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.image_size = _to_2tuple(image_size)
        mean = torch.as_tensor(tuple(float(m) for m in mean), dtype=torch.float32)
        std = torch.as_tensor(tuple(float(s) for s in std), dtype=torch.float32)
        if mean.numel() != 3 or std.numel() != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {tuple(mean.tolist())}, {tuple(std.tolist())}")
        if bool((std <= 0).any()):
            raise ValueError(f"std must be positive, got {tuple(std.tolist())}")
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_model(cls, model) -> "ModelInput":
        """Build from an OpenCLIP model (``model.visual.image_size`` and ``preprocess_cfg`` mean/std).

        Unwraps ``.module`` (DDP / DeepSpeed engines). Mean/std fall back to the legacy
        ``image_mean``/``image_std`` attributes, then to OpenAI's CLIP constants.
        """
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        while not hasattr(model, "visual") and hasattr(model, "module"):
            model = model.module
        visual = getattr(model, "visual", model)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = getattr(visual, "image_size", None)
        if size is None:
            size = cfg.get("size")
        if size is None:
            raise ValueError(f"cannot find the image size of {type(model).__name__} "
                             "(expected model.visual.image_size or model.visual.preprocess_cfg['size'])")
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        return cls(size, mean, std)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, mean={tuple(round(v, 6) for v in self.mean.flatten().tolist())}, "
                f"std={tuple(round(v, 6) for v in self.std.flatten().tolist())}")

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 4 or views.shape[1] != 3:
            raise ValueError(f"views must be [B, 3, H, W], got {tuple(views.shape)}")
        if views.dtype == torch.uint8:
            x = views.float().div_(255.0)
        else:
            x = views.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return (x - self.mean) / self.std
