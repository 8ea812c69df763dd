"""OpenCLIP-format checkpoints, written atomically and readable with ``weights_only=True``.

A checkpoint holds ``epoch``, ``name``, ``state_dict`` (the unwrapped student, so plain
``open_clip.create_model_and_transforms(name, pretrained=path)`` loads it), ``optimizer``,
optionally ``scaler``, and our own primitive fields (``step``, ``stage``, ``distill_loss``).
"""
import glob
import logging
import os
import re

import torch

from .atomic_files import atomic_torch_save
from .errors import DistillUsageError

LATEST_CHECKPOINT_NAME = "epoch_latest.pt"


def build_checkpoint(state_dict, optimizer_state, scaler_state, *, epoch: int, step: int, name: str,
                     stage: str = "distill", extra=None) -> dict:
    ckpt = {
        "epoch": int(epoch),
        "step": int(step),
        "stage": str(stage),
        "name": str(name),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "optimizer": optimizer_state or {},
    }
    if scaler_state is not None:
        ckpt["scaler"] = scaler_state
    if extra:
        ckpt.update(extra)
    return ckpt


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


def find_latest_checkpoint(checkpoint_dir: str):
    """The newest ``epoch_*.pt`` in ``checkpoint_dir`` (``epoch_latest.pt`` wins when present)."""
    latest = os.path.join(checkpoint_dir, LATEST_CHECKPOINT_NAME)
    if os.path.isfile(latest):
        return latest
    found = [p for p in glob.glob(os.path.join(checkpoint_dir, "epoch_*.pt"))]
    return sorted(found, key=_natural_key)[-1] if found else None


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise DistillUsageError(f"--resume: checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise DistillUsageError(f"--resume: cannot read checkpoint {path!r} ({type(e).__name__}); "
                                f"pass another file or --resume latest") from None


def strip_module_prefix(state_dict: dict) -> dict:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def restore_training_state(ckpt: dict, model, optimizer, scaler, loss=None) -> tuple:
    """Load model/optimizer/scaler (and the loss's trainable parameters) state; returns (start_epoch, global_step)."""
    model.load_state_dict(strip_module_prefix(ckpt["state_dict"]))
    if loss is not None and "loss_state_dict" in ckpt:
        loss.load_state_dict(ckpt["loss_state_dict"])
    if optimizer is not None and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    logging.info(f"=> resumed from epoch {ckpt['epoch']} (step {ckpt.get('step', 0)})")
    return int(ckpt["epoch"]), int(ckpt.get("step", 0))


def stage_fields(args) -> dict:
    """The stage position a checkpoint records (``stage_index``, ``stage_start_step``; 0 without stages)."""
    return {"stage_index": int(getattr(args, "stage_index", 0) or 0),
            "stage_start_step": int(getattr(args, "stage_start_step", 0) or 0)}


def save_plain_checkpoint(args, state_dict, optimizer_state, scaler_state, epoch, step, final, loss=None):
    """Write ``epoch_<E>.pt`` (and ``epoch_latest.pt``) atomically on the master, per the save flags.
    ``loss``: a loss with trainable parameters; they are stored as ``loss_state_dict``."""
    if not args.save_logs:
        return
    extra = {"distill_loss": args.distill_loss, "model": args.model, "distill_teacher": args.distill_teacher,
             **stage_fields(args)}
    if loss is not None and any(p.requires_grad for p in loss.parameters()):
        extra["loss_state_dict"] = {k: v.detach().cpu() for k, v in loss.state_dict().items()}
    ckpt = build_checkpoint(state_dict, optimizer_state, scaler_state, epoch=epoch, step=step, name=args.name,
                            stage=getattr(args, "stage_name", None) or "distill", extra=extra)
    if final or (args.save_frequency > 0 and epoch % args.save_frequency == 0):  # final: a stage's last epoch
        path = os.path.join(args.checkpoint_path, f"epoch_{epoch}.pt")
        atomic_torch_save(ckpt, path)
        logging.info(f"Saved checkpoint {path}")
    if args.delete_previous_checkpoint:
        prev = os.path.join(args.checkpoint_path, f"epoch_{epoch - 1}.pt")
        if os.path.exists(prev):
            os.remove(prev)
    if args.save_most_recent:
        atomic_torch_save(ckpt, os.path.join(args.checkpoint_path, LATEST_CHECKPOINT_NAME))
