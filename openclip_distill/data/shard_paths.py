"""Turn user patterns (``::``-joined, brace and glob patterns) into file lists, with clear errors.

``'imgs/{00000..00009}.tar::more/*.tar'`` -> every brace expansion of every ``::`` part; a part
that is an existing path is taken as is, otherwise glob characters (``* ? [``) are expanded
(sorted, ``**`` allowed), a directory stands for its files with accepted extensions. Remote URLs
(``s3://``, ``http://``, ``pipe:``) are passed through unchecked. Anything that names no
existing local file is a :class:`DistillUsageError` naming the flag, so a typo fails at start-up
instead of after the first epoch.
"""
import ast
import glob
import json
import os
from typing import List, Optional, Sequence

import braceexpand

from ..errors import DistillUsageError

_GLOB_CHARS = ("*", "?", "[")


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def _dir_files(path: str, exts: Sequence[str]) -> List[str]:
    names = sorted(os.listdir(path))
    return [os.path.join(path, n) for n in names
            if os.path.isfile(os.path.join(path, n)) and n.lower().endswith(tuple(exts))]


def expand_patterns(patterns, flag: str, exts: Sequence[str], example: str) -> List[str]:
    """Expand ``patterns`` into a list of files (order: parts in order, each expansion sorted).

    ``exts``: extensions a directory is expanded to (and only those). ``example``: a valid value
    quoted in error messages. Duplicates are kept once (first occurrence).
    """
    if isinstance(patterns, (list, tuple)):
        patterns = "::".join(str(p) for p in patterns)
    if patterns is None or not str(patterns).strip():
        raise DistillUsageError(f"{flag} is required: pass files, brace or glob patterns joined with '::', "
                                f"e.g. {flag} '{example}'")
    files: List[str] = []
    for part in str(patterns).split("::"):
        part = part.strip()
        if not part:
            continue
        found, looked = [], []
        for path in braceexpand.braceexpand(part):
            path = os.path.expanduser(path)
            if is_remote(path):
                found.append(path)
            elif os.path.isfile(path):
                found.append(path)
            elif os.path.isdir(path):
                found.extend(_dir_files(path, exts))
                looked.append(f"{path}/*{{{','.join(exts)}}}")
            elif any(c in path for c in _GLOB_CHARS):
                found.extend(p for p in sorted(glob.glob(path, recursive=True)) if os.path.isfile(p))
                looked.append(path)
            else:
                looked.append(path)
        if not found:
            shown = ", ".join(repr(p) for p in looked[:3]) + (f" and {len(looked) - 3} more" if len(looked) > 3 else "")
            raise DistillUsageError(f"{flag}: no files found for {part!r} (looked for {shown or repr(part)}); "
                                    f"check the path, e.g. {flag} '{example}'")
        missing = [p for p in looked if not any(c in p for c in _GLOB_CHARS) and not os.path.exists(p)]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DistillUsageError(f"{flag}: {len(missing)} file(s) of {part!r} do not exist ({shown}); "
                                    f"fix the pattern or the range, e.g. {flag} '{example}'")
        files.extend(found)
    seen = set()
    unique = []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    if not unique:
        raise DistillUsageError(f"{flag} is empty: pass files, brace or glob patterns joined with '::', "
                                f"e.g. {flag} '{example}'")
    return unique


def dataset_size(shards: Sequence[str]) -> Optional[int]:
    """Number of samples in ``shards`` from ``sizes.json`` / ``__len__`` beside them, else None.

    Like OpenCLIP's ``get_dataset_size`` (``sizes.json`` maps shard basename -> count; ``__len__``
    holds the total of that directory), but per directory, so ``::``-joined sources from several
    directories are summed correctly. ``None`` if any directory has neither file or a shard is
    missing from its ``sizes.json``.
    """
    groups = {}
    for shard in shards:
        groups.setdefault(os.path.dirname(shard), []).append(shard)
    total = 0
    for directory, group in groups.items():
        sizes_file = os.path.join(directory, "sizes.json")
        len_file = os.path.join(directory, "__len__")
        if os.path.exists(sizes_file):
            with open(sizes_file, "r") as f:
                sizes = json.load(f)
            try:
                total += sum(int(sizes[os.path.basename(s)]) for s in group)
            except (KeyError, TypeError, ValueError):
                return None
        elif os.path.exists(len_file):
            with open(len_file, "r") as f:
                try:
                    total += int(ast.literal_eval(f.read().strip()))
                except (ValueError, SyntaxError, TypeError):
                    return None
        else:
            return None
    return total
