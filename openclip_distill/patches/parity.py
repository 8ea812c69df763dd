"""Patched OpenCLIP losses vs this package's: values and gradients on random inputs.

Run in a subprocess whose ``PYTHONPATH`` puts the patched tree first (``check.py`` does this):

    python -m openclip_distill.patches.parity {main|v3.3} TREE

prints one JSON object per comparison: ``{"name", "ok", "detail"}``. The patched losses run in float64;
this package's implementations compute in fp32 whatever the input dtype, so a comparison passes when
every value and gradient agrees to ``REL_TOL`` relative to its own norm: fp32 rounding of logits at
scale 100 is ~1e-5 absolute and the largest error seen is ~2e-5 relative, while a wrong formula is off
by O(1).
"""
import json
import sys
from pathlib import Path

import torch

REL_TOL = 5e-4


def _rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-3))


def _inputs(seed, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def _evaluate(fn, inputs, keys):
    """``fn(*leaves)`` -> dict of outputs; returns ``(values dict, grads of sum(keys) per input)``."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    sum(out[k] for k in keys).backward()
    return {k: out[k].detach() for k in out}, [x.grad for x in leaves]


def _compare(name, theirs_fn, ours_fn, inputs, keys):
    """Patched in float64, ours on float32 copies; the largest relative error over values and grads."""
    theirs, theirs_grads = _evaluate(theirs_fn, inputs, keys)
    ours, ours_grads = _evaluate(ours_fn, [x.float() for x in inputs], keys)
    errs = [_rel_err(ours[k], theirs[k]) for k in keys]
    for o, t in zip(ours_grads, theirs_grads):
        if o is not None or t is not None:  # a gradient on one side only is a mismatch
            errs.append(_rel_err(o, t) if o is not None and t is not None else float("inf"))
    worst = max(errs)
    ok = worst <= REL_TOL and all(torch.isfinite(theirs[k]) for k in keys)
    return {"name": name, "ok": bool(ok),
            "detail": f"max rel err {worst:.1e} over {len(keys)} values + {len(errs) - len(keys)} grads"}


def _call(cls_name, chunk):
    return f"{cls_name}(chunk_size={chunk})" if chunk else f"{cls_name}()"


def _normalized(*xs):
    return [torch.nn.functional.normalize(x, dim=-1) for x in xs]


def compare_dime_fm(patched, chunk_sizes):
    from openclip_distill import DimeFMLoss as OurDimeFM

    v_s, v_t, t_t, t_s = _inputs(0, (12, 16), (12, 16), (17, 16), (17, 16))
    kw = dict(vl_weight=0.6, pvl_weight=0.3, udist_weight=0.1)
    keys = ("vl_loss", "pvl_loss", "udist_loss")
    results = []
    for chunk in chunk_sizes:
        theirs_kw = dict(kw, chunk_size=chunk) if chunk else kw
        for impl in ("naive", "chunked"):
            for with_text in (False, True):
                def theirs(a, b, c, d):
                    return patched.DimeFMLoss(**theirs_kw)(a, b.detach(), c.detach(),
                                                           text_features=d if with_text else None, output_dict=True)

                def ours(a, b, c, d):
                    return OurDimeFM(impl=impl, **kw)(a, b, c, text_features=d if with_text else None,
                                                      output_dict=True)

                name = (f"{_call('DimeFMLoss', chunk)} vs ours impl={impl}, "
                        f"{'student' if with_text else 'teacher'} texts, 12 images x 17 texts")
                results.append(_compare(name, theirs, ours, [v_s, v_t, t_t, t_s], keys))
    return results


def compare_clip_loss(patched, chunk_sizes):
    from openclip_distill.kernels import contrastive_loss

    img, txt = _normalized(*_inputs(1, (20, 16), (20, 16)))
    scale = torch.tensor(30.0, dtype=torch.float64)
    results = []
    for chunk in chunk_sizes:
        for impl in ("naive", "chunked"):
            def theirs(i, t, s):
                return {"contrastive_loss": patched.ClipLoss(chunk_size=chunk)(i, t, s)}

            def ours(i, t, s):
                return {"contrastive_loss": contrastive_loss(i, t, s, impl=impl)}

            results.append(_compare(f"{_call('ClipLoss', chunk)} vs ours contrastive_loss impl={impl}",
                                    theirs, ours, [img, txt, scale], ("contrastive_loss",)))
    return results


def compare_distill_clip_loss(patched, chunk_sizes):
    from openclip_distill import ClipDistillLoss

    img, txt, d_img, d_txt = _normalized(*_inputs(2, (20, 16), (20, 16), (20, 24), (20, 24)))
    scale, d_scale = torch.tensor(20.0, dtype=torch.float64), torch.tensor(50.0, dtype=torch.float64)
    keys = ("contrastive_loss", "distill_loss")
    results = []
    for chunk in chunk_sizes:
        for impl in ("naive", "chunked"):
            def theirs(i, t, s, di, dt):
                return patched.DistillClipLoss(chunk_size=chunk)(i, t, s, di.detach(), dt.detach(), d_scale,
                                                                 output_dict=True)

            def ours(i, t, s, di, dt):
                return ClipDistillLoss(impl=impl)(i, t, s, di, dt, d_scale.float(), output_dict=True)

            results.append(_compare(f"{_call('DistillClipLoss', chunk)} vs ours ClipDistillLoss impl={impl}",
                                    theirs, ours, [img, txt, scale, d_img, d_txt], keys))
    return results


def compare_distill_teacher_bias(patched):
    """v3.3 patch: DistillClipLoss accepts a SigLIP teacher's logit bias and ignores it (softmax shift)."""
    from openclip_distill import ClipDistillLoss

    img, txt, d_img, d_txt = _normalized(*_inputs(3, (8, 16), (8, 16), (8, 16), (8, 16)))
    bias = torch.tensor(-10.0, dtype=torch.float64)
    keys = ("contrastive_loss", "distill_loss")

    def theirs(i, t, di, dt):
        return patched.DistillClipLoss()(i, t, 10.0, di.detach(), dt.detach(), 10.0, dist_logit_bias=bias,
                                         output_dict=True)

    def ours(i, t, di, dt):
        return ClipDistillLoss(impl="naive")(i, t, 10.0, di, dt, 10.0, dist_logit_bias=bias.float(), output_dict=True)

    return [_compare("DistillClipLoss(dist_logit_bias=-10) vs ours ClipDistillLoss", theirs, ours,
                     [img, txt, d_img, d_txt], keys)]


def run(series: str, tree: Path):
    import open_clip as patched

    if not Path(patched.__file__).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"imported open_clip from {patched.__file__}, not from the patched tree {tree}")
    if series == "main":
        return (compare_clip_loss(patched, (0, 7)) + compare_distill_clip_loss(patched, (0, 7)) +
                compare_dime_fm(patched, (0, 5)))
    return compare_dime_fm(patched, (0,)) + compare_distill_teacher_bias(patched)


def main(argv=None):
    series, tree = (argv if argv is not None else sys.argv[1:])
    for result in run(series, Path(tree)):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
