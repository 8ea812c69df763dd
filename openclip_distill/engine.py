"""How the student's gradients are applied: plain PyTorch / DDP (here) or DeepSpeed ZeRO
(``deepspeed_engine.py``). The training loop only talks to this interface:

    with engine.accumulation_context(last): out = engine.model(...); engine.backward(loss)
    engine.step(); engine.zero_grad()
    engine.save(epoch, step, final) / engine.resume(path) / engine.export_state_dict()

The frozen teacher is never part of an engine (never wrapped in DDP/ZeRO).
"""
import logging
import os
from contextlib import nullcontext

import torch

from .checkpoint import (LATEST_CHECKPOINT_NAME, atomic_torch_save, build_checkpoint, load_checkpoint,
                         restore_training_state)
from .optim import create_optimizer


class TorchEngine:
    """The student alone or in DDP, a torch optimizer and (``--precision amp``) a grad scaler."""

    def __init__(self, student, args, device):
        self.args = args
        self.module = student
        self.model = student
        if args.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[device] if device.type == "cuda" else None,
                static_graph=bool(args.ddp_static_graph))
        self.optimizer = create_optimizer(student, args)
        self.scaler = torch.amp.GradScaler(device=device.type) if args.precision == "amp" else None

    def accumulation_context(self, last: bool):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if last or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return nullcontext()
        return self.model.no_sync()

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def step(self):
        clip = self.args.grad_clip_norm
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip, norm_type=2.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip, norm_type=2.0)
            self.optimizer.step()

    def export_state_dict(self):
        """The full student state dict (what OpenCLIP loads)."""
        return self.module.state_dict()

    def eval_model(self):
        """A model the master rank can evaluate alone (None on other ranks)."""
        return self.module

    def save(self, epoch: int, step: int, final: bool = False):
        save_plain_checkpoint(self.args, self.export_state_dict(), self.optimizer.state_dict(),
                              self.scaler.state_dict() if self.scaler is not None else None, epoch, step, final)

    def resume(self, path):
        """Load ``path``; returns (start_epoch, step)."""
        return restore_training_state(load_checkpoint(path), self.module, self.optimizer, self.scaler)


def save_plain_checkpoint(args, state_dict, optimizer_state, scaler_state, epoch, step, final):
    """Write ``epoch_<E>.pt`` (and ``epoch_latest.pt``) atomically on the master, per the save flags."""
    if not args.save_logs:
        return
    ckpt = build_checkpoint(state_dict, optimizer_state, scaler_state, epoch=epoch, step=step, name=args.name,
                            extra={"distill_loss": args.distill_loss, "model": args.model,
                                   "distill_teacher": args.distill_teacher})
    if final or (args.save_frequency > 0 and epoch % args.save_frequency == 0):
        path = os.path.join(args.checkpoint_path, f"epoch_{epoch}.pt")
        atomic_torch_save(ckpt, path)
        logging.info(f"Saved checkpoint {path}")
    if args.delete_previous_checkpoint:
        prev = os.path.join(args.checkpoint_path, f"epoch_{epoch - 1}.pt")
        if os.path.exists(prev):
            os.remove(prev)
    if args.save_most_recent:
        atomic_torch_save(ckpt, os.path.join(args.checkpoint_path, LATEST_CHECKPOINT_NAME))


def create_engine(student, args, device):
    if getattr(args, "deepspeed", None):
        from .deepspeed_engine import DeepSpeedEngine
        return DeepSpeedEngine(student, args, device)
    return TorchEngine(student, args, device)
