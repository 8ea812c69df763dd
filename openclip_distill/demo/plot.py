"""The demo's picture, ``demo_results.png``: zero-shot top-1 and retrieval R@1 bars of teacher, student
and baseline (left) and the student's distillation loss per step from ``losses.jsonl`` (right).

matplotlib is an optional extra (``pip install 'openclip_distill[plot]'``); without it the demo says
so and carries on.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

MODELS = ("teacher", "student", "baseline")
METRICS = (("zeroshot_top1", "zero-shot top-1"), ("i2t_r1", "I->T R@1"), ("t2i_r1", "T->I R@1"))
COLORS = {"teacher": "#4c72b0", "stage1": "#f2c45f", "student": "#dd8452", "baseline": "#8c8c8c"}


def read_losses(path: str) -> List[dict]:
    """Rows of a run's ``losses.jsonl`` (``step``, ``loss`` and the loss terms), [] if there is none."""
    if not path or not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_demo_results(results: Dict[str, dict], out_path: str, losses: Optional[List[dict]] = None,
                      models: Sequence[str] = MODELS, metrics: Sequence[Tuple[str, str]] = METRICS) -> str:
    """Draw the bars of ``metrics`` (key, label) of ``models`` in ``results`` (``{who: {metric: value in
    [0, 1]}}``) and the loss curve of ``losses`` into ``out_path`` (PNG). Raises ImportError without
    matplotlib. Returns ``out_path``."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11 + max(0, len(metrics) - 3), 4.2), dpi=100)
    who = [w for w in models if w in results]
    width = 0.8 / max(1, len(who))
    top = 100.0
    for j, w in enumerate(who):
        xs = [i + (j - (len(who) - 1) / 2) * width for i in range(len(metrics))]
        vals = [100 * float(results[w].get(k) or 0.0) for k, _ in metrics]
        top = max([top] + vals)
        rects = bars.bar(xs, vals, width, label=w, color=COLORS.get(w))
        bars.bar_label(rects, fmt="%.1f", fontsize=7, padding=1)
    bars.set_xticks(range(len(metrics)), [label for _, label in metrics], fontsize=8)
    bars.set_ylabel("%")
    bars.set_ylim(0, 1.18 * top)  # headroom for the legend above the bars
    bars.set_title("evaluation (demo eval split)")
    bars.legend(loc="upper center", ncol=len(who), fontsize=8)
    if losses:
        steps = [r["step"] for r in losses]
        # every term of any row (the stages of a multi-stage run log different terms)
        terms = [k for k in dict.fromkeys(k for r in losses for k in r)
                 if k.endswith("_loss") and any(r.get(k, 0) > 0 for r in losses)]
        curve.plot(steps, [r["loss"] for r in losses], color="black", lw=1.5, label="total")
        for k in terms:  # terms switched off (weight 0) are left out
            rows = [r for r in losses if k in r]
            curve.plot([r["step"] for r in rows], [r[k] for r in rows], lw=1, alpha=0.8, label=k)
        if all(r[k] > 0 for r in losses for k in terms + ["loss"] if k in r):
            curve.set_yscale("log")
        curve.legend(fontsize=8)
    else:
        curve.text(0.5, 0.5, "no losses.jsonl", ha="center", va="center", transform=curve.transAxes)
    curve.set_xlabel("step")
    curve.set_ylabel("loss")
    curve.set_title("student distillation loss")
    fig.tight_layout()
    fig.savefig(out_path, format="png")
    plt.close(fig)
    return out_path


def save_demo_plot(results: Dict[str, dict], run_dir: str, losses_path: Optional[str] = None,
                   **what) -> Optional[str]:
    """``<run_dir>/demo_results.png`` (see :func:`plot_demo_results`), or None with a log line when
    matplotlib is missing; ``what``: ``models`` / ``metrics`` of :func:`plot_demo_results`."""
    out = os.path.join(run_dir, "demo_results.png")
    try:
        return plot_demo_results(results, out, read_losses(losses_path), **what)
    except ImportError:
        logging.getLogger("openclip_distill.demo").warning(
            "[demo] matplotlib is not installed, so no demo_results.png (pip install 'openclip_distill[plot]')")
        return None
