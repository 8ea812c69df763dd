"""Tiny synthetic shards and corpora for the tests (no downloads).

``write_image_shards`` writes real webdataset tar shards (``<key>.png`` [+ ``<key>.txt``]) plus a
``sizes.json``; ``write_text_file`` writes a sentence file in any supported corpus format.
"""
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from openclip_distill.data.tar_writer import TarShardWriter, write_tar_shard


def toy_image(index: int, seed: int = 0) -> Image.Image:
    """A small RGB image whose size and pixels depend on ``index`` (sizes vary between 24 and 64)."""
    rng = np.random.default_rng([seed, index])
    width = 24 + (index * 7) % 41
    height = 24 + (index * 13) % 37
    base = rng.integers(0, 256, size=(1, 1, 3))
    noise = rng.integers(-60, 61, size=(height, width, 3))
    ramp = np.linspace(0, 80, width)[None, :, None]
    arr = np.clip(base + noise + ramp, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode_image(img: Image.Image, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper()))
    return buf.getvalue()


def write_image_shards(
        directory: str,
        num_shards: int,
        per_shard: int,
        *,
        prefix: str = "shard",
        captions: bool = False,
        corrupt: Sequence[str] = (),
        empty_captions: Sequence[str] = (),
        image_ext: str = "png",
        write_sizes: bool = True,
        seed: int = 0,
) -> Dict[str, object]:
    """Write ``num_shards`` tar shards of ``per_shard`` samples each into ``directory``.

    Keys are ``f"{prefix}{shard:03d}_{i:04d}"``. Keys listed in ``corrupt`` get garbage image bytes;
    keys in ``empty_captions`` get a whitespace caption. Returns ``{"pattern": brace pattern,
    "shards": [paths], "keys": [keys], "captions": {key: caption}}``.
    """
    os.makedirs(directory, exist_ok=True)
    shards, keys, caps = [], [], {}
    sizes = {}
    corrupt, empty_captions = set(corrupt), set(empty_captions)
    for s in range(num_shards):
        name = f"{prefix}-{s:05d}.tar"
        path = os.path.join(directory, name)
        with TarShardWriter(path) as writer:
            for i in range(per_shard):
                key = f"{prefix}{s:03d}_{i:04d}"
                index = s * per_shard + i
                if key in corrupt:
                    data = b"\x89PNG\r\n\x1a\n this is not an image " + key.encode()
                else:
                    data = encode_image(toy_image(index, seed), image_ext)
                sample = {"__key__": key, image_ext: data}
                if captions:
                    caption = "   " if key in empty_captions else f"a photo number {index} of {prefix}"
                    caps[key] = caption
                    sample["txt"] = caption
                writer.add_sample(sample)
                keys.append(key)
        shards.append(path)
        sizes[name] = per_shard
    if write_sizes:
        with open(os.path.join(directory, "sizes.json"), "w") as f:
            json.dump(sizes, f)
    pattern = os.path.join(directory, f"{prefix}-{{{0:05d}..{num_shards - 1:05d}}}.tar")
    return {"pattern": pattern, "shards": shards, "keys": keys, "captions": caps}


def write_text_file(path: str, sentences: List[str], fmt: Optional[str] = None, text_key: str = "text") -> str:
    """Write ``sentences`` as ``txt`` (one per line), ``jsonl`` (``{text_key: s}``) or ``tar``
    (one ``<key>.txt`` member each); ``fmt`` defaults to the extension of ``path``."""
    fmt = fmt or os.path.splitext(path)[1].lstrip(".")
    if fmt == "txt":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sentences)
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({text_key: s, "id": i}) + "\n" for i, s in enumerate(sentences))
    elif fmt == "tar":
        write_tar_shard(path, ({"__key__": f"sent{i:07d}", "txt": s} for i, s in enumerate(sentences)))
    else:
        raise ValueError(f"unknown text format {fmt!r}")
    return path
