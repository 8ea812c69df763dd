"""Synthetic, offline corpus for the embedded demo ("shapes world").

``generate_demo_corpus(root, seed=0)`` writes real webdataset shards and sentence files, so the
demo runs through the same loaders as real training. Every image is a 32 px RGB picture of ONE
object on a textured, noisy, cluttered background; its caption names several attributes.

World
-----
* object attributes: colour (10) x shape (8) x size (3: small / medium / large) -> **240 classes**
  (class name ``"<size> <colour> <shape>"``, e.g. ``"large red star"``), plus free attributes that
  are *not* part of the class: position (9 regions), background (6 textures), rotation jitter,
  size/colour jitter, distractor dots and lines, Gaussian noise.
* captions: one of ~20 sentence templates with different word orders, optional position and
  background phrases, and synonyms ("big"/"large", "violet"/"purple", "disc"/"circle", ...).
  Every caption names size, colour and shape, so it determines the class.
* zero-shot prompts: ``templates.txt`` (``"a photo of a {c}."`` ...) x class names.

Splits (under ``root``)
-----------------------
=======================  ==============================================================
``teacher_pairs/``       large paired set (png + txt); trains the demo teacher only (it stands
                         in for the teacher's web-scale pre-training data)
``images/``              image-only split (png only) for unpaired distillation
``texts/``               ``sentences-%03d.txt``: sentence-only split, one caption per line,
                         drawn independently of the image split (different random draws)
``paired/``              SMALL paired split (a few hundred png + txt pairs); ``n_missing``
                         classes never appear in it (what a paired-only baseline gets)
``eval/``                held-out evaluation set in the ``openclip_distill.eval`` format:
                         shards with png + cls + txt, ``classnames.txt``, ``templates.txt``
=======================  ==============================================================

Each shard folder has ``sizes.json`` (``{shard file name: sample count}``, read by OpenCLIP's
``get_dataset_size``). All splits use different random streams; no eval caption string occurs in
any training split (such draws are re-drawn). Output is byte-for-byte deterministic for a given
seed and parameters (fixed tar headers, fixed PNG encoder settings, one RNG stream per shard), and
is cached: a ``corpus.json`` manifest with the parameters marks a finished corpus, and a second
call with the same parameters returns immediately.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tarfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..data.tar_writer import TarShardWriter

CORPUS_VERSION = 1
IMAGE_SIZE = 32
SS = 4  # supersampling factor used to draw anti-aliased shapes

# ----------------------------------------------------------------------------------------------
# attributes
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 35),
    "green": (35, 170, 55),
    "cyan": (40, 215, 225),
    "blue": (35, 65, 225),
    "purple": (135, 45, 195),
    "pink": (250, 135, 195),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SHAPES: List[str] = ["circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart"]
SIZES: Dict[str, Tuple[float, float]] = {  # radius range in pixels (of the 32 px image)
    "small": (3.9, 4.8),
    "medium": (6.4, 7.4),
    "large": (9.6, 11.0),
}
BACKGROUNDS: List[str] = ["plain", "noisy", "striped", "checkered", "gradient", "dotted"]
POSITIONS = [["top left", "top", "top right"],
             ["left", "center", "right"],
             ["bottom left", "bottom", "bottom right"]]

SYNONYMS: Dict[str, List[str]] = {
    "small": ["small", "small", "tiny", "little"],
    "medium": ["medium", "medium", "medium-sized", "mid-sized"],
    "large": ["large", "large", "big", "huge"],
    "purple": ["purple", "purple", "violet"],
    "pink": ["pink", "pink", "rose"],
    "circle": ["circle", "circle", "disc"],
    "square": ["square", "square", "box"],
    "cross": ["cross", "cross", "plus sign"],
    "ring": ["ring", "ring", "donut"],
}
POSITION_PHRASES: Dict[str, List[str]] = {
    "top left": ["in the top left", "in the upper left corner", "at the top left"],
    "top": ["at the top", "near the top edge", "in the upper middle"],
    "top right": ["in the top right", "in the upper right corner", "at the top right"],
    "left": ["on the left", "at the left side", "to the left"],
    "center": ["in the center", "in the middle", "at the centre"],
    "right": ["on the right", "at the right side", "to the right"],
    "bottom left": ["in the bottom left", "in the lower left corner", "at the bottom left"],
    "bottom": ["at the bottom", "near the bottom edge", "in the lower middle"],
    "bottom right": ["in the bottom right", "in the lower right corner", "at the bottom right"],
}
BACKGROUND_PHRASES: Dict[str, List[str]] = {
    "plain": ["on a plain background", "on a flat grey backdrop"],
    "noisy": ["on a noisy background", "on a grainy backdrop"],
    "striped": ["on a striped background", "over stripes"],
    "checkered": ["on a checkered background", "over a checkerboard"],
    "gradient": ["on a gradient background", "over a smooth gradient"],
    "dotted": ["on a dotted background", "over a speckled backdrop"],
}
# caption templates: {a} article, {s} size, {c} colour, {h} shape, {p} position, {b} background
CAPTION_TEMPLATES: List[str] = [
    "{a} {s} {c} {h}",
    "{a} {s} {c} {h} {p}",
    "{a} {s} {c} {h} {b}",
    "{a} {s} {c} {h} {p} {b}",
    "a photo of {a} {s} {c} {h}.",
    "a photo of {a} {s} {c} {h} {p}.",
    "a picture of {a} {s} {c} {h} {b}.",
    "an image of {a} {s} {c} {h} {p}.",
    "{a} {c} {h}, {s}, {p}",
    "{a} {c} {h} that is {s}, {b}",
    "{a} {s} {h} in {c} {p}",
    "{a} {s} {h}, coloured {c}, {b}",
    "there is {a} {s} {c} {h} {p}",
    "{p} there is {a} {s} {c} {h}",
    "{c} {h} ({s}) {b}",
    "{s} {c} {h} {p}",
    "{a} {h}: {c}, {s}",
    "a drawing of {a} {s} {c} {h} {b}",
    "{b}, {a} {s} {c} {h} {p}",
    "one {s} {c} {h} {p} {b}",
]
ZEROSHOT_TEMPLATES: List[str] = [
    "a photo of a {c}.",
    "a {c}.",
    "an image of a {c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
]
_SPLIT_IDS = {"teacher_pairs": 1, "images": 2, "texts": 3, "paired": 4, "eval": 5}


def class_names() -> List[str]:
    """The 240 class names, index = label (size-major, then colour, then shape)."""
    return [f"{s} {c} {h}" for s in SIZES for c in COLOURS for h in SHAPES]


def class_attributes(label: int) -> Tuple[str, str, str]:
    """(size, colour, shape) of a class label."""
    n_c, n_h = len(COLOURS), len(SHAPES)
    s = list(SIZES)[label // (n_c * n_h)]
    c = list(COLOURS)[(label // n_h) % n_c]
    h = SHAPES[label % n_h]
    return s, c, h


def missing_paired_classes(seed: int, n_missing: int) -> List[int]:
    """Labels that never occur in the small paired split (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 99])
    return sorted(rng.choice(len(class_names()), size=n_missing, replace=False).tolist())


