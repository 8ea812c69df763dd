"""The demo picture: a PNG of sane size from a small results dict and a losses.jsonl, and no crash without
matplotlib."""
import json
import sys

import pytest

from openclip_distill.demo.plot import plot_demo_results, read_losses, save_demo_plot

RESULTS = {
    "teacher": {"zeroshot_top1": 0.95, "i2t_r1": 0.40, "t2i_r1": 0.30},
    "student": {"zeroshot_top1": 0.90, "i2t_r1": 0.35, "t2i_r1": 0.25},
    "baseline": {"zeroshot_top1": 0.10, "i2t_r1": 0.05, "t2i_r1": 0.04},
}


def _losses(path, n=30):
    with open(path, "w") as f:
        for s in range(n):
            f.write(json.dumps({"epoch": 0, "step": s, "vl_loss": 3.0 / (1 + s), "pvl_loss": 1.0 / (1 + s),
                                "loss": 4.0 / (1 + s)}) + "\n")
    return str(path)


def test_plot_is_a_png_of_sane_size(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image
    losses = read_losses(_losses(tmp_path / "losses.jsonl"))
    assert len(losses) == 30 and losses[3]["step"] == 3
    out = plot_demo_results(RESULTS, str(tmp_path / "demo_results.png"), losses)
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 2_000_000
    with Image.open(out) as im:
        assert im.size == (1100, 420)
        # not a blank canvas: the bars' colours are there
        colours = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
        assert (0xdd, 0x84, 0x52) in colours and (0x4c, 0x72, 0xb0) in colours


def test_save_demo_plot_without_losses_and_without_matplotlib(tmp_path, monkeypatch, caplog):
    pytest.importorskip("matplotlib")
    out = save_demo_plot(RESULTS, str(tmp_path), str(tmp_path / "missing.jsonl"))
    assert out == str(tmp_path / "demo_results.png") and (tmp_path / "demo_results.png").stat().st_size > 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert save_demo_plot(RESULTS, str(tmp_path / "x")) is None
    assert "matplotlib is not installed" in caplog.text
