"""``python -m openclip_distill.main``: distill a frozen OpenCLIP teacher into a student.

``main(argv)`` does what the CLI does (as ``open_clip_train.main.main(argv)`` does), so users can
register their own losses or model configs first and then call it. Returns the exit status.
"""
import logging
import os
import random
import sys
from datetime import datetime

import numpy as np
import open_clip
import torch
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging

from . import registry
from .checkpoint import find_latest_checkpoint
from .engine import create_engine
from .errors import DistillUsageError, NonFiniteLossError
from .features import DistillFeatures
from .models.teacher import check_model_name, create_teacher
from .models.text_tower import adopt_teacher_text_tower
from .optim import create_scheduler
from .params import parse_args, validate_args
from .train import train_one_epoch
from .training_data import build_train_data, build_eval, run_eval


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


def _create_student(args, device, teacher):
    check_model_name(args.model, "--model")
    try:
        student, _, preprocess_val = open_clip.create_model_and_transforms(
            args.model, args.pretrained, precision=args.precision if args.precision in ("fp16", "bf16") else "fp32",
            device=device, force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
            force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
            pretrained_image=args.pretrained_image, output_dict=True, cache_dir=args.cache_dir,
            # DeepSpeed cannot broadcast 0-d parameters
            **({"nonscalar_logit_scale": True} if args.deepspeed else {}))
    except (RuntimeError, OSError) as e:
        raise DistillUsageError(f"--pretrained: could not load {args.pretrained!r} for {args.model} "
                                f"({str(e).splitlines()[0][:200]}); pass a local file or a known tag") from None
    tokenizer = open_clip.get_tokenizer(args.model, cache_dir=args.cache_dir)
    if args.student_text_tower == "teacher":
        if teacher is None:  # --teacher-cache: the cache keeps the teacher's text tower
            from .cache import adopt_cached_text_tower
            n = adopt_cached_text_tower(student, args.teacher_cache, args.model, args.distill_teacher)
        else:
            n = adopt_teacher_text_tower(student, teacher, args.model, args.distill_teacher)
        logging.info(f"Student reuses the teacher's frozen text tower ({n} tensors copied)")
    if args.lock_image:
        student.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                                 freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_text and args.student_text_tower == "train":
        student.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers,
                                freeze_layer_norm=args.lock_text_freeze_layer_norm)
    if args.grad_checkpointing:
        student.set_grad_checkpointing()
    return student, preprocess_val, tokenizer


def run(args) -> int:
    loss_cls = registry.get_loss_class(args.distill_loss)
    manifest = None
    if args.teacher_cache:
        from .cache import load_manifest
        manifest = load_manifest(args.teacher_cache)
        args.distill_teacher = args.distill_teacher or manifest["teacher"]
    validate_args(args, loss_cls)
    device = init_distributed_device(args)
    _experiment_dirs(args)
    args.log_level = logging.DEBUG if args.debug else logging.INFO
    _setup_logging(args.log_path, args.log_level)
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)

    random_seed(args.seed, 0)
    teacher = teacher_tokenizer = None
    if manifest is None:
        teacher, _, teacher_tokenizer = create_teacher(args, device)
    else:
        logging.info(f"Teacher {manifest['teacher']} ({manifest.get('teacher_pretrained')}) from the embedding cache "
                     f"{args.teacher_cache}: it is never instantiated")
    student, preprocess_val, tokenizer = _create_student(args, device, teacher)
    loss_kwargs = dict(args.distill_loss_kwargs)
    loss_kwargs.setdefault("impl", args.loss_impl)
    loss = registry.create_distill_loss(args.distill_loss, **loss_kwargs)
    random_seed(args.seed, args.rank)

    if is_master(args):
        with open(os.path.join(args.logs, args.name, "params.txt"), "w") as f:
            for name in sorted(vars(args)):
                f.write(f"{name}: {getattr(args, name)}\n")
        logging.info(f"Student {args.model}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params; "
                     f"loss {args.distill_loss} {loss_kwargs}")

    if manifest is None:
        features = DistillFeatures(student, teacher, loss, tokenizer, teacher_tokenizer, device=device,
                                   precision=args.precision, teacher_precision=args.distill_teacher_precision,
                                   train_student_text=args.student_text_tower == "train")
    else:
        from .cache import CachedDistillFeatures
        features = CachedDistillFeatures(student, loss, tokenizer, logit_scale=manifest["logit_scale"],
                                         logit_bias=manifest.get("logit_bias"), device=device,
                                         precision=args.precision,
                                         train_student_text=args.student_text_tower == "train")
    if not features.uses_student_scale:
        student.logit_scale.requires_grad_(False)  # e.g. DIME-FM's fixed scale: the student's is unused
    engine = create_engine(student, args, device)
    features.student = engine.model

    start_epoch, state = 0, {"step": 0, "nonfinite_streak": 0}
    if args.resume:
        start_epoch, state["step"] = engine.resume(args.resume)

    train_data, counters = build_train_data(args, loss_cls, student, teacher, start_epoch, manifest)
    scheduler = create_scheduler(engine.optimizer, args, train_data.num_batches // args.accum_freq)
    evaluator = build_eval(args, preprocess_val, tokenizer)
    writer = None
    if args.save_logs and ("tensorboard" in args.report_to or "all" in args.report_to):
        import torch.utils.tensorboard as tensorboard
        writer = tensorboard.SummaryWriter(os.path.join(args.logs, args.name, "tensorboard"))

    for epoch in range(start_epoch, args.epochs):
        if is_master(args):
            logging.info(f"Start epoch {epoch}")
        train_one_epoch(engine, features, loss, train_data, epoch, scheduler, args, state, counters=counters,
                        tb_writer=writer)
        completed = epoch + 1
        if evaluator is not None and (completed == args.epochs or (
                args.zeroshot_frequency > 0 and completed % args.zeroshot_frequency == 0)):
            run_eval(evaluator, engine.eval_model(), completed, args, writer)
        engine.save(completed, state["step"], final=completed == args.epochs)
        if args.distributed:
            torch.distributed.barrier()
    if start_epoch >= args.epochs:
        logging.info(f"Nothing to do: the run already completed {args.epochs} epochs")
    return 0


def main(argv=None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        if args.list_losses:
            print("\n".join(registry.list_losses()))
            return 0
        if args.list_models:
            print("\n".join(open_clip.list_models()))
            return 0
        if args.demo:
            from .demo.run import run_demo
            run_demo(logs=args.logs, name=args.name, workers=args.workers, seed=args.seed)
            return 0
        return run(args)
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


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