def parse_caption(text: str) -> int:
    """The class label a caption names (inverse of :func:`caption`, synonyms included); -1 if
    it does not name exactly one size, colour and shape."""
    import re

    low = text.lower()
    found = []
    for group in (list(SIZES), list(COLOURS), SHAPES):
        hits = {w for w in group for alias in SYNONYMS.get(w, [w])
                if re.search(r"(?<![\w-])" + re.escape(alias) + r"(?![\w-])", low)}
        if len(hits) != 1:
            return -1
        found.append(hits.pop())
    s, c, h = found
    return class_names().index(f"{s} {c} {h}")


# ----------------------------------------------------------------------------------------------
# rendering
def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> List[Tuple[float, float]]:
    def poly(angles_radii):
        return [(cx + rr * math.sin(a + rot), cy - rr * math.cos(a + rot)) for a, rr in angles_radii]

    if shape == "square":
        return poly([(math.pi / 4 + k * math.pi / 2, r * 1.05) for k in range(4)])
    if shape == "triangle":
        return poly([(k * 2 * math.pi / 3, r * 1.15) for k in range(3)])
    if shape == "diamond":
        pts = [(0, -1.1), (0.62, 0), (0, 1.1), (-0.62, 0)]
    elif shape == "star":
        return poly([(k * math.pi / 5, r * (1.15 if k % 2 == 0 else 0.48)) for k in range(10)])
    elif shape == "cross":
        w = 0.36
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
    elif shape == "heart":
        pts = []
        for k in range(28):
            t = 2 * math.pi * k / 28
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.5, -(y + 2.5) / 15.0))
    else:
        raise ValueError(shape)
    cr, sr = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * cr - y * sr), cy + r * (x * sr + y * cr)) for x, y in pts]


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float,
                oy: float = 0.0) -> None:
    """Draw one shape at SS x resolution, shifted down by ``oy`` (canvas pixels)."""
    X, Y, R = cx * SS, cy * SS + oy, r * SS
    if shape == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif shape == "ring":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        ri = R * 0.52
        d.ellipse([X - ri, Y - ri, X + ri, Y + ri], fill=0)
    else:
        d.polygon([(x * SS, y * SS + oy) for x, y in _shape_polygon(shape, cx, cy, r, rot)], fill=255)


