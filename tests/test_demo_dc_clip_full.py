"""The full DC-CLIP demo: run it with ``pytest -m slow`` (9-15 minutes on a 2-core CPU). It states the
demo's target, which the recipe does not yet meet reliably: with 1 loader worker a run gave the student
93.9% / 94.1% of the teacher (en / zh), with the 2 workers used here 89.1% / 89.0% and 89.5% / 89.4%
(README, "The DC-CLIP demo").

It checks the demo's claim on the held-out zh/en evaluation set: the two-stage student (feature
distillation from unpaired images and bilingual sentences, then contrastive alignment on a small
paired split) reaches >= 90% of the multilingual teacher's zero-shot top-1 in both languages and beats
the same architecture trained on the paired split alone for the same number of steps.
"""
import json

import pytest


@pytest.mark.slow
def test_full_dc_clip_demo_meets_its_target(tmp_path):
    from openclip_distill.demo.run_dc_clip import run_dc_clip_demo

    run_dc_clip_demo(logs=str(tmp_path), name="full", workers=2)
    res = json.loads((tmp_path / "full" / "demo_results.json").read_text(encoding="utf-8"))
    t, s, b = res["teacher"], res["student"], res["baseline"]
    for lang in ("en", "zh"):
        key = f"zeroshot_top1_{lang}"
        assert s[key] >= 0.9 * t[key], (lang, res)
        assert s[key] > b[key], (lang, res)
    assert s["target_met"] is True
    assert s["steps"] == b["steps"] and s["batch_size"] == b["batch_size"]
    assert s["params_visual"] < t["params_visual"]
