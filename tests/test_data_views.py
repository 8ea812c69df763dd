"""Replayable views: crop sampling, rendering, per-sample seeds, and the per-model input module."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from toy_data import toy_image
from openclip_distill.data.views import (
    ModelInput,
    apply_view,
    center_view_params,
    sample_view_params,
    view_seed,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _gradient_image(width, height):
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    arr = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (33, 33), (400, 10), (10, 400)])
@pytest.mark.parametrize("scale,ratio", [((0.9, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)),
                                         ((0.3, 0.6), (0.5, 2.0))])
def test_sample_view_params_matches_torchvision(size, scale, ratio):
    width, height = size
    img = torch.zeros(3, height, width)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        gen = torch.Generator().manual_seed(seed)
        params = sample_view_params(width, height, gen, scale=scale, ratio=ratio)
        assert params.dtype == torch.long and params.shape == (5,)
        assert tuple(params[:4].tolist()) == tuple(expected)
        top, left, h, w, flip = params.tolist()
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
        assert flip == 0


def test_sample_view_params_fallback_is_centre_crop():
    # a 400x10 strip can never fit a crop of area >= 90% with ratio <= 4/3: fallback to the centre
    params = sample_view_params(400, 10, torch.Generator().manual_seed(0))
    w = int(round(10 * 4 / 3))
    assert params.tolist() == [0, (400 - w) // 2, 10, w, 0]


def test_flip_probability_and_crop_independent_of_flip():
    flips = {p: [] for p in (0.0, 0.5, 1.0)}
    for seed in range(200):
        crops = set()
        for p in flips:
            params = sample_view_params(50, 40, torch.Generator().manual_seed(seed), hflip_prob=p)
            flips[p].append(int(params[4]))
            crops.add(tuple(params[:4].tolist()))
        assert len(crops) == 1  # the flip probability never changes the crop
    assert sum(flips[0.0]) == 0
    assert sum(flips[1.0]) == 200
    assert 60 < sum(flips[0.5]) < 140


def test_sample_view_params_rejects_bad_input():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        sample_view_params(0, 10, gen)
    with pytest.raises(ValueError):
        sample_view_params(10, 10, gen, scale=(0.9, 0.5))


def test_center_view_params():
    assert center_view_params(40, 30).tolist() == [0, 5, 30, 30, 0]
    assert center_view_params(30, 41).tolist() == [6, 0, 30, 30, 0]
    assert center_view_params(25, 25).tolist() == [0, 0, 25, 25, 0]


@pytest.mark.parametrize("size", [(80, 60), (60, 90)])
def test_center_view_matches_openclip_val_transform(size):
    from open_clip.transform import image_transform

    img = _gradient_image(*size)
    out = apply_view(img, center_view_params(*img.size), 32)
    val = image_transform(32, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ref = val(img)
    assert ref.shape == out.shape == (3, 32, 32)
    # same region, only the resampling order differs (crop+resize vs resize+crop)
    assert (out - ref).abs().mean() < 0.01
    # a view shifted by a few pixels is clearly further away: the check above has teeth
    shifted = apply_view(img, [0, 0, min(size), min(size), 0], 32)
    if size[0] != size[1]:
        assert (shifted - ref).abs().mean() > 0.03


def test_apply_view_crop_resize_flip():
    img = toy_image(3)
    arr = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    # no resize: exactly the pixel crop
    out = apply_view(img, torch.tensor([2, 3, 16, 16, 0]), 16)
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    assert torch.equal(out, arr[:, 2:18, 3:19])
    flipped = apply_view(img, torch.tensor([2, 3, 16, 16, 1]), 16)
    assert torch.equal(flipped, torch.flip(out, dims=[-1]))
    # with a resize: range [0, 1], deterministic, and a grayscale source becomes 3 channels
    big = apply_view(img, [0, 0, img.size[1], img.size[0], 0], 40)
    assert big.shape == (3, 40, 40) and big.min() >= 0 and big.max() <= 1
    assert torch.equal(big, apply_view(img, [0, 0, img.size[1], img.size[0], 0], 40))
    gray = apply_view(img.convert("L"), [0, 0, 10, 10, 0], 8)
    assert gray.shape == (3, 8, 8) and torch.equal(gray[0], gray[1])


def test_view_seed_is_stable_and_sensitive():
    # golden values: the seed must not depend on the process (PYTHONHASHSEED) or the library version
    assert view_seed(0, 0, "shard000_0000") == 5487904237310862676
    assert view_seed(7, 3, "abc/def") == 4608438133949306418
    base = view_seed(1, 2, "key")
    assert base == view_seed(1, 2, "key")
    assert len({base, view_seed(2, 2, "key"), view_seed(1, 3, "key"), view_seed(1, 2, "kez")}) == 4
    assert 0 <= base < 2 ** 63
    torch.Generator().manual_seed(base)  # usable as a generator seed


def _manual_model_input(views, size, mean, std):
    x = F.interpolate(views, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_model_input_resize_and_normalise():
    torch.manual_seed(0)
    views = torch.rand(2, 3, 40, 40)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    mi = ModelInput(24, mean, std)
    out = mi(views)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, _manual_model_input(views, (24, 24), mean, std))
    # per-channel check by hand on a constant image: (v - mean) / std
    const = torch.full((1, 3, 40, 40), 0.7)
    expected = torch.tensor([(0.7 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1).expand(1, 3, 24, 24)
    torch.testing.assert_close(mi(const), expected)
    # a non-square target size
    rect = ModelInput((20, 28), mean, std)(views)
    assert rect.shape == (2, 3, 20, 28)
    torch.testing.assert_close(rect, _manual_model_input(views, (20, 28), mean, std))


def test_model_input_skips_resize_at_equal_size_and_accepts_uint8():
    torch.manual_seed(1)
    views = torch.rand(2, 3, 24, 24)
    mi = ModelInput(24, OPENAI_MEAN, OPENAI_STD)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    assert torch.equal(mi(views), (views - mean) / std)
    as_uint8 = (views * 255).round().to(torch.uint8)
    torch.testing.assert_close(mi(as_uint8), (as_uint8.float() / 255 - mean) / std)
    assert list(mi.state_dict()) == []  # nothing lands in checkpoints
    with pytest.raises(ValueError):
        mi(torch.rand(3, 24, 24))


def test_model_input_from_openclip_model():
    import open_clip
    from open_clip.model import CLIP

    model = CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                 text_cfg={"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1})
    open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.6, 0.7)})
    mi = ModelInput.from_model(model)
    assert mi.image_size == (32, 32)
    torch.testing.assert_close(mi.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(mi.std.flatten(), torch.tensor([0.5, 0.6, 0.7]))

    class Wrapper(torch.nn.Module):  # DDP-style wrapper
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert ModelInput.from_model(Wrapper(model)).image_size == (32, 32)


def test_model_input_from_model_fallbacks():
    class Visual:
        image_size = (20, 30)

    class Model:
        visual = Visual()

    mi = ModelInput.from_model(Model())
    assert mi.image_size == (20, 30)
    torch.testing.assert_close(mi.mean.flatten(), torch.tensor(OPENAI_MEAN))
    torch.testing.assert_close(mi.std.flatten(), torch.tensor(OPENAI_STD))
    out = mi(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 20, 30) and math.isfinite(out.sum().item())