def _object_masks(shapes: Sequence[str], cx, cy, r, rot) -> np.ndarray:
    """Anti-aliased coverage masks (float32, (N, 32, 32), in [0, 1]): every shape is drawn at 4x
    on one tall canvas (one image per 32 px band), then box-downsampled at once."""
    n, N = IMAGE_SIZE, len(shapes)
    m = Image.new("L", (n * SS, n * SS * N), 0)
    d = ImageDraw.Draw(m)
    for i, shape in enumerate(shapes):
        _draw_shape(d, shape, float(cx[i]), float(cy[i]), float(r[i]), float(rot[i]), oy=i * n * SS)
    small = m.resize((n, n * N), Image.BOX)
    return (np.asarray(small, np.float32) / 255.0).reshape(N, n, n)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
_PALETTE = np.array(list(COLOURS.values()), np.float32)


def _backgrounds(kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Textured backgrounds for a batch: float32 (N, 32, 32, 3)."""
    N, n = len(kinds), IMAGE_SIZE
    base = (rng.uniform(85, 165, size=(N, 1)) + rng.uniform(-18, 18, size=(N, 3))).astype(np.float32)
    alt = base + (rng.choice([-1.0, 1.0], size=(N, 1)) * rng.uniform(22, 40, size=(N, 1))).astype(np.float32)
    period = rng.integers(3, 7, size=(N, 1, 1)).astype(np.float32)
    ang = rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4], size=(N, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 6, size=(N, 1, 1)).astype(np.float32)
    cell = rng.integers(3, 7, size=(N, 1, 1))
    off = rng.integers(0, 6, size=(N, 2, 1, 1))
    gang = rng.uniform(0, 2 * math.pi, size=(N, 1, 1)).astype(np.float32)
    w = np.zeros((N, n, n), np.float32)
    xx, yy = _XX[None], _YY[None]
    for kind in range(1, len(BACKGROUNDS)):
        sel = np.nonzero(kinds == kind)[0]
        if not len(sel):
            continue
        if kind == 1:  # noisy
            w[sel] = rng.uniform(0, 1, size=(len(sel), n, n))
        elif kind == 2:  # striped
            u = xx * np.cos(ang[sel]) + yy * np.sin(ang[sel]) + phase[sel]
            w[sel] = (u % period[sel]) < period[sel] / 2
        elif kind == 3:  # checkered
            ix, iy = _XX.astype(int)[None], _YY.astype(int)[None]
            w[sel] = (((ix + off[sel, 0]) // cell[sel] + (iy + off[sel, 1]) // cell[sel]) % 2) == 1
        elif kind == 4:  # gradient
            g = gang[sel]
            w[sel] = (((xx - n / 2) * np.cos(g) + (yy - n / 2) * np.sin(g)) / n + 0.5).clip(0, 1)
        else:  # dotted
            w[sel] = rng.uniform(0, 1, size=(len(sel), n, n)) < 0.12
    return base[:, None, None, :] + (alt - base)[:, None, None, :] * w[..., None]


def _segment_alpha(p: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of line segments p = (L, 4) [x0, y0, x1, y1]: (L, 32, 32)."""
    p = p.astype(np.float32)
    ax, ay = p[:, 0, None, None], p[:, 1, None, None]
    bx, by = p[:, 2, None, None] - ax, p[:, 3, None, None] - ay
    qx, qy = _XX[None] - ax, _YY[None] - ay
    t = ((qx * bx + qy * by) / np.maximum(bx * bx + by * by, 1e-6)).clip(0, 1)
    dx, dy = qx - t * bx, qy - t * by
    d = np.sqrt(dx * dx + dy * dy)
    return (width.astype(np.float32)[:, None, None] / 2 + 0.5 - d).clip(0, 1)


def render_batch(labels: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict[str, str]]]:
    """Draw one image per label: (uint8 (N, 32, 32, 3), free attributes per image)."""
    labels = np.asarray(labels, dtype=np.int64)
    N = len(labels)
    attrs = [class_attributes(int(c)) for c in labels]
    lo = np.array([SIZES[s][0] for s, _, _ in attrs])
    hi = np.array([SIZES[s][1] for s, _, _ in attrs])
    r = rng.uniform(lo, hi)
    cx = rng.uniform(r + 0.5, IMAGE_SIZE - r - 0.5)
    cy = rng.uniform(r + 0.5, IMAGE_SIZE - r - 0.5)
    rot = rng.uniform(-0.26, 0.26, size=N)
    kinds = rng.integers(0, len(BACKGROUNDS), size=N)
    img = _backgrounds(kinds, rng)
    # distractor dots (1-2 px), up to 4 per image
    n_dots = rng.integers(0, 5, size=N)
    dot_xy = rng.integers(0, IMAGE_SIZE - 1, size=(N, 4, 2))
    dot_s = rng.integers(1, 3, size=(N, 4))
    dot_c = _PALETTE[rng.integers(0, len(_PALETTE), size=(N, 4))]
    rows = np.arange(N)
    for k in range(4):
        for dy in (0, 1):
            for dx in (0, 1):
                sel = (n_dots > k) & ((dot_s[:, k] > 1) | ((dy == 0) & (dx == 0)))
                i, y, x = rows[sel], dot_xy[sel, k, 1] + dy, dot_xy[sel, k, 0] + dx
                img[i, y, x] = 0.3 * img[i, y, x] + 0.7 * dot_c[sel, k]
    # thin distractor lines, up to 2 per image
    n_lines = rng.integers(0, 3, size=N)
    line_p = rng.uniform(0, IMAGE_SIZE, size=(N, 2, 4))
    line_w = rng.uniform(0.5, 1.0, size=(N, 2))
    line_c = _PALETTE[rng.integers(0, len(_PALETTE), size=(N, 2))]
    for k in range(2):
        idx = np.nonzero(n_lines > k)[0]
        if len(idx):
            a = _segment_alpha(line_p[idx, k], line_w[idx, k])[..., None] * np.float32(0.6)
            img[idx] = img[idx] * (1 - a) + line_c[idx, k][:, None, None, :] * a
    # the object
    col = np.array([COLOURS[c] for _, c, _ in attrs], np.float32).reshape(N, 3)
    col = col + rng.uniform(-18, 18, size=(N, 3)).astype(np.float32)
    mask = _object_masks([h for _, _, h in attrs], cx, cy, r, rot)[..., None]
    img = img * (1 - mask) + col[:, None, None, :] * mask
    sigma = rng.uniform(3, 10, size=(N, 1, 1, 1)).astype(np.float32)
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    third = IMAGE_SIZE / 3
    free = [{"position": POSITIONS[min(int(cy[i] // third), 2)][min(int(cx[i] // third), 2)],
             "background": BACKGROUNDS[kinds[i]]} for i in range(N)]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), free


def render(label: int, rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, str]]:
    """Draw one image of class ``label``: (uint8 32x32x3, free attributes)."""
    imgs, free = render_batch([label], rng)
    return imgs[0], free[0]



def caption(label: int, free: Dict[str, str], rng: np.random.Generator) -> str:
    """A random caption naming size, colour and shape (and maybe position / background)."""
    size, colour, shape = class_attributes(label)

    def syn(w):
        opts = SYNONYMS.get(w, [w])
        return opts[rng.integers(len(opts))]

    tpl = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    words = {"s": syn(size), "c": syn(colour), "h": syn(shape)}
    pp = POSITION_PHRASES[free["position"]]
    bp = BACKGROUND_PHRASES[free["background"]]
    words["p"] = pp[rng.integers(len(pp))]
    words["b"] = bp[rng.integers(len(bp))]
    first = tpl.split("{a}")[1].split()[0] if "{a}" in tpl else ""
    nxt = words.get(first.strip("{}"), "x") if first else "x"
    words["a"] = "an" if nxt[:1] in "aeiou" else "a"
    text = tpl.format(**words)
    return text[0].upper() + text[1:] if rng.random() < 0.3 else text


# ----------------------------------------------------------------------------------------------
# writing
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bytes(arr: np.ndarray) -> bytes:
    """Minimal RGB8 PNG encoder (filter 0, zlib level 1): ~10x faster than PIL for 32x32."""
    h, w, _ = arr.shape
    raw = np.zeros((h, 1 + w * 3), np.uint8)
    raw[:, 1:] = arr.reshape(h, w * 3)
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
            + _png_chunk(b"IEND", b""))


