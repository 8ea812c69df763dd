"""``benchmarks/gpu_check.py`` stays ready to run: its dry run (CPU, tiny sizes, kernels in Triton's
interpreter) goes through every section and every mode; misuse is a usage error."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def _run(args, interpreter):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("TRITON_INTERPRET", None)
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, SCRIPT] + args, env=env, capture_output=True, text=True, timeout=900)


def test_dry_run_goes_through_every_section_and_mode():
    proc = _run(["--dry-run", "--reps", "1"], interpreter=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for mode in ("paired", "rect-bi", "rows-only", "teacher_b", "self-sim", "self-sim-rows"):
        for dtype in ("float32", "bfloat16", "float16"):
            assert f"| {mode} | {dtype} |" in out, (mode, dtype)
    assert out.count("bitwise equal") == 2
    for impl in ("triton", "chunked", "naive"):
        assert f"| infonce | {impl} |" in out and f"| kl | {impl} |" in out
    assert "autotune choice" in out and "all checks passed" in out


def test_dry_run_without_the_interpreter_is_a_usage_error():
    proc = _run(["--dry-run"], interpreter=False)
    assert proc.returncode == 2 and "TRITON_INTERPRET=1" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_run_without_cuda_is_a_usage_error():
    proc = _run([], interpreter=False)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
