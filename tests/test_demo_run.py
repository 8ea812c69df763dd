"""The demo end to end in its quick form (a few steps of every phase), the shipped teacher asset,
and the teacher-training helper around OpenCLIP's trainer."""
import json
import logging
import os

import pytest
import torch

from openclip_distill.demo import teacher as T


def test_quick_demo_runs_every_phase(tmp_path):
    from openclip_distill.demo.run import run_demo

    n_handlers = len(logging.getLogger().handlers)
    res = run_demo(logs=str(tmp_path), name="q", quick=True)
    path = tmp_path / "q" / "demo_results.json"
    assert path.exists()
    saved = json.loads(path.read_text())
    assert set(saved) == {"teacher", "student", "baseline"}
    for who in ("teacher", "student", "baseline"):
        for key in ("zeroshot_top1", "i2t_r1", "t2i_r1", "params", "images_per_s"):
            assert key in saved[who], (who, key)
        assert 0.0 <= saved[who]["zeroshot_top1"] <= 1.0
        assert saved[who]["params"] > 0 and saved[who]["images_per_s"] > 0
        assert os.path.isfile(saved[who]["checkpoint"])
    assert saved["student"]["params"] == saved["baseline"]["params"] < saved["teacher"]["params"]
    assert saved["student"]["steps"] == saved["baseline"]["steps"] > 0
    assert "student_over_teacher" in saved["student"] and "target_met" in saved["student"]
    assert res["student"]["zeroshot_top1"] == saved["student"]["zeroshot_top1"]
    # the student checkpoint loads with plain open_clip
    import open_clip

    open_clip.create_model_and_transforms("demo-student", pretrained=saved["student"]["checkpoint"])
    # OpenCLIP's trainer handlers were removed again
    assert len(logging.getLogger().handlers) <= n_handlers + 1
    # a second run with the same name is refused, not overwritten
    from openclip_distill.errors import DistillUsageError

    with pytest.raises(DistillUsageError, match="--name"):
        run_demo(logs=str(tmp_path), name="q", quick=True)


@pytest.mark.skipif(not os.path.isfile(T.ASSET_PATH), reason="teacher asset not shipped")
def test_shipped_teacher_asset_loads_weights_only():
    import open_clip

    sd = torch.load(T.ASSET_PATH, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    model, _, _ = open_clip.create_model_and_transforms(T.TEACHER_MODEL, pretrained=T.ASSET_PATH)
    ref = {k: v.float() for k, v in sd.items()}
    got = model.state_dict()
    assert all(torch.equal(got[k].float(), ref[k]) for k in ref)


def test_export_state_dict_roundtrip(tmp_path):
    import open_clip

    model = open_clip.create_model("test-tiny-student")
    ck = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, ck)
    out = T.export_state_dict(str(ck), str(tmp_path / "out.pt"))
    sd = torch.load(out, weights_only=True)
    assert set(sd) == set(model.state_dict())
    assert all(v.dtype in (torch.float16, torch.int64, torch.long) for v in sd.values())
    m2, _, _ = open_clip.create_model_and_transforms("test-tiny-student", pretrained=out)
    w = model.state_dict()["visual.conv1.weight"]
    assert torch.allclose(m2.state_dict()["visual.conv1.weight"], w.half().float())


def test_preserve_logging_restores_handlers_and_levels():
    root = logging.getLogger()
    before = list(root.handlers)
    lg = logging.getLogger("some.library")
    lg.setLevel(logging.WARNING)
    with T.preserve_logging():
        root.addHandler(logging.StreamHandler())
        lg.setLevel(logging.INFO)
    assert root.handlers == before and lg.level == logging.WARNING
