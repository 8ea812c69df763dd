"""One epoch of distillation: the student learns, the frozen teacher only provides targets.

Mirrors ``open_clip_train.train.train_one_epoch`` (scheduler per step, AMP scaler, gradient
clipping, OpenCLIP's log line) with the additions distillation needs: a teacher outside DDP,
unpaired image/text batches, skipped NaN/inf steps, and a per-step loss record.
"""
import json
import logging
import math
import os
import time

import torch
import torch.distributed as dist
from open_clip_train.distributed import is_master
from open_clip_train.train import AverageMeter

from .errors import NonFiniteLossError
from .grad_cache import grad_cache_backward


def _all_ranks_finite(total_loss, args) -> bool:
    """A step is skipped on every rank if the loss is not finite on any rank (keeps DDP in step)."""
    flag = torch.isfinite(total_loss.detach()).float().reshape(1)
    if args.distributed and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _forward_backward(engine, task, loss, micro_batches, args):
    """Loss terms and whether the step is usable; gradients are accumulated into the student."""
    is_finite = lambda total: _all_ranks_finite(total, args)  # noqa: E731
    if len(micro_batches) > 1:
        return grad_cache_backward(engine, task, loss, micro_batches, is_finite)
    inputs = task(micro_batches[0])
    with task.autocast():
        losses = loss(**inputs, output_dict=True)
    total = sum(losses.values())
    losses["loss"] = total
    if not is_finite(total):
        return losses, False
    engine.backward(total)
    return losses, True


def _batch_size(batch) -> int:
    """Samples in a batch: its images, or its sentences in a sentence-only run."""
    return len(batch["image"]) if batch.get("image") is not None else len(batch["text"])


def record_losses(args, epoch: int, step: int, losses: dict) -> None:
    """Append this step's losses to ``<logs>/<name>/losses.jsonl`` (master only)."""
    if not getattr(args, "save_logs", False):
        return
    stage = getattr(args, "stage_name", None)
    row = {"epoch": epoch, "step": step, **({"stage": stage} if stage else {}),
           **{k: float(v.detach()) for k, v in losses.items()}}
    with open(os.path.join(args.logs, args.name, "losses.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def train_one_epoch(engine, task, loss, train_data, epoch, scheduler, args, state, counters=None,
                    tb_writer=None):
    """Train ``engine``'s student for one epoch of ``train_data``; ``state`` carries ``step`` and the NaN streak.
    With ``--accum-freq K`` every optimizer step sees K loader batches as one batch (GradCache)."""
    engine.model.train()
    optimizer = engine.optimizer
    train_data.set_epoch(epoch)
    accum = max(1, int(getattr(args, "accum_freq", 1) or 1))
    num_batches = train_data.num_batches // accum
    samples_per_epoch = train_data.num_samples
    sample_digits = math.ceil(math.log(samples_per_epoch + 1, 10))
    meters = {}
    batch_time_m, data_time_m = AverageMeter(), AverageMeter()
    end = time.time()
    micro = []
    batch_count = 0
    for batch in train_data:
        if batch_count >= num_batches:
            break
        micro.append(batch)
        if len(micro) < accum:
            continue
        step = state["step"]
        if scheduler is not None and not args.skip_scheduler:
            scheduler(step)
        data_time_m.update(time.time() - end)
        engine.zero_grad()
        losses, usable = _forward_backward(engine, task, loss, micro, args)
        images_in_step = sum(_batch_size(b) for b in micro)
        micro = []
        batch_count += 1
        state["step"] += 1
        if not usable:
            state["nonfinite_streak"] += 1
            logging.warning(f"Non-finite loss at step {step} ({float(losses['loss'].detach())}): step skipped "
                            f"({state['nonfinite_streak']}/{args.max_nonfinite_steps} in a row)")
            if state["nonfinite_streak"] >= args.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{state['nonfinite_streak']} consecutive non-finite losses (last at epoch {epoch}, step "
                    f"{step}); stopped. Lower --lr, set --grad-clip-norm, or check the data; the last good "
                    f"checkpoint in {args.checkpoint_path} is intact")
            end = time.time()
            continue
        state["nonfinite_streak"] = 0
        engine.step()
        record_losses(args, epoch, step, losses)

        batch_time_m.update(time.time() - end)
        end = time.time()
        if is_master(args) and ((batch_count - 1) % args.log_every_n_steps == 0 or batch_count == num_batches):
            num_samples = batch_count * images_in_step * args.world_size
            for k, v in losses.items():
                meters.setdefault(k, AverageMeter()).update(v.item(), images_in_step)
            samples_per_second = images_in_step * args.world_size / batch_time_m.val
            loss_log = " ".join(f"{k.replace('_', ' ').title()}: {m.val:#.5g} ({m.avg:#.5g})"
                                for k, m in meters.items())
            skipped = ""
            if counters is not None:
                snap = {k: v for k, v in counters.snapshot().items() if v}
                skipped = (" Skipped: " + ", ".join(f"{k}={v}" for k, v in snap.items())) if snap else ""
            logging.info(
                f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{samples_per_epoch} "
                f"({100.0 * batch_count / num_batches:.0f}%)] "
                f"Data (t): {data_time_m.avg:.3f} Batch (t): {batch_time_m.avg:.3f}, "
                f"{samples_per_second:#g}/s, {samples_per_second / args.world_size:#g}/s/gpu "
                f"LR: {optimizer.param_groups[0]['lr']:5f} {loss_log}{skipped}")
            if tb_writer is not None:
                prefix = f"{args.stage_name}/train" if getattr(args, "stage_name", None) else "train"
                for k, m in meters.items():
                    tb_writer.add_scalar(f"{prefix}/{k}", m.val, step)
                tb_writer.add_scalar(f"{prefix}/lr", optimizer.param_groups[0]["lr"], step)
            batch_time_m.reset()
            data_time_m.reset()
