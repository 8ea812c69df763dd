"""Run pytest files of the patched tree in a subprocess with that tree's ``src`` first on the path."""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

# OpenCLIP's own tests of the code each series touches: losses, the task objects, create_task, params.
# The 3.3 release has no loss or task tests (its tests download weights or need training data).
UPSTREAM_TESTS = {
    "main": (
        "tests/test_loss.py",
        "tests/test_siglip_chunked_loss.py",
        "tests/test_task_base_unit.py",
        "tests/test_task_specific_unit.py",
        "tests/test_factory_task.py",
        "tests/test_params.py",
    ),
    "v3.3": (),
}

# The remaining task tests on main (checkpointing, torch.compile, FSDP units, eval and CLAP tasks): they
# pass on the patched tree too but take minutes on a small CPU, so they run with --all-task-tests.
MORE_TASK_TESTS = (
    "tests/test_task_checkpoint.py",
    "tests/test_task_compile.py",
    "tests/test_task_fsdp_unit.py",
    "tests/test_eval_task.py",
    "tests/test_clap_task.py",
)

_COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped)")


def patched_env(tree: Path) -> Dict[str, str]:
    """Environment whose ``PYTHONPATH`` puts the patched ``src`` first, then this package's root."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = [str(tree / "src"), package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_pytest(tree: Path, files: List[str], timeout: float = 1800) -> Tuple[bool, str]:
    """``(passed, summary)`` of ``pytest files`` run in ``tree`` (files missing from the tree fail)."""
    missing = [f for f in files if not (tree / f).is_file()]
    if missing:
        return False, f"missing in the tree: {', '.join(missing)}"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    try:
        res = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=patched_env(tree), timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f}s"
    counts = ", ".join(f"{n} {kind}" for n, kind in _COUNTS.findall(res.stdout.splitlines()[-1] if res.stdout else ""))
    if res.returncode == 0:
        return True, counts or "passed"
    failed = [ln.split(" - ")[0] for ln in res.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    tail = "; ".join(failed[:3]) or (res.stderr.strip().splitlines() or ["pytest failed"])[-1]
    return False, f"{counts or 'pytest exit ' + str(res.returncode)}: {tail}"
