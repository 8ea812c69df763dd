"""Real English sentences that ship with Python itself (and, optionally, with installed packages).

Offline and deterministic: no download, no generation. Sources (``SOURCES``):

* ``python-docs`` -- the Python language reference and library topics bundled for ``help()``
  (``pydoc_data.topics``);
* ``stdlib-docstrings`` -- module, class and function docstrings of the standard library's ``.py``
  files, read with ``ast`` (nothing is imported);
* ``stdlib-comments`` -- comment blocks of the same files (consecutive ``#`` lines joined);
* any installed package named with ``packages=`` (``--packages numpy,torch``): the docstrings of
  its ``.py`` files, located with ``importlib.util.find_spec`` (not imported).

The ``test``/``tests``/``idle_test`` directories and ``site-packages`` are skipped. Text is cut into
paragraphs, paragraphs into sentences (``. ! ?`` followed by a capital letter, except after common
abbreviations such as ``e.g.``), and a sentence is kept when it looks like prose: 5-40 words and
30-250 characters, starts with a capital letter, ends with ``. ! ?``, has no code markers (``>>>``,
``=``, brackets, ``::``, ``__``, ``name(``) nor URLs, and at least 85% of its characters are
letters or spaces. Duplicates (case-insensitive, after whitespace normalisation) are dropped.

Split: a sentence is held out when ``sha1(sentence) mod 10**6 < heldout_fraction * 10**6`` -- a
property of the sentence alone, so the two sets are disjoint and a sentence stays on the same side
when sources are added. Both sets are ordered by that hash (a fixed pseudo-random order, not grouped
by module). Counts depend on the Python version (and package versions); for one interpreter the
output is byte-for-byte the same on every run.

CLI: ``python -m openclip_distill.data.real_sentences --out DIR [--heldout-fraction 0.05]
[--packages numpy,torch]`` writes ``DIR/train.txt`` and ``DIR/heldout.txt`` (one sentence a line),
which ``--train-texts DIR/train.txt`` reads directly.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import io
import os
import re
import sys
import sysconfig
import time
import tokenize
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..atomic_files import atomic_open
from ..errors import DistillUsageError

SOURCES = ("python-docs", "stdlib-docstrings", "stdlib-comments")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
MIN_CHARS, MAX_CHARS = 30, 250
MIN_WORDS, MAX_WORDS = 5, 40
MIN_PROSE_RATIO = 0.85  # letters + spaces over all characters
ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "mr.", "mrs.", "dr.", "no.", "st.", "approx."})

_CODE_MARKERS = re.compile(r">>>|[=<>{}\[\]|\\`@#$^~]|::|__|\w\(|https?:|www\.|\.py\b|\.\.\.")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[A-Z])")
_BULLET = re.compile(r"^(?:[*\-+\u2022]|\(?\d+[.)]|\(?[a-z][.)])\s+")


# ----------------------------------------------------------------------------------- sources
def _python_files(root: str) -> Iterator[str]:
    """Every ``.py`` file under ``root`` in sorted order, skipping test and site-packages dirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _read_source(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def docstrings_of(source: str) -> List[str]:
    """Module, class and function docstrings of one Python source text ([] if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) for doc in [ast.get_docstring(node)] if doc]


def comment_blocks_of(source: str) -> List[str]:
    """Runs of ``#`` comments on consecutive lines, each joined into one paragraph."""
    blocks: List[str] = []
    current: List[str] = []
    last_line = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            if tok.start[0] != last_line + 1 and current:
                blocks.append(" ".join(current))
                current = []
            current.append(tok.string.lstrip("#!").strip())
            last_line = tok.start[0]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if current:
        blocks.append(" ".join(current))
    return blocks


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def package_root(name: str) -> str:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DistillUsageError(
            f"--packages: {name!r} is not an installed package; name top-level packages that "
            f"`python -c 'import {name}'` finds, e.g. --packages numpy,torch")
    return sorted(spec.submodule_search_locations)[0]


def source_texts(source: str) -> Iterator[str]:
    """Raw texts (paragraph groups) of one source name; see the module docstring."""
    if source == "python-docs":
        from pydoc_data.topics import topics
        for key in sorted(topics):
            yield topics[key]
    elif source in ("stdlib-docstrings", "stdlib-comments"):
        extract = docstrings_of if source == "stdlib-docstrings" else comment_blocks_of
        for path in _python_files(stdlib_root()):
            text = _read_source(path)
            if text is not None:
                yield from extract(text)
    elif source.startswith("package:"):
        for path in _python_files(package_root(source[len("package:"):])):
            text = _read_source(path)
            if text is not None:
                yield from docstrings_of(text)
    else:
        raise DistillUsageError(f"unknown sentence source {source!r}; use one of {', '.join(SOURCES)}")


# ------------------------------------------------------------------------- cutting, filtering
def split_sentences(text: str) -> List[str]:
    """Paragraphs (blank-line separated), whitespace-joined, cut at sentence ends."""
    out: List[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        if not paragraph:
            continue
        pieces = _SENTENCE_END.split(paragraph)
        merged: List[str] = []
        for piece in pieces:
            if merged and merged[-1].rsplit(" ", 1)[-1].lower() in ABBREVIATIONS:
                merged[-1] = merged[-1] + " " + piece
            else:
                merged.append(piece)
        out.extend(merged)
    return out


def clean_sentence(sentence: str) -> Optional[str]:
    """The sentence with a leading bullet removed, or None when it does not look like prose."""
    s = _BULLET.sub("", sentence.strip()).strip()
    if not (MIN_CHARS <= len(s) <= MAX_CHARS) or not (MIN_WORDS <= len(s.split()) <= MAX_WORDS):
        return None
    if not (s[0].isupper() and s[0].isalpha()) or s[-1] not in ".!?":
        return None
    if _CODE_MARKERS.search(s):
        return None
    prose = sum(c.isalpha() or c == " " for c in s)
    if prose < MIN_PROSE_RATIO * len(s):
        return None
    return s


def collect_sentences(sources: Sequence[str] = SOURCES, packages: Sequence[str] = ()) -> Tuple[List[str], Dict[str, int]]:
    """Cleaned, de-duplicated sentences of all sources (first occurrence kept, source order) and
    the number each source contributed."""
    seen = set()
    kept: List[str] = []
    per_source: Dict[str, int] = {}
    for source in list(sources) + [f"package:{p}" for p in packages]:
        before = len(kept)
        for text in source_texts(source):
            for raw in split_sentences(text):
                s = clean_sentence(raw)
                if s is None:
                    continue
                key = s.lower()
                if key not in seen:
                    seen.add(key)
                    kept.append(s)
        per_source[source] = len(kept) - before
    return kept, per_source


def sentence_hash(sentence: str) -> int:
    return int.from_bytes(hashlib.sha1(sentence.encode("utf-8")).digest()[:8], "big")


def split_train_heldout(sentences: Iterable[str], heldout_fraction: float = 0.05) -> Tuple[List[str], List[str]]:
    """Disjoint (train, held-out) lists, each ordered by ``sentence_hash``; a sentence is held out
    when ``sentence_hash mod 10**6 < heldout_fraction * 10**6``."""
    if not 0.0 < heldout_fraction < 1.0:
        raise DistillUsageError(f"--heldout-fraction must be in (0, 1), got {heldout_fraction}")
    threshold = round(heldout_fraction * 10**6)
    keyed = sorted((sentence_hash(s), s) for s in set(sentences))
    train = [s for h, s in keyed if h % 10**6 >= threshold]
    heldout = [s for h, s in keyed if h % 10**6 < threshold]
    return train, heldout


def real_sentences(heldout_fraction: float = 0.05, sources: Sequence[str] = SOURCES,
                   packages: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(train, held-out) real sentences; see the module docstring."""
    sentences, _ = collect_sentences(sources, packages)
    return split_train_heldout(sentences, heldout_fraction)


def write_real_sentences(out_dir: str, heldout_fraction: float = 0.05, sources: Sequence[str] = SOURCES,
                         packages: Sequence[str] = ()) -> Dict[str, object]:
    """Write ``out_dir/train.txt`` and ``out_dir/heldout.txt``; returns a summary dict."""
    start = time.time()
    sentences, per_source = collect_sentences(sources, packages)
    train, heldout = split_train_heldout(sentences, heldout_fraction)
    os.makedirs(out_dir, exist_ok=True)
    for name, lines in (("train.txt", train), ("heldout.txt", heldout)):
        with atomic_open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
    return {"train": len(train), "heldout": len(heldout), "per_source": per_source,
            "seconds": time.time() - start, "out": out_dir}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openclip_distill.data.real_sentences",
        description="Write real English sentences from Python's own docs and sources (and optional "
                    "installed packages) as DIR/train.txt and DIR/heldout.txt, one sentence a line.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--heldout-fraction", type=float, default=0.05)
    parser.add_argument("--sources", default=",".join(SOURCES),
                        help=f"comma-separated subset of {', '.join(SOURCES)} (default: all)")
    parser.add_argument("--packages", default="",
                        help="comma-separated installed packages whose docstrings are added, e.g. numpy,torch")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    unknown = [s for s in sources if s not in SOURCES]
    try:
        if unknown:
            raise DistillUsageError(f"--sources: unknown {', '.join(unknown)}; use a subset of {','.join(SOURCES)}")
        packages = [p for p in args.packages.split(",") if p]
        summary = write_real_sentences(args.out, args.heldout_fraction, sources, packages)
    except DistillUsageError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    parts = ", ".join(f"{k}: {v}" for k, v in summary["per_source"].items())
    print(f"real_sentences: {summary['train']} train + {summary['heldout']} held-out sentences "
          f"({parts}) -> {args.out}/train.txt, heldout.txt in {summary['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
