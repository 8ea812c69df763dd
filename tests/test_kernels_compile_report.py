"""Offline compile report: the kernels still compile for the GPU (sm_90a) with Triton's own compiler and
``ptxas``, use tensor-core MMA, have no atomics and spill no registers (first autotune config, bf16)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from openclip_distill.kernels import compile_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table_rows(stdout):
    rows = [line.strip().strip("|").split("|") for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| kernel ")]
    return [[cell.strip() for cell in row] for row in rows]


def test_every_kernel_compiles_for_sm90_without_spills_or_atomics():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "openclip_distill.kernels.compile_report", "--arch", "sm_90a",
                           "--configs", "first", "--dtypes", "bf16", "--dims", "768", "--fail-on-spills"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    assert sorted(r[0] for r in rows) == sorted(compile_report.KERNELS)
    for kernel, config, dtype, dim, registers, spills, shared, wgmma, atomics in rows:
        assert int(registers) <= 255 and int(spills) == 0 and int(shared) > 0, kernel
        assert wgmma == "yes" and atomics == "none", kernel


def test_atomic_kinds_are_read_from_ptx():
    ptx = "atom.global.gpu.acq_rel.add.f32 %f1, [%rd1], %f2;\n red.global.add.f32 [%rd2], %f3;\n mov.b32 %r1, 0;"
    assert compile_report.atomic_kinds(ptx) == ["atom.global.gpu.acq_rel.add.f32", "red.global.add.f32"]
    assert compile_report.atomic_kinds("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == []


def test_a_kernel_that_fails_to_compile_gives_exit_status_1(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(compile_report, "compile_variant", broken)
    status = compile_report.main(["--kernels", "infonce_grad_panel_kernel", "--configs", "first", "--dtypes", "bf16"])
    assert status == 1 and "FAILED: RuntimeError: PassManager::run failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--arch", "gfx942"], ["--dtypes", "fp8"], ["--kernels", "nope"]])
def test_bad_arguments_are_usage_errors(argv):
    with pytest.raises(SystemExit) as err:
        compile_report.main(argv)
    assert err.value.code == 2
