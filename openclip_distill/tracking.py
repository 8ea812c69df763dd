"""Experiment tracking behind one small interface: TensorBoard and/or Weights & Biases, as OpenCLIP's
``--report-to`` selects them (``tensorboard``, ``wandb``, ``all``; several joined with commas).

The loop and the evaluation call ``tracker.add_scalar(tag, value, step)`` exactly as they would a
``SummaryWriter``: ``train/*`` scalars at the global optimizer step, ``val/*`` at the completed epoch.
TensorBoard receives them as they come. W&B receives them as OpenCLIP's trainer sends them:
``wandb.init(project=--wandb-project-name, name=id=run name, notes=--wandb-notes, config=args)``
(continued on ``--resume``), ``train/*`` at their step, and ``val/*`` together with ``epoch`` at the
last training step logged (W&B steps must not go backwards; OpenCLIP logs them at the epoch's step too).
"""
import logging
import os
from typing import List, Optional

from .errors import DistillUsageError


def reports_to(args, backend: str) -> bool:
    """Whether ``--report-to`` names ``backend`` (or ``all``), OpenCLIP's test."""
    report_to = getattr(args, "report_to", "") or ""
    return backend in report_to or "all" in report_to


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise DistillUsageError("--report-to wandb: the wandb package is not installed; pip install "
                                "'openclip_distill[wandb]' (or drop wandb from --report-to)") from None
    return wandb


class Tracker:
    """Fans ``add_scalar`` out to a TensorBoard ``SummaryWriter`` and/or a W&B run."""

    def __init__(self, tensorboard=None, wandb_module=None):
        self.tensorboard, self.wandb = tensorboard, wandb_module
        self.last_step = 0

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            if tag.startswith("val/"):  # step = epoch here: logged with it, at the latest training step
                self.wandb.log({tag: value, "epoch": step}, step=self.last_step)
            else:
                self.last_step = max(self.last_step, int(step))
                self.wandb.log({tag: value, "step": int(step)}, step=int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def create_tracker(args, is_master: bool = True) -> Optional[Tracker]:
    """The run's tracker (master rank only), or None when ``--report-to`` names no backend.
    TensorBoard writes to ``<logs>/<name>/tensorboard`` (needs ``--logs``); W&B files go under ``<logs>/<name>``."""
    if not is_master:
        return None
    run_dir = os.path.join(args.logs, args.name) if getattr(args, "save_logs", False) else None
    tensorboard = wandb = None
    if reports_to(args, "wandb"):
        wandb = import_wandb()
        wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, notes=args.wandb_notes,
                   tags=[], resume="allow" if args.resume else None, config=vars(args),
                   **({"dir": run_dir} if run_dir else {}))
        logging.info(f"W&B run {args.name} (project {args.wandb_project_name})")
    if reports_to(args, "tensorboard") and run_dir:
        import torch.utils.tensorboard as tb
        tensorboard = tb.SummaryWriter(os.path.join(run_dir, "tensorboard"))
    if tensorboard is None and wandb is None:
        return None
    return Tracker(tensorboard, wandb)


__all__: List[str] = ["Tracker", "create_tracker", "reports_to", "import_wandb"]