def _write_shard(job) -> Tuple[str, int]:
    (path, split, seed, shard_idx, labels, with_png, with_txt, with_cls, forbidden) = job
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], shard_idx])
    chunk = 500
    with TarShardWriter(path) as writer:
        for c0 in range(0, len(labels), chunk):
            imgs, frees = render_batch(labels[c0:c0 + chunk], rng)
            for j, (arr, free) in enumerate(zip(imgs, frees)):
                i = c0 + j
                label = int(labels[i])
                sample = {"__key__": f"{split}{shard_idx:04d}_{i:06d}"}
                if with_png:
                    sample["png"] = _png_bytes(arr)
                if with_txt:
                    text = caption(label, free, rng)
                    while text in forbidden:
                        text = caption(label, free, rng)
                    sample["txt"] = text
                if with_cls:
                    sample["cls"] = str(label)
                writer.add_sample(sample)
    return os.path.basename(path), len(labels)


def write_lines(path: str, lines: Sequence[str]) -> None:
    """One line per item, UTF-8, ``\\n`` line ends (the corpus files are the same bytes on every OS)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def _write_sentences(job) -> Tuple[str, int]:
    path, seed, file_idx, labels, forbidden = job
    rng = np.random.default_rng([seed, _SPLIT_IDS["texts"], file_idx])
    lines = []
    for label in labels:
        # free attributes drawn as for an image, but no image is kept: unrelated to images/
        pos = POSITIONS[rng.integers(3)][rng.integers(3)]
        bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        text = caption(int(label), {"position": pos, "background": bg}, rng)
        while text in forbidden:
            text = caption(int(label), {"position": pos, "background": bg}, rng)
        lines.append(text)
    write_lines(path, lines)
    return os.path.basename(path), len(labels)


def _balanced_labels(rng: np.random.Generator, n: int, allowed: Sequence[int]) -> np.ndarray:
    allowed = np.asarray(allowed)
    reps = int(math.ceil(n / len(allowed)))
    labels = np.tile(allowed, reps)[:n] if n % len(allowed) == 0 else np.concatenate(
        [np.tile(allowed, reps - 1), rng.choice(allowed, n - (reps - 1) * len(allowed), replace=False)])
    rng.shuffle(labels)
    return labels


def _chunks(n: int, per: int) -> List[Tuple[int, int]]:
    return [(s, min(n, s + per)) for s in range(0, n, per)]


def _brace(dirname: str, n_shards: int) -> str:
    if n_shards == 1:
        return os.path.join(dirname, "shard-000000.tar")
    return os.path.join(dirname, "shard-{000000..%06d}.tar" % (n_shards - 1))


def read_manifest(root: str, params: dict):
    """The ``paths`` of the finished corpus at ``root`` if its ``corpus.json`` was written with these
    ``params``, else None (no corpus, another version or other parameters)."""
    try:
        with open(os.path.join(root, "corpus.json")) as f:
            saved = json.load(f)
        return saved["paths"] if saved.get("params") == params else None
    except (OSError, ValueError, KeyError):
        return None


def reusable_corpus(root: str, params: dict, force: bool = False):
    """The ``paths`` of the finished corpus at ``root`` written with ``params`` (unless ``force``), else
    None once ``root`` may be (re)written: a non-empty directory that is not a demo corpus (no
    ``corpus.json``) raises ValueError instead of being overwritten."""
    saved = None if force else read_manifest(root, params)
    if saved is None and os.path.isdir(root) and os.listdir(root) \
            and not os.path.exists(os.path.join(root, "corpus.json")):
        raise ValueError(f"{root} exists and is not a demo corpus (no corpus.json); refusing to "
                         f"overwrite it: pass an empty or new directory")
    return saved


def generate_demo_corpus(
    root: str,
    seed: int = 0,
    *,
    n_teacher_pairs: int = 60000,
    n_images: int = 30000,
    n_texts: int = 30000,
    n_paired: int = 400,
    n_missing: int = 60,
    n_eval_per_class: int = 8,
    shard_size: int = 5000,
    texts_per_file: int = 10000,
    workers: int = 2,
    force: bool = False,
) -> Dict[str, object]:
    """Write (or reuse) the demo corpus under ``root``; return a dict of paths and counts.

    Keys: ``root``; for each shard split ``teacher_pairs``, ``images``, ``paired``, ``eval`` a brace
    pattern of its shards (e.g. ``root/images/shard-{000000..000005}.tar``), ``<split>_dir`` and
    ``<split>_count``; ``texts`` (``::``-joined sentence files), ``texts_dir``, ``texts_count``;
    ``eval_dir`` holds ``classnames.txt`` / ``templates.txt``; ``num_classes``;
    ``missing_paired_classes``. Same seed and parameters -> the same bytes.
    """
    params = dict(version=CORPUS_VERSION, seed=seed, n_teacher_pairs=n_teacher_pairs,
                  n_images=n_images, n_texts=n_texts, n_paired=n_paired, n_missing=n_missing,
                  n_eval_per_class=n_eval_per_class, shard_size=shard_size,
                  texts_per_file=texts_per_file)
    root = os.path.abspath(os.path.expanduser(root))
    saved = reusable_corpus(root, params, force)
    if saved is not None:
        return saved
    if n_paired < 1 or n_missing >= len(class_names()):
        raise ValueError("n_paired must be >= 1 and n_missing < number of classes")

    t0 = time.time()
    tmp = root + ".tmp-%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ncls = len(class_names())
    all_labels = list(range(ncls))
    missing = missing_paired_classes(seed, n_missing)
    present = [c for c in all_labels if c not in set(missing)]

    def lab_rng(split):  # one label stream per split: a split's content never depends on others' sizes
        return np.random.default_rng([seed, 7, _SPLIT_IDS[split]])

    # eval first: its captions are forbidden in every training split
    eval_dir = os.path.join(tmp, "eval")
    os.makedirs(eval_dir)
    eval_labels = _balanced_labels(lab_rng("eval"), n_eval_per_class * ncls, all_labels)
    eval_jobs = [(os.path.join(eval_dir, "shard-%06d.tar" % k), "eval", seed, k, eval_labels[a:b],
                  True, True, True, frozenset()) for k, (a, b) in enumerate(_chunks(len(eval_labels), shard_size))]
    eval_sizes = dict(_write_shard(j) for j in eval_jobs)
    forbidden = set()
    for j in eval_jobs:
        with tarfile.open(j[0]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".txt"):
                    forbidden.add(tar.extractfile(m).read().decode("utf-8"))
    forbidden = frozenset(forbidden)
    write_lines(os.path.join(eval_dir, "classnames.txt"), class_names())
    write_lines(os.path.join(eval_dir, "templates.txt"), ZEROSHOT_TEMPLATES)

    jobs, sizes_of = [], {}
    spec = [("teacher_pairs", n_teacher_pairs, all_labels, True, True),
            ("images", n_images, all_labels, True, False),
            ("paired", n_paired, present, True, True)]
    for split, n, allowed, png, txt in spec:
        d = os.path.join(tmp, split)
        os.makedirs(d)
        sizes_of[split] = {}
        if n <= 0:
            continue
        labels = _balanced_labels(lab_rng(split), n, allowed)
        for k, (a, b) in enumerate(_chunks(n, shard_size)):
            jobs.append(("shard", split, (os.path.join(d, "shard-%06d.tar" % k), split, seed, k,
                                          labels[a:b], png, txt, False, forbidden)))
    tdir = os.path.join(tmp, "texts")
    os.makedirs(tdir)
    text_labels = _balanced_labels(lab_rng("texts"), n_texts, all_labels) if n_texts > 0 else []
    for k, (a, b) in enumerate(_chunks(n_texts, texts_per_file)):
        jobs.append(("text", "texts", (os.path.join(tdir, "sentences-%03d.txt" % k), seed, k,
                                       text_labels[a:b], forbidden)))
    # biggest first for better load balance
    jobs.sort(key=lambda j: -len(j[2][4] if j[0] == "shard" else j[2][3]))

    def run(job):
        return _write_shard(job[2]) if job[0] == "shard" else _write_sentences(job[2])

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        ctx = mp.get_context("fork") if hasattr(os, "fork") else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            futs = [(j, ex.submit(_write_shard if j[0] == "shard" else _write_sentences, j[2])) for j in jobs]
            results = [(j, fu.result()) for j, fu in futs]
    else:
        results = [(j, run(j)) for j in jobs]
    text_files = []
    for j, (fname, count) in results:
        if j[0] == "shard":
            sizes_of[j[1]][fname] = count
        else:
            text_files.append(fname)
    sizes_of["eval"] = eval_sizes
    for split, sizes in sizes_of.items():
        with open(os.path.join(tmp, split, "sizes.json"), "w") as f:
            json.dump(dict(sorted(sizes.items())), f, indent=1, sort_keys=True)

    paths: Dict[str, object] = {"root": root, "num_classes": ncls, "missing_paired_classes": missing}
    for split in ("teacher_pairs", "images", "paired", "eval"):
        d = os.path.join(root, split)
        paths[split] = _brace(d, len(sizes_of[split])) if sizes_of[split] else ""
        paths[split + "_dir"] = d
        paths[split + "_count"] = int(sum(sizes_of[split].values()))
    paths["texts"] = "::".join(os.path.join(root, "texts", f) for f in sorted(text_files))
    paths["texts_dir"] = os.path.join(root, "texts")
    paths["texts_count"] = int(n_texts)
    with open(os.path.join(tmp, "corpus.json"), "w") as f:
        json.dump({"params": params, "paths": paths}, f, indent=1, sort_keys=True)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    os.replace(tmp, root)
    paths["generation_s"] = round(time.time() - t0, 2)
    return paths


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Write the synthetic demo corpus.")
    p.add_argument("--root", default="./demo_data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-teacher-pairs", type=int, default=60000)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    paths = generate_demo_corpus(a.root, a.seed, n_teacher_pairs=a.n_teacher_pairs, force=a.force)
    print(json.dumps(paths, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
