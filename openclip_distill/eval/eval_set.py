"""Local evaluation sets: the on-disk format read by ``--eval-data DIR`` and ``load_eval_set``.

Two layouts are accepted.

1. **webdataset layout** (used by the demo)::

       DIR/classnames.txt      one class name per line; line index (0-based) = integer label
       DIR/templates.txt       one prompt template per line, each containing ``{c}``
                               (e.g. ``a photo of a {c}.``); optional, see below
       DIR/*.tar               webdataset shards (read in sorted file-name order). A sample is the
                               group of members sharing a key (the name up to the first dot):
                                 <key>.png|jpg|jpeg|webp   the image (required)
                                 <key>.cls                 integer label as text (required)
                                 <key>.txt                 a caption (optional; enables retrieval)

2. **ImageFolder layout**::

       DIR/<class name>/<image>.png|jpg|jpeg|webp   label = index of the folder in sorted order,
                                                    class name = folder name with ``_`` -> space
       DIR/<class name>/<image>.txt                 optional caption of ``<image>`` (retrieval)
       DIR/templates.txt                            optional

Empty lines and lines starting with ``#`` in the text files are ignored. ``classnames_file`` /
``templates_file`` override the default locations (for the ImageFolder layout a class-name file
must list one name per class folder, in sorted folder order). Without a templates file the
templates are ``{c}`` and ``a photo of a {c}.``.

Zero-shot classification uses every sample; retrieval uses the samples that have a caption (only
when at least two have one). Any problem (missing directory, missing class names, bad template, a
label out of range) raises :class:`~openclip_distill.errors.DistillUsageError` naming
``--eval-data`` and the fix.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from PIL import Image

from ..errors import DistillUsageError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
DEFAULT_TEMPLATES = ("{c}", "a photo of a {c}.")
FLAG = "--eval-data"


@dataclass
class EvalSet:
    """A loaded (indexed, not decoded) evaluation set; iterate with :meth:`samples`."""

    root: str
    layout: str                      # "webdataset" or "imagefolder"
    classnames: List[str]
    templates: List[str]
    shards: List[str] = field(default_factory=list)        # webdataset layout
    files: List[Tuple[str, int]] = field(default_factory=list)  # imagefolder: (path, label)
    num_samples: Optional[int] = None  # known up front for imagefolder / shards with sizes.json

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, classname: str) -> List[str]:
        """The zero-shot prompts of one class (every template filled in)."""
        return [t.replace("{c}", classname) for t in self.templates]

    def samples(self) -> Iterator[Tuple[Image.Image, int, Optional[str]]]:
        """Yield ``(RGB PIL image, label, caption or None)`` in a fixed order."""
        if self.layout == "webdataset":
            for shard in self.shards:
                yield from _read_shard(shard, self.num_classes)
        else:
            for path, label in self.files:
                with Image.open(path) as im:
                    img = im.convert("RGB")
                cap_path = os.path.splitext(path)[0] + ".txt"
                caption = None
                if os.path.exists(cap_path):
                    with open(cap_path, encoding="utf-8") as f:
                        caption = f.read().strip() or None
                yield img, label, caption

    def __repr__(self) -> str:  # short: the default dataclass repr would list every file
        n = self.num_samples if self.num_samples is not None else "?"
        return (f"EvalSet(root={self.root!r}, layout={self.layout!r}, classes={self.num_classes}, "
                f"templates={len(self.templates)}, samples={n})")


def _read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def _split_key(name: str) -> Tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the file name, ext = the rest."""
    d, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (d + "/" + stem if d else stem), ext.lower()


def _decode_sample(shard: str, key: str, parts: dict, num_classes: int):
    img_bytes = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    if img_bytes is None:
        return None  # not an image sample (e.g. a stray metadata member): skipped
    if "cls" not in parts:
        raise DistillUsageError(
            f"{FLAG}: sample '{key}' in {shard} has an image but no '.cls' label; every sample of an "
            f"eval shard needs <key>.cls holding its integer class index")
    try:
        label = int(parts["cls"].decode("utf-8").strip())
    except ValueError:
        raise DistillUsageError(
            f"{FLAG}: sample '{key}' in {shard} has a non-integer '.cls' label; write the class index "
            f"(0-based line number in classnames.txt)") from None
    if not 0 <= label < num_classes:
        raise DistillUsageError(
            f"{FLAG}: sample '{key}' in {shard} has label {label} but classnames has {num_classes} "
            f"names; fix the label or the class-name file")
    with Image.open(io.BytesIO(img_bytes)) as im:
        img = im.convert("RGB")
    caption = parts["txt"].decode("utf-8").strip() if "txt" in parts else None
    return img, label, caption or None


