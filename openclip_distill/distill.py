"""One distillation run from parsed flags: the teacher (or its cache), the student, the loss and the
task that joins them, the engine, the data, then the epochs with evaluation and checkpoints.

``run(args)`` is what ``python -m openclip_distill.main`` runs; ``distill(argv)`` parses flags and
runs, turning bad input into one-line errors and an exit status (used by the demos).
"""
import logging
import os
import random
import sys
from datetime import datetime

import numpy as np
import torch
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging

from . import registry
from .blip_task import is_blip_loss
from .checkpoint import find_latest_checkpoint, load_checkpoint
from .engine import create_engine
from .errors import DistillUsageError, NonFiniteLossError
from .optim import create_scheduler
from .params import parse_args, validate_args
from .stages import check_parameter_patterns, load_stages
from .task import loss_modalities, loss_needs_paired_data
from .task_factory import build_run_parts
from .tracking import create_tracker, import_wandb, reports_to
from .train import train_one_epoch
from .training_data import build_eval, build_train_data, check_data_paths, run_eval


def random_seed(seed=42, rank=0):
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


_LOG_HANDLERS = []


def _setup_logging(log_path, level):
    """OpenCLIP's ``setup_logging``, made safe to call again in the same process (tests, the demo)."""
    for h in _LOG_HANDLERS:
        logging.root.removeHandler(h)
        h.close()
    before = set(logging.root.handlers)
    setup_logging(log_path, level)
    _LOG_HANDLERS[:] = [h for h in logging.root.handlers if h not in before]
    for name in list(logging.root.manager.loggerDict):  # keep library internals quiet
        if name.startswith(("torch", "urllib3", "filelock", "PIL", "matplotlib", "httpx", "huggingface_hub")):
            logging.getLogger(name).setLevel(logging.WARNING)


def _experiment_dirs(args):
    """Name the run, create ``<logs>/<name>/checkpoints`` and resolve ``--resume latest``."""
    if args.name is None:
        date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        if args.distributed:
            date_str = broadcast_object(args, date_str)
        args.name = "-".join([date_str, f"distill_{args.distill_teacher.replace('/', '-')}",
                              f"model_{args.model.replace('/', '-')}", f"lr_{args.lr}", f"b_{args.batch_size}"])
    resume_latest = args.resume == "latest"
    log_base = os.path.join(args.logs, args.name)
    args.log_path = None
    args.checkpoint_path = os.path.join(log_base, "checkpoints")
    if is_master(args, local=args.log_local):
        os.makedirs(log_base, exist_ok=True)
        args.log_path = os.path.join(log_base, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            raise DistillUsageError(f"--name: experiment {log_base} already exists; choose a new --name or pass "
                                    f"--resume latest to continue it")
    if is_master(args):
        os.makedirs(args.checkpoint_path, exist_ok=True)
    if resume_latest:
        found = find_latest_checkpoint(args.checkpoint_path) if is_master(args) else None
        if args.distributed:
            found = broadcast_object(args, found)
        args.resume = found


def _check_stage(stage, manifest) -> None:
    """Flags, loss arguments and data paths of one stage, before anything trains."""
    args = stage.args
    loss_cls = registry.get_loss_class(args.distill_loss)
    # the loss, built once from the flags alone: bad kwargs and the data it needs fail before any model loads
    probe = registry.create_distill_loss(args.distill_loss, **dict(args.distill_loss_kwargs))
    validate_args(args, loss_cls, loss_modalities(probe))
    if manifest is None:
        check_data_paths(args, loss_modalities(probe), loss_needs_paired_data(loss_cls))


def _stage_error(stage, n_stages, fn, *a):
    """Run ``fn``; with several stages a usage error names the stage."""
    try:
        return fn(*a)
    except DistillUsageError as e:
        if n_stages == 1:
            raise
        raise DistillUsageError(f"--stages: stage {stage.name!r}: {e}") from None


def _run_position(path):
    """``(epoch, step, stage_index, stage_start_step, state_dict)`` recorded in the plain checkpoint at
    ``path``; ``epoch`` is None for a DeepSpeed checkpoint folder (the engine reads it)."""
    if not os.path.isfile(path):
        return None, 0, 0, 0, None
    ckpt = load_checkpoint(path)
    return (int(ckpt["epoch"]), int(ckpt.get("step", 0)), int(ckpt.get("stage_index", 0)),
            int(ckpt.get("stage_start_step", 0)), ckpt["state_dict"])


def run(args) -> int:
    manifest = None
    if args.teacher_cache:
        from .cache import load_manifest
        manifest = load_manifest(args.teacher_cache)
        args.distill_teacher = args.distill_teacher or manifest["teacher"]
    stages = load_stages(args, parse_args)
    manifests = []
    for stage in stages:
        stage_manifest = manifest
        if stage.args.teacher_cache and stage.args.teacher_cache != args.teacher_cache:
            from .cache import load_manifest
            stage_manifest = _stage_error(stage, len(stages), load_manifest, stage.args.teacher_cache)
            stage.args.distill_teacher = stage.args.distill_teacher or stage_manifest["teacher"]
        manifests.append(stage_manifest)
        _stage_error(stage, len(stages), _check_stage, stage, stage_manifest)
    blip = {stage.name: is_blip_loss(registry.get_loss_class(stage.args.distill_loss)) for stage in stages}
    if len(set(blip.values())) > 1:
        a = next(n for n, b in blip.items() if b)
        b = next(n for n, b in blip.items() if not b)
        raise DistillUsageError(f"--stages: stage {a!r} trains a BLIP student (--distill-loss dlip) and stage {b!r} "
                                f"an OpenCLIP one; a run trains one student: put them in separate runs")
    if len(stages) > 1:
        if args.deepspeed:  # a ZeRO engine exports the student on rank 0 only; stages hand it to every rank
            raise DistillUsageError("--stages: multi-stage runs do not combine with --deepspeed yet; run them with "
                                    "plain/DDP training (torchrun), or one stage per run with --pretrained")
        for stage in stages:  # parameter patterns are checked on the student's architecture up front
            _stage_error(stage, len(stages), check_parameter_patterns, stage)
    device = init_distributed_device(args)
    _experiment_dirs(args)
    args.log_level = logging.DEBUG if args.debug else logging.INFO
    _setup_logging(args.log_path, args.log_level)
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)
    if reports_to(args, "wandb"):
        import_wandb()  # a missing optional extra fails before any model loads
    if is_master(args):
        with open(os.path.join(args.logs, args.name, "params.txt"), "w") as f:
            for name in sorted(vars(args)):
                f.write(f"{name}: {getattr(args, name)}\n")
    if len(stages) > 1:
        logging.info(f"Stages ({args.stages}): " + ", ".join(f"{s.name} ({s.args.epochs} epochs, "
                                                             f"{s.args.distill_loss})" for s in stages))
    resume = _run_position(args.resume) if args.resume else None
    writer = create_tracker(args, is_master(args))  # TensorBoard and/or W&B, per --report-to

    offset, step, student_weights = 0, 0, None
    for stage, stage_manifest in zip(stages, manifests):
        first, last = offset, offset + stage.args.epochs
        offset = last
        if resume is not None and resume[0] is not None and resume[0] >= last:  # finished before the interruption
            step, student_weights = resume[1], resume[4]
            continue
        step, student_weights = _run_stage(stage, len(stages), stage_manifest, first, last, step, student_weights,
                                           resume, args, device, writer)
        resume = None
    if resume is not None:
        logging.info(f"Nothing to do: the run already completed {offset} epochs")
    if writer is not None:
        writer.close()
    return 0


