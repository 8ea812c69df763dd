"""A throw-away copy of the OpenCLIP sources to patch (the source itself is never modified)."""
import shutil
import subprocess
from pathlib import Path

from ..errors import DistillUsageError


def is_git_checkout(tree: Path) -> bool:
    return (tree / ".git").exists()


def copy_checkout(source: Path, dest: Path) -> Path:
    """Copy an OpenCLIP checkout (its ``src/open_clip`` is required) to ``dest``; return ``dest``."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DistillUsageError(f"--source {source}: no such folder; pass an OpenCLIP checkout "
                                f"(git clone https://github.com/mlfoundations/open_clip)")
    if not (source / "src" / "open_clip" / "__init__.py").is_file():
        raise DistillUsageError(f"--source {source}: not an OpenCLIP checkout (no src/open_clip/__init__.py); "
                                f"pass the repository root")
    shutil.copytree(source, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info"))
    return dest


def copy_installed_package(dest: Path) -> Path:
    """Lay out the installed ``open_clip`` package as ``dest/src/open_clip`` (the release series' target)."""
    import open_clip

    shutil.copytree(Path(open_clip.__file__).parent, dest / "src" / "open_clip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def head_commit(tree: Path) -> str:
    """``HEAD`` of a git checkout, or ``""`` (not a git checkout / git unavailable)."""
    if not is_git_checkout(tree):
        return ""
    res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""
