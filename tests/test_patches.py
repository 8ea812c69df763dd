"""The upstream patch series apply and compute what this package computes.

* release series (``patches/v3.3``) on a copy of the installed open_clip: always run;
* main series (``patches/main``) on an OpenCLIP checkout: run when ``OPENCLIP_SOURCE`` names one, e.g.
  ``OPENCLIP_SOURCE=~/open_clip pytest tests/test_patches.py`` (several minutes: OpenCLIP's own tests).
"""
import os
import shutil
import subprocess

import pytest
import torch

from openclip_distill import DimeFMLoss
from openclip_distill.errors import DistillUsageError
from openclip_distill.patches import run_check, series_patches
from openclip_distill.patches.__main__ import main as cli_main
from openclip_distill.patches.parity import _compare
from openclip_distill.patches.series import series_test_files
from openclip_distill.patches.summary import Step, format_table

OPENCLIP_SOURCE = os.environ.get("OPENCLIP_SOURCE")


def _failures(steps):
    return "\n" + format_table(steps)


def test_release_series_applies_to_installed_open_clip_and_matches():
    steps = run_check()
    assert all(s.ok for s in steps), _failures(steps)
    names = [s.name for s in steps]
    assert any(n.startswith("apply v3.3/0001-") for n in names)
    assert sum(n.startswith("parity:") for n in names) >= 5


@pytest.mark.skipif(not OPENCLIP_SOURCE, reason="set OPENCLIP_SOURCE to an OpenCLIP checkout (git clone of "
                                                "mlfoundations/open_clip at the commit in patches/README.md)")
def test_main_series_on_checkout():
    steps = run_check(source=OPENCLIP_SOURCE, series="main")
    assert all(s.ok for s in steps), _failures(steps)
    names = [s.name for s in steps]
    assert sum(n.startswith("apply main/") for n in names) == len(series_patches("main"))
    assert any(n == "upstream tests/test_loss.py" for n in names)
    assert any(n.startswith("series tests:") for n in names)


def test_main_series_adds_tests_in_openclip_style():
    tests = series_test_files(series_patches("main"))
    assert tests == ["tests/test_loss_registry.py", "tests/test_unpaired_distill.py", "tests/test_chunked_loss.py"]


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["check", "--source", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --source") and "no such folder" in err and "\n" not in err
    with pytest.raises(DistillUsageError, match="not an OpenCLIP checkout"):
        run_check(source=str(tmp_path))


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_patch_that_does_not_apply_names_the_patch(capsys):
    # the main series targets OpenCLIP's main branch, not the installed 3.3 release
    assert cli_main(["check", "--series", "main"]) == 2
    err = capsys.readouterr().err.strip()
    assert "patch 0001-" in err and "does not apply" in err and "rebase the series" in err
    assert "\n" not in err


def test_parity_comparison_detects_a_different_loss():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    keys = ("vl_loss", "pvl_loss", "udist_loss")

    def ours(a, b, c):
        return DimeFMLoss(impl="naive", udist_weight=0.1)(a, b, c, output_dict=True)

    def same(a, b, c):
        return DimeFMLoss(impl="naive", udist_weight=0.1)(a, b, c, output_dict=True)

    def other(a, b, c):  # a different temperature: a wrong formula must fail the comparison
        return DimeFMLoss(impl="naive", udist_weight=0.1, pvl_temperature=2.0)(a, b, c, output_dict=True)

    assert _compare("same", same, ours, inputs, keys)["ok"]
    assert not _compare("other", other, ours, inputs, keys)["ok"]


def test_summary_table_counts_failures():
    table = format_table([Step("a", True, "fine", 1.0), Step("b", False, "broken", 2.0)])
    assert "FAIL" in table and table.endswith("1 of 2 steps passed, 1 FAILED")


def test_patches_are_format_patch_files():
    for series in ("main", "v3.3"):
        for patch in series_patches(series):
            text = patch.read_text()
            assert "diff --git a/src/open_clip/" in text
    for patch in series_patches("main"):
        head = patch.read_text().splitlines()[:4]
        assert head[0].startswith("From ") and any(ln.startswith("Subject: [PATCH") for ln in head)
    res = subprocess.run(["git", "apply", "--stat", str(series_patches("main")[0])], capture_output=True, text=True)
    assert res.returncode == 0 and "loss_registry.py" in res.stdout
