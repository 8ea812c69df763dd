"""``check``: apply a series to a copy of OpenCLIP's sources, run its tests and the parity comparison."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from .apply import apply_patch, is_mailbox_patch
from .series import MAIN_BASE_COMMIT, series_patches, series_test_files
from .source_tree import copy_checkout, copy_installed_package, head_commit, is_git_checkout
from .summary import Step, timed
from .upstream_tests import MORE_TASK_TESTS, UPSTREAM_TESTS, patched_env, run_pytest


def _parity_steps(series: str, tree: Path, timeout: float = 900) -> List[Step]:
    cmd = [sys.executable, "-m", "openclip_distill.patches.parity", series, str(tree)]
    with timed() as elapsed:
        try:
            res = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=patched_env(tree),
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return [Step("parity with openclip_distill", False, f"timed out after {timeout:.0f}s", timeout)]
    rows = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not rows:
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        run = Step("parity with openclip_distill", False, f"exit {res.returncode}: {err}", elapsed())
    else:
        run = Step("parity with openclip_distill", True, f"{len(rows)} comparisons (float64 patched vs fp32 ours)",
                   elapsed())
    return [run] + [Step(f"parity: {r['name']}", r["ok"], r["detail"]) for r in rows]


def run_check(source: Optional[str] = None, series: Optional[str] = None, workdir: Optional[str] = None,
              upstream_tests: Optional[List[str]] = None, all_task_tests: bool = False) -> List[Step]:
    """Check ``series`` (default: ``main`` with ``source``, else ``v3.3`` on the installed open_clip).

    ``upstream_tests`` overrides the OpenCLIP test files to run (default ``UPSTREAM_TESTS[series]``, plus
    ``MORE_TASK_TESTS`` on main with ``all_task_tests``).

    Returns the steps; a DistillUsageError (missing folder, patch that does not apply) stops early.
    """
    series = series or ("main" if source else "v3.3")
    patches = series_patches(series)
    if upstream_tests is None:
        upstream_tests = list(UPSTREAM_TESTS[series])
        if all_task_tests and series == "main":
            upstream_tests += MORE_TASK_TESTS
    steps = []
    with tempfile.TemporaryDirectory(prefix="openclip-patches-", dir=workdir) as tmp:
        tree = Path(tmp) / "open_clip"
        with timed() as elapsed:
            if source:
                copy_checkout(Path(source), tree)
                head = head_commit(tree)
                where = f"{source} (HEAD {head[:12]})" if head else f"{source} (not a git checkout)"
                if series == "main" and head and head != MAIN_BASE_COMMIT:
                    where += f"; the series was made against {MAIN_BASE_COMMIT[:12]}"
            else:
                import open_clip
                copy_installed_package(tree)
                where = f"installed open_clip {open_clip.__version__} ({Path(open_clip.__file__).parent})"
        steps.append(Step("copy sources", True, where, elapsed()))

        in_git = is_git_checkout(tree)
        base = MAIN_BASE_COMMIT if series == "main" else ""
        for patch in patches:
            with timed() as elapsed:
                how = apply_patch(tree, patch, in_git and is_mailbox_patch(patch), base)
            steps.append(Step(f"apply {series}/{patch.name}", True, how, elapsed()))

        own_tests = series_test_files(patches)
        if own_tests:
            with timed() as elapsed:
                ok, detail = run_pytest(tree, own_tests)
            steps.append(Step(f"series tests: {' '.join(own_tests)}", ok, detail, elapsed()))
        if source:
            for test_file in upstream_tests:
                with timed() as elapsed:
                    ok, detail = run_pytest(tree, [test_file])
                steps.append(Step(f"upstream {test_file}", ok, detail, elapsed()))
        steps += _parity_steps(series, tree)
    return steps
