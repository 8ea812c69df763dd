"""Optimizer and LR schedule, with OpenCLIP's parameter grouping and schedulers.

Gains, biases, norms and the logit scale get no weight decay (OpenCLIP's rule); the schedule is
``open_clip_train.scheduler``'s cosine / const / const-cooldown, stepped once per optimizer step.
"""
import logging

import torch
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

from .errors import DistillUsageError


def _no_decay(name, p) -> bool:
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def trainable_loss_parameters(loss) -> list:
    """The parameters a loss learns itself (e.g. feature adapters); [] for most losses."""
    if loss is None or not isinstance(loss, torch.nn.Module):
        return []
    return [p for p in loss.parameters() if p.requires_grad]


def create_optimizer(model, args, loss=None):
    """AdamW (or ``timm/<name>``) over the student's trainable parameters and the loss's own, if any."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if trainable_loss_parameters(loss):
        named += [(f"loss.{n}", p) for n, p in loss.named_parameters() if p.requires_grad]
    if not named:
        raise DistillUsageError("--model: the student has no trainable parameters (check --lock-image/--lock-text "
                                "and --student-text-tower)")
    opt = (args.opt or "adamw").lower()
    if opt.startswith("timm/"):
        from timm.optim import create_optimizer_v2
        kw = {"betas": (args.beta1, args.beta2)} if args.beta1 is not None else {}
        if args.momentum is not None:
            kw["momentum"] = args.momentum
        holder = model
        if trainable_loss_parameters(loss):
            holder = torch.nn.ModuleDict({"student": model, "loss": loss})
        return create_optimizer_v2(holder, opt[len("timm/"):], lr=args.lr, weight_decay=args.wd, eps=args.eps, **kw)
    if opt != "adamw":
        raise DistillUsageError(f"--opt: unknown optimizer {args.opt!r}; use adamw or timm/<name>")
    groups = [
        {"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": args.wd},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    logging.info(f"Created AdamW optimizer: lr {args.lr}, wd {args.wd}, betas ({args.beta1}, {args.beta2}), "
                 f"eps {args.eps}; {sum(p.numel() for _, p in named) / 1e6:.2f}M trainable params")
    return optimizer


def create_scheduler(optimizer, args, steps_per_epoch: int):
    total_steps = steps_per_epoch * args.epochs
    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const-cooldown":
        if args.epochs_cooldown is None:
            raise DistillUsageError("--lr-scheduler const-cooldown needs --epochs-cooldown N")
        return const_lr_cooldown(optimizer, args.lr, args.warmup, total_steps, steps_per_epoch * args.epochs_cooldown,
                                 args.lr_cooldown_power, args.lr_cooldown_end)
    raise DistillUsageError(f"--lr-scheduler: unknown {args.lr_scheduler!r}; use cosine, const or const-cooldown")
