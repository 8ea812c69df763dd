"""How the student's gradients are applied: plain PyTorch / DDP (here) or DeepSpeed ZeRO
(``deepspeed_engine.py``). The training loop only talks to this interface:

    with engine.accumulation_context(last): out = engine.model(...); engine.backward(loss)
    engine.step(); engine.zero_grad()
    engine.save(epoch, step, final) / engine.resume(path) / engine.export_state_dict()

The frozen teacher is never part of an engine (never wrapped in DDP/ZeRO). A loss with trainable
parameters (feature adapters) trains beside the student: same optimizer, its gradients averaged
over ranks, its state saved in checkpoints as ``loss_state_dict`` (never in the exported student).
"""
from contextlib import nullcontext

import torch

import torch.distributed as dist

from .checkpoint import load_checkpoint, restore_training_state, save_plain_checkpoint
from .optim import create_optimizer, trainable_loss_parameters


class TorchEngine:
    """The student alone or in DDP, a torch optimizer and (``--precision amp``) a grad scaler."""

    def __init__(self, student, args, device, loss=None):
        self.args = args
        self.module = student
        self.model = student
        self.loss = loss
        self.loss_params = trainable_loss_parameters(loss)
        if args.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[device] if device.type == "cuda" else None,
                static_graph=bool(args.ddp_static_graph))
        self.optimizer = create_optimizer(student, args, loss=loss)
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

    def _average_loss_grads(self):
        """DDP averages the student's gradients; the loss's own parameters are averaged here."""
        if not (self.loss_params and self.args.distributed and dist.is_initialized()):
            return
        for p in self.loss_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())

    def _clip(self, clip):
        params = list(self.module.parameters()) + self.loss_params
        torch.nn.utils.clip_grad_norm_(params, clip, norm_type=2.0)

    def step(self):
        clip = self.args.grad_clip_norm
        self._average_loss_grads()
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                self._clip(clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                self._clip(clip)
            self.optimizer.step()

    def export_state_dict(self):
        """The full student state dict (what OpenCLIP loads)."""
        return self.module.state_dict()

    def eval_model(self):
        """A model the master rank can evaluate alone (None on other ranks)."""
        return self.module

    def save(self, epoch: int, step: int, final: bool = False):
        save_plain_checkpoint(self.args, self.export_state_dict(), self.optimizer.state_dict(),
                              self.scaler.state_dict() if self.scaler is not None else None, epoch, step, final,
                              loss=self.loss)

    def resume(self, path):
        """Load ``path``; returns (start_epoch, step)."""
        return restore_training_state(load_checkpoint(path), self.module, self.optimizer, self.scaler, loss=self.loss)


def create_engine(student, args, device, loss=None):
    """``TorchEngine`` (plain / DDP), or ``DeepSpeedEngine`` with ``--deepspeed``."""
    if args.deepspeed:
        from .deepspeed_engine import DeepSpeedEngine
        return DeepSpeedEngine(student, args, device, loss=loss)
    return TorchEngine(student, args, device, loss=loss)
