"""Apply a patch series in order: ``git am`` for ``git format-patch`` files in a git checkout (one commit
per patch), ``git apply`` otherwise (a plain folder, or a bare diff such as the release patch)."""
import subprocess
from pathlib import Path

from ..errors import DistillUsageError

# git am needs an identity in the throw-away copy; the patches' own authors are kept.
_GIT_IDENTITY = ["-c", "user.name=openclip-distill-check", "-c", "user.email=check@localhost"]


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "fatal"))]
    return (errors or lines or ["(no output)"])[0]


def is_mailbox_patch(patch: Path) -> bool:
    """A ``git format-patch`` file (``From <sha> ...`` header), which ``git am`` can commit."""
    with open(patch) as f:
        return f.readline().startswith("From ")


def apply_patch(tree: Path, patch: Path, use_git_am: bool, base_commit: str = "") -> str:
    """Apply ``patch`` to ``tree``; return how. Raises DistillUsageError naming the patch and the fix."""
    if use_git_am:
        cmd = ["git", *_GIT_IDENTITY, "am", "--quiet", str(patch)]
    else:
        cmd = ["git", "apply", str(patch)]
    try:
        res = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    except FileNotFoundError:
        raise DistillUsageError("git not found: install git (the series is applied with git am / git apply)") \
            from None
    if res.returncode != 0:
        if use_git_am:
            subprocess.run(["git", "am", "--abort"], cwd=tree, capture_output=True)
        against = f"the recorded commit {base_commit[:12]}" if base_commit else "the open_clip release it targets"
        raise DistillUsageError(
            f"patch {patch.name} does not apply ({_first_error_line(res.stderr + res.stdout)}); "
            f"check out {against} (see patches/README.md) or rebase the series")
    return "git am" if use_git_am else "git apply"