def _read_shard(shard: str, num_classes: int):
    try:
        tar = tarfile.open(shard)
    except (OSError, tarfile.TarError) as e:
        raise DistillUsageError(f"{FLAG}: cannot read shard {shard} ({e}); pass a directory of valid "
                                f"webdataset .tar shards") from None
    with tar:
        cur_key, parts = None, {}
        for m in tar:
            if not m.isfile():
                continue
            key, ext = _split_key(m.name)
            if key != cur_key:
                if parts:
                    s = _decode_sample(shard, cur_key, parts, num_classes)
                    if s is not None:
                        yield s
                cur_key, parts = key, {}
            parts[ext] = tar.extractfile(m).read()
        if parts:
            s = _decode_sample(shard, cur_key, parts, num_classes)
            if s is not None:
                yield s


def _load_templates(root: str, templates_file: Optional[str]) -> List[str]:
    if templates_file is not None:
        if not os.path.isfile(templates_file):
            raise DistillUsageError(
                f"{FLAG}: templates file {templates_file} does not exist; pass an existing file with "
                f"one prompt template per line containing {{c}}")
        path = templates_file
    else:
        path = os.path.join(root, "templates.txt")
        if not os.path.isfile(path):
            return list(DEFAULT_TEMPLATES)
    templates = _read_lines(path)
    if not templates:
        raise DistillUsageError(f"{FLAG}: templates file {path} is empty; write one prompt template "
                                f"per line, e.g. 'a photo of a {{c}}.'")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise DistillUsageError(f"{FLAG}: template {bad[0]!r} in {path} has no '{{c}}' placeholder; "
                                f"every template must contain {{c}} where the class name goes")
    return templates


def load_eval_set(path: str, classnames_file: Optional[str] = None,
                  templates_file: Optional[str] = None) -> EvalSet:
    """Index the evaluation set at ``path`` (see the module docstring for the two layouts)."""
    if path is None or not str(path).strip():
        raise DistillUsageError(f"{FLAG}: no path given; pass a directory with classnames.txt and "
                                f"*.tar shards, or an ImageFolder directory")
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(root):
        raise DistillUsageError(f"{FLAG}: {path} does not exist; pass a directory with classnames.txt "
                                f"and *.tar shards (or class sub-folders of images)")
    if not os.path.isdir(root):
        raise DistillUsageError(f"{FLAG}: {path} is not a directory; pass the directory that holds "
                                f"classnames.txt and the *.tar shards, not a file")
    templates = _load_templates(root, templates_file)
    entries = sorted(os.listdir(root))
    shards = [os.path.join(root, e) for e in entries if e.endswith(".tar")]
    if shards:
        cn_path = classnames_file or os.path.join(root, "classnames.txt")
        if not os.path.isfile(cn_path):
            raise DistillUsageError(
                f"{FLAG}: class-name file {cn_path} not found; write one class name per line (line "
                f"index = the label in .cls) or pass the class-name file explicitly")
        classnames = _read_lines(cn_path)
        if not classnames:
            raise DistillUsageError(f"{FLAG}: class-name file {cn_path} is empty; write one class "
                                    f"name per line")
        num = None
        sizes_path = os.path.join(root, "sizes.json")
        if os.path.isfile(sizes_path):
            try:
                with open(sizes_path) as f:
                    sizes = json.load(f)
                num = sum(int(sizes[os.path.basename(s)]) for s in shards)
            except (ValueError, KeyError, TypeError, OSError):
                num = None
        return EvalSet(root, "webdataset", classnames, templates, shards=shards, num_samples=num)

    class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    files: List[Tuple[str, int]] = []
    used_dirs = []
    for d in class_dirs:
        imgs = sorted(f for f in os.listdir(os.path.join(root, d))
                      if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTS)
        if imgs:
            used_dirs.append((d, imgs))
    if not used_dirs:
        raise DistillUsageError(
            f"{FLAG}: {path} has no *.tar shards and no class sub-folders with images; pass a "
            f"directory with classnames.txt + webdataset shards, or <class>/<image>.png folders")
    if classnames_file is not None:
        if not os.path.isfile(classnames_file):
            raise DistillUsageError(f"{FLAG}: class-name file {classnames_file} does not exist; pass "
                                    f"an existing file with one class name per line")
        classnames = _read_lines(classnames_file)
        if len(classnames) != len(used_dirs):
            raise DistillUsageError(
                f"{FLAG}: class-name file {classnames_file} has {len(classnames)} names but {path} has "
                f"{len(used_dirs)} class folders; list one name per folder in sorted folder order")
    else:
        classnames = [d.replace("_", " ") for d, _ in used_dirs]
    for label, (d, imgs) in enumerate(used_dirs):
        files.extend((os.path.join(root, d, f), label) for f in imgs)
    return EvalSet(root, "imagefolder", classnames, templates, files=files, num_samples=len(files))
