"""The upstream patches apply to the installed OpenCLIP and compute what this package computes."""
import glob
import os
import shutil
import subprocess
import sys

import open_clip

PATCHES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "patches", "*.patch")))

CHECK = r'''
import sys, torch
import open_clip as patched
assert patched.__file__.startswith(sys.argv[1]), patched.__file__
import openclip_distill
from openclip_distill import DimeFMLoss
g = torch.Generator().manual_seed(0)
v_s, v_t = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
t_t, t_s = torch.randn(9, 16, generator=g), torch.randn(9, 16, generator=g)
kw = dict(vl_weight=0.6, pvl_weight=0.3, udist_weight=0.1)
for text in (None, t_s):
    ours = DimeFMLoss(impl="naive", **kw)(v_s, v_t, t_t, text_features=text, output_dict=True)
    theirs = patched.DimeFMLoss(**kw)(v_s, v_t, t_t, text_features=text, output_dict=True)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
# DistillClipLoss accepts a SigLIP teacher's bias and ignores it (softmax shift invariance)
x = [torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(4)]
loss = patched.DistillClipLoss()
a = loss(x[0], x[1], 10.0, x[2], x[3], 10.0, dist_logit_bias=torch.tensor(-10.0))
b = loss(x[0], x[1], 10.0, x[2], x[3], 10.0)
for u, v in zip(a, b):
    torch.testing.assert_close(u, v)
print("ok")
'''


def test_patches_apply_and_match_the_package(tmp_path):
    assert PATCHES
    shutil.copytree(os.path.dirname(open_clip.__file__), tmp_path / "src" / "open_clip")
    for p in PATCHES:
        res = subprocess.run(["git", "apply", os.path.abspath(p)], cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    res = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