def _run_stage(stage, n_stages, manifest, first, last, step, student_weights, resume, run_args, device, writer):
    """Train ``stage`` for global epochs ``first .. last - 1``; returns the global step at its end and
    the student's final weights (for the next stage)."""
    args = stage.args
    for k in ("distributed", "world_size", "rank", "local_rank", "device", "name", "log_path", "checkpoint_path",
              "save_logs", "log_level"):
        setattr(args, k, getattr(run_args, k))
    random_seed(args.seed, 0)
    parts = build_run_parts(args, device, manifest, stage=stage if n_stages > 1 else None)
    random_seed(args.seed, args.rank)
    if student_weights is not None:  # continue from the previous stage's student
        parts.student.load_state_dict(student_weights)
    engine = create_engine(parts.student, args, device, loss=parts.loss)
    parts.task.student.model = engine.model

    state = {"step": step, "nonfinite_streak": 0}
    start, args.stage_start_step = first, step
    if resume is not None and resume[2] == stage.index and (resume[0] is None or resume[0] > first):
        start, state["step"] = engine.resume(run_args.resume)
        args.stage_start_step = resume[3]
    train_data, counters = build_train_data(args, parts, start)
    stage_scheduler = create_scheduler(engine.optimizer, args, train_data.num_batches // args.accum_freq)
    scheduler = (lambda s: stage_scheduler(s - args.stage_start_step)) if stage_scheduler is not None else None
    evaluator = build_eval(args, parts.preprocess_val, parts.tokenizer)
    if n_stages > 1 and is_master(args):
        logging.info(f"Stage {stage.index + 1}/{n_stages} {stage.name!r}: epochs {first + 1}-{last}, loss "
                     f"{args.distill_loss}, {sum(p.numel() for p in parts.student.parameters() if p.requires_grad) / 1e6:.2f}M "
                     f"trainable student params")
    for epoch in range(start, last):
        if is_master(args):
            logging.info(f"Start epoch {epoch}" + (f" (stage {stage.name})" if n_stages > 1 else ""))
        train_one_epoch(engine, parts.task, parts.loss, train_data, epoch, scheduler, args, state,
                        counters=counters, tb_writer=writer)
        completed = epoch + 1
        if evaluator is not None and (completed == last or (
                args.zeroshot_frequency > 0 and completed % args.zeroshot_frequency == 0)):
            run_eval(evaluator, engine.eval_model(), completed, args, writer)
        engine.save(completed, state["step"], final=completed == last)
        if args.distributed:
            torch.distributed.barrier()
    if parts.export_final is not None and start < last and is_master(args):
        parts.export_final(os.path.join(args.logs, args.name, "student"))
    if start >= last:
        logging.info(f"Nothing to do: the run already completed {last} epochs")
    return state["step"], (engine.export_state_dict() if n_stages > 1 else None)


def exit_status_of(fn, *a) -> int:
    """Call ``fn(*a)``; bad input becomes ``error: <one line>`` on stderr and exit status 2, a run
    stopped by non-finite losses exit status 3, Ctrl-C 130. Returns ``fn``'s status otherwise."""
    try:
        return fn(*a)
    except DistillUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return DistillUsageError.exit_code
    except NonFiniteLossError as e:
        logging.error(str(e))
        print(f"error: {e}", file=sys.stderr)
        return NonFiniteLossError.exit_code
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume latest", file=sys.stderr)
        return 130


def distill(argv) -> int:
    """Parse ``argv`` (the CLI's training flags) and run; returns the exit status."""
    return exit_status_of(lambda: run(parse_args(list(argv))))
