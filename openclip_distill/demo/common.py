"""Pieces the embedded demos (DIME-FM: :mod:`.run`, DC-CLIP: :mod:`.run_dc_clip`, DLIP: :mod:`.dlip_demo`)
share: the run directory and logging, the in-process CLI call, the last checkpoint of a run, the table,
publishing the results and the ``python -m`` entry point."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .teacher import preserve_logging

log = logging.getLogger("openclip_distill.demo")


def device_flags() -> List[str]:
    """``--device cpu`` when there is no GPU (OpenCLIP's trainer would otherwise ask for one)."""
    return [] if torch.cuda.is_available() else ["--device", "cpu"]


def start_demo_run(logs: Optional[str], name: Optional[str], workers: int, prefix: str,
                   quick: bool) -> Tuple[str, int]:
    """Create ``<logs>/<name>`` (a new directory: an existing one is a usage error) and set up INFO
    logging; returns (run directory, DataLoader workers clamped to the available cores)."""
    from ..errors import DistillUsageError

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), cpus))  # more loader processes than cores only slows a CPU run
    logs = os.path.abspath(os.path.expanduser(logs or "./logs"))
    name = name or time.strftime(f"{prefix}-%Y_%m_%d-%H_%M_%S") + ("-quick" if quick else "")
    run_dir = os.path.join(logs, name)
    if os.path.exists(run_dir):
        raise DistillUsageError(f"--name: {run_dir} already exists; choose a new --name for the demo")
    os.makedirs(run_dir)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    log.setLevel(logging.INFO)
    return run_dir, workers


def run_distill_cli(argv: Sequence[str], what: str, out_log: str) -> None:
    """``openclip_distill.main``'s run with ``argv``, in-process; RuntimeError naming ``what`` if it fails."""
    from ..distill import distill as distill_main

    threads = torch.get_num_threads()
    with preserve_logging():
        rc = distill_main(list(argv))
    torch.set_num_threads(threads)
    if rc != 0:
        raise RuntimeError(f"the {what} run failed (exit {rc}); see {out_log}")


def checkpoint_of_epoch(run_dir: str, epoch: Optional[int] = None) -> str:
    """``<run_dir>/checkpoints/epoch_<epoch>.pt`` (the last epoch's when ``epoch`` is None)."""
    folder = os.path.join(run_dir, "checkpoints")
    ckpts = [f for f in os.listdir(folder) if f.startswith("epoch_") and f.endswith(".pt") and f[6:-3].isdigit()]
    if epoch is None and ckpts:
        return os.path.join(folder, max(ckpts, key=lambda f: int(f[6:-3])))
    if epoch is not None and f"epoch_{epoch}.pt" in ckpts:
        return os.path.join(folder, f"epoch_{epoch}.pt")
    raise RuntimeError(f"no checkpoint {'' if epoch is None else f'epoch_{epoch}.pt '}written under {folder}")


def format_cells(row: Dict[str, float], cols: Sequence[Tuple[str, str, bool]], width: int = 17) -> str:
    """One table row: percentages for ``pct`` columns, millions for ``params*``, integers otherwise."""
    cells = []
    for key, _, pct in cols:
        v = row.get(key)
        if v is None:
            cells.append(f"{'-':>{width}}")
        elif pct:
            cells.append(f"{100 * v:>{width - 1}.1f}%")
        elif key.startswith("params"):
            cells.append(f"{v / 1e6:>{width - 1}.2f}M")
        else:
            cells.append(f"{v:>{width}.0f}")
    return "".join(cells)


def demo_module_main(run, prog: str, argv=None) -> int:
    """``python -m <prog> [--logs DIR] [--name NAME] [--workers N] [--seed S] [--quick]``: call
    ``run(logs, name, workers, seed, quick)`` (a demo's run function); returns 0."""
    import argparse

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--logs", default="./logs")
    p.add_argument("--name", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps of every phase")
    a = p.parse_args(argv)
    run(a.logs, a.name, a.workers, a.seed, a.quick)
    return 0


def publish_demo_results(results: Dict[str, dict], run_dir: str, table: str, losses_path: str, prefix: str,
                         timings: Dict[str, float], **plot) -> Optional[str]:
    """Write ``<run_dir>/demo_results.json``, print ``table``, draw ``demo_results.png`` (``plot``: the
    ``models`` / ``metrics`` of :func:`~openclip_distill.demo.plot.plot_demo_results`) and log where they
    are, with ``prefix`` (e.g. ``"[demo 5/5]"``) and the evaluation / total seconds; returns the picture's
    path, or None without matplotlib."""
    from .plot import save_demo_plot

    with open(os.path.join(run_dir, "demo_results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, ensure_ascii=False)
    print(table, flush=True)
    png = save_demo_plot(results, run_dir, losses_path, **plot)
    log.info("%s evaluation took %.1f s; demo total %.1f s; results -> %s%s", prefix, timings["eval_s"],
             timings["total_s"], os.path.join(run_dir, "demo_results.json"), f", picture -> {png}" if png else "")
    return png
