"""Shared fixtures: a tiny generated corpus written as real shards and text files."""
import io
import json
import os
import random

import pytest
import torch
from PIL import Image, ImageDraw

from openclip_distill.data.tar_writer import write_tar_shard

# OPENCLIP_DISTILL_TEST_THREADS=N: run the suite with torch.set_num_threads(N), to surface results that
# depend on the summation order (the thread count changes how reductions are split)
if os.environ.get("OPENCLIP_DISTILL_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["OPENCLIP_DISTILL_TEST_THREADS"]))

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "circle")


def _image(colour, shape, rng):
    img = Image.new("RGB", (40, 40), tuple(rng.randint(0, 60) for _ in range(3)))
    d = ImageDraw.Draw(img)
    x, y = rng.randint(2, 14), rng.randint(2, 14)
    box = (x, y, x + 22, y + 22)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return img


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples):
    """samples: list of dicts {"__key__": str, ext: bytes|str}."""
    write_tar_shard(path, samples)


def make_corpus(root, n_images=48, n_shards=3, seed=0):
    rng = random.Random(seed)
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    paths = {}
    for split in ("images", "paired", "eval"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
    sizes = {}
    per = n_images // n_shards
    for k in range(n_shards):
        samples = []
        for i in range(per):
            c, s = rng.choice(classes)
            samples.append({"__key__": f"img{k:02d}{i:04d}", "png": _png(_image(c, s, rng))})
        name = f"shard-{k:06d}.tar"
        write_tar(os.path.join(root, "images", name), samples)
        sizes[name] = per
    with open(os.path.join(root, "images", "sizes.json"), "w") as f:
        json.dump(sizes, f)
    paths["images"] = os.path.join(root, "images", "shard-{%06d..%06d}.tar" % (0, n_shards - 1))

    os.makedirs(os.path.join(root, "texts"), exist_ok=True)
    with open(os.path.join(root, "texts", "a.txt"), "w") as f:
        for i in range(40):
            c, s = rng.choice(classes)
            f.write(f"a {c} {s} on a dark background\n")
    with open(os.path.join(root, "texts", "b.jsonl"), "w") as f:
        for i in range(10):
            c, s = rng.choice(classes)
            f.write(json.dumps({"text": f"there is a {s} that is {c}"}) + "\n")
    paths["texts"] = os.path.join(root, "texts", "*.txt") + "::" + os.path.join(root, "texts", "*.jsonl")

    samples = []
    for i in range(32):
        c, s = rng.choice(classes)
        samples.append({"__key__": f"pair{i:04d}", "png": _png(_image(c, s, rng)), "txt": f"a {c} {s}"})
    write_tar(os.path.join(root, "paired", "shard-000000.tar"), samples)
    with open(os.path.join(root, "paired", "sizes.json"), "w") as f:
        json.dump({"shard-000000.tar": 32}, f)
    paths["paired"] = os.path.join(root, "paired", "shard-000000.tar")

    samples = []
    for i in range(24):
        label = i % len(classes)
        c, s = classes[label]
        samples.append({"__key__": f"eval{i:04d}", "png": _png(_image(c, s, rng)), "cls": str(label),
                        "txt": f"a {c} {s}"})
    write_tar(os.path.join(root, "eval", "shard-000000.tar"), samples)
    with open(os.path.join(root, "eval", "classnames.txt"), "w") as f:
        f.write("\n".join(f"{c} {s}" for c, s in classes) + "\n")
    with open(os.path.join(root, "eval", "templates.txt"), "w") as f:
        f.write("a {c}.\na photo of a {c}.\n")
    paths["eval"] = os.path.join(root, "eval")
    return paths


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))
