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

**Several languages.** A set can carry its prompts and captions in several languages:
``classnames.<lang>.txt`` / ``templates.<lang>.txt`` (``<lang>`` a short code such as ``en`` or
``zh``) and, per sample, a caption per language (``<key>.<lang>.txt`` in a shard, ``<image>.<lang>.txt``
beside an ImageFolder image). The languages of a set are those with a ``classnames.<lang>.txt`` or a
``templates.<lang>.txt`` (:func:`eval_languages`); a language without its own class-name (template)
file uses ``classnames.txt`` (``templates.txt``). ``load_eval_set(path, lang="zh")`` is the set seen
in one language (retrieval then uses that language's captions only); :func:`load_eval_sets` gives
one set per language and :func:`~openclip_distill.eval.evaluate_languages` reports each metric
suffixed with its language (``zeroshot_top1_zh``). A set without per-language files is one
unsuffixed set, as before.

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
import re
import tarfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from ..errors import DistillUsageError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
DEFAULT_TEMPLATES = ("{c}", "a photo of a {c}.")
FLAG = "--eval-data"
LANGUAGE_FILE = re.compile(r"^(classnames|templates)\.([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*)\.txt$")


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
    language: Optional[str] = None     # captions read from <key>.<language>.txt (None: <key>.txt)

    @property
    def caption_ext(self) -> str:
        return f"{self.language.lower()}.txt" if self.language else "txt"  # member names are lower-cased

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
                yield from _read_shard(shard, self.num_classes, self.caption_ext)
        else:
            for path, label in self.files:
                with Image.open(path) as im:
                    img = im.convert("RGB")
                cap_path = os.path.splitext(path)[0] + "." + self.caption_ext
                caption = None
                if os.path.exists(cap_path):
                    with open(cap_path, encoding="utf-8") as f:
                        caption = f.read().strip() or None
                yield img, label, caption

    def __repr__(self) -> str:  # short: the default dataclass repr would list every file
        n = self.num_samples if self.num_samples is not None else "?"
        lang = f", language={self.language!r}" if self.language else ""
        return (f"EvalSet(root={self.root!r}{lang}, layout={self.layout!r}, classes={self.num_classes}, "
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


def _decode_sample(shard: str, key: str, parts: dict, num_classes: int, caption_ext: str = "txt"):
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
    caption = parts[caption_ext].decode("utf-8").strip() if caption_ext in parts else None
    return img, label, caption or None


def _read_shard(shard: str, num_classes: int, caption_ext: str = "txt"):
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
                    s = _decode_sample(shard, cur_key, parts, num_classes, caption_ext)
                    if s is not None:
                        yield s
                cur_key, parts = key, {}
            parts[ext] = tar.extractfile(m).read()
        if parts:
            s = _decode_sample(shard, cur_key, parts, num_classes, caption_ext)
            if s is not None:
                yield s


def _language_file(root: str, stem: str, lang: Optional[str]) -> str:
    """``root/<stem>.<lang>.txt`` when it exists, else ``root/<stem>.txt``."""
    if lang:
        path = os.path.join(root, f"{stem}.{lang}.txt")
        if os.path.isfile(path):
            return path
    return os.path.join(root, f"{stem}.txt")


def _load_templates(root: str, templates_file: Optional[str], lang: Optional[str] = None) -> List[str]:
    if templates_file is not None:
        if not os.path.isfile(templates_file):
            raise DistillUsageError(
                f"{FLAG}: templates file {templates_file} does not exist; pass an existing file with "
                f"one prompt template per line containing {{c}}")
        path = templates_file
    else:
        path = _language_file(root, "templates", lang)
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


def _eval_root(path) -> str:
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
    return root


def eval_languages(path: str) -> List[str]:
    """The languages of the set at ``path`` (sorted codes of its ``classnames.<lang>.txt`` and
    ``templates.<lang>.txt`` files); ``[]`` for a single-language set."""
    root = _eval_root(path)
    return sorted({m.group(2) for m in map(LANGUAGE_FILE.match, os.listdir(root)) if m})


def load_eval_set(path: str, classnames_file: Optional[str] = None,
                  templates_file: Optional[str] = None, lang: Optional[str] = None) -> EvalSet:
    """Index the evaluation set at ``path`` (see the module docstring for the two layouts), seen in
    language ``lang`` (its class names, templates and captions; ``None``: the plain files)."""
    root = _eval_root(path)
    if lang is not None and lang not in eval_languages(root):
        found = eval_languages(root)
        raise DistillUsageError(
            f"{FLAG}: {path} has no language {lang!r} (no classnames.{lang}.txt or templates.{lang}.txt); "
            f"its languages: {', '.join(found) if found else 'none (a single-language set)'}")
    templates = _load_templates(root, templates_file, lang)
    entries = sorted(os.listdir(root))
    shards = [os.path.join(root, e) for e in entries if e.endswith(".tar")]
    if shards:
        cn_path = classnames_file or _language_file(root, "classnames", lang)
        if not os.path.isfile(cn_path):
            langs = eval_languages(root) if lang is None else []
            if langs:
                raise DistillUsageError(
                    f"{FLAG}: {path} has class names per language only ({', '.join(langs)}); pick languages "
                    f"(--eval-languages, or lang= / load_eval_sets in Python) or add a plain classnames.txt")
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
        return EvalSet(root, "webdataset", classnames, templates, shards=shards, num_samples=num, language=lang)

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
    if classnames_file is None and lang and os.path.isfile(os.path.join(root, f"classnames.{lang}.txt")):
        classnames_file = os.path.join(root, f"classnames.{lang}.txt")
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
    return EvalSet(root, "imagefolder", classnames, templates, files=files, num_samples=len(files),
                   language=lang)


def parse_languages(value) -> Optional[List[str]]:
    """``"en,zh"`` / ``["en", "zh"]`` -> ``["en", "zh"]``; empty or ``None`` -> ``None`` (all languages)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    langs = [x.strip() for x in items if x and x.strip()]
    return langs or None


def load_eval_sets(path: str, classnames_file: Optional[str] = None, templates_file: Optional[str] = None,
                   languages: Optional[Sequence[str]] = None) -> Dict[Optional[str], EvalSet]:
    """One :class:`EvalSet` per language of ``path`` (``{lang: set}``, all its languages unless
    ``languages`` picks some), or ``{None: set}`` for a single-language set. A class-name / template
    override file names one language's words, so it needs exactly one language."""
    found = eval_languages(path)
    languages = parse_languages(languages)
    if languages is None:
        languages = found
    if not languages:
        return {None: load_eval_set(path, classnames_file, templates_file)}
    if len(languages) > 1 and (classnames_file or templates_file):
        raise DistillUsageError(
            f"{FLAG}: {path} has the languages {', '.join(languages)}, and a class-name/template override "
            f"file holds one language's words; pick that language with --eval-languages, or drop the override")
    return {lang: load_eval_set(path, classnames_file, templates_file, lang=lang) for lang in languages}
