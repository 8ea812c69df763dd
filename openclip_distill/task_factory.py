"""Build a run's :class:`~openclip_distill.task.DistillTask` from the CLI flags: the teacher side
(a live teacher or ensemble from ``create_teacher``, or the ``--teacher-cache``), the student with its own
tokenizer and preprocessing, and the loss (with the facts about the run it may need)."""
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import open_clip
import torch

from . import registry
from .blip_task import build_blip_run_parts, is_blip_loss
from .errors import DistillUsageError
from .models.naming import check_model_name
from .models.text_tower import adopt_text_tower
from .models.weight_inheritance import inherit_from_teacher
from .stages import apply_parameter_patterns
from .task import DistillTask, create_task, loss_modalities
from .teachers import IMAGE, TEXT, TeacherEnsemble, create_teacher, is_ensemble_name, is_hf_teacher, \
    split_teacher_flags


@dataclass
class RunParts:
    """What ``build_run_parts`` made: the task and the pieces the loop, the engine and eval need."""

    task: DistillTask
    loss: torch.nn.Module
    student: torch.nn.Module
    preprocess_val: object
    tokenizer: object
    teacher: Optional[object]  # a Teacher, None with --teacher-cache
    manifest: Optional[dict]
    view_size: int
    export_final: Optional[Callable[[str], object]] = None  # writes the trained student into a folder (BLIP)


def create_student_model(args, device):
    """The OpenCLIP student of ``--model`` / ``--pretrained``; returns (model, preprocess_val, tokenizer)."""
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
    return student, preprocess_val, open_clip.get_tokenizer(args.model, cache_dir=args.cache_dir)


@torch.no_grad()
def _embed_dim(student, tokenizer, device) -> int:
    """The width of the student's embeddings (one tiny text forward: configs from the hub carry no name)."""
    was_training = student.training
    student.eval()
    dim = int(student.encode_text(tokenizer(["a"]).to(device)).shape[-1])
    student.train(was_training)
    return dim


def _teacher_text_tower(args, teacher):
    """The OpenCLIP text tower a ``--student-text-tower teacher`` student adopts (an ensemble's first teacher's)."""
    if teacher is None:  # --teacher-cache: the cache keeps the teacher's text tower
        from .cache import load_cached_text_tower
        return load_cached_text_tower(args.teacher_cache)
    tower = teacher.text_tower_state_dict()
    if tower is None:
        raise DistillUsageError(f"--student-text-tower teacher: teacher {_first_teacher(args)!r} is not an OpenCLIP "
                                f"model, so the student cannot reuse its text tower; use --student-text-tower train")
    return tower


def _first_teacher(args) -> str:
    return split_teacher_flags(args.distill_teacher, None)[0][0]


def _inherit_teacher_weights(args, student, teacher, modalities):
    """``--student-init teacher``: the student's trained towers start from the OpenCLIP teacher's weights."""
    if isinstance(teacher, TeacherEnsemble) or (teacher is None and is_ensemble_name(args.distill_teacher)):
        raise DistillUsageError(f"--student-init teacher: {args.distill_teacher!r} is an ensemble and the student "
                                f"inherits from one teacher; use --student-init random or a single --distill-teacher")
    if teacher is None or getattr(teacher, "kind", None) != "open_clip":
        what = "--teacher-cache keeps no teacher weights" if teacher is None else \
            f"teacher {args.distill_teacher!r} is not an OpenCLIP model"
        raise DistillUsageError(f"--student-init teacher: {what}; use an OpenCLIP --distill-teacher or "
                                f"--student-init random")
    towers = [IMAGE] if IMAGE in modalities else []
    if TEXT in modalities and args.student_text_tower == "train":
        towers.append(TEXT)
    inherit_from_teacher(student, teacher.model, towers, args.distill_teacher)


def _configure_student(args, student, teacher, uses_text):
    if args.student_text_tower == "teacher" and uses_text:
        first = _first_teacher(args)
        n = adopt_text_tower(student, _teacher_text_tower(args, teacher), args.model, first)
        logging.info(f"Student reuses the teacher's frozen text tower ({n} tensors copied)" + (
            f"; of the ensemble {args.distill_teacher}, the first teacher's ({first})"
            if is_ensemble_name(args.distill_teacher) else ""))
    if args.lock_image:
        student.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                                 freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_text and args.student_text_tower == "train":
        student.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers,
                                freeze_layer_norm=args.lock_text_freeze_layer_norm)
    if args.grad_checkpointing:
        student.set_grad_checkpointing()


def _check_teacher_modalities(args, teacher, teacher_modalities, needed):
    for member in getattr(teacher, "members", ()):  # an ensemble: name the teacher that lacks a tower
        missing = sorted(set(needed) - set(member.modalities))
        if missing:
            raise DistillUsageError(
                f"--distill-teacher: teacher {member.name!r} of the ensemble {args.distill_teacher!r} has no "
                f"{' or '.join(missing)} tower, but --distill-loss {args.distill_loss} uses "
                f"{' and '.join(sorted(needed))}; every teacher of an ensemble needs the towers the loss uses")
    missing = sorted(set(needed) - set(teacher_modalities))
    if missing:
        raise DistillUsageError(
            f"--distill-teacher: {args.distill_teacher!r} has no {' or '.join(missing)} tower, but --distill-loss "
            f"{args.distill_loss} uses {' and '.join(sorted(needed))}; pick a teacher with both towers or a loss "
            f"that needs only {' and '.join(sorted(teacher_modalities))} (e.g. feature with "
            f"{'image' if IMAGE in missing else 'text'}_weight=0)")


def cached_teacher_targets(manifest) -> dict:
    """``create_task``'s ``cached_*`` keywords from a cache manifest (per-member tuples for a cached ensemble)."""
    members = manifest.get("members")
    if not members:
        return {"cached_logit_scale": manifest["logit_scale"], "cached_logit_bias": manifest.get("logit_bias")}
    return {"cached_logit_scale": tuple(float(m["logit_scale"]) for m in members), "cached_logit_bias": None,
            "cached_embed_dims": tuple(int(m["embed_dim"]) for m in members)}


def build_run_parts(args, device, manifest=None, stage=None) -> RunParts:
    """Teacher (or cache ``manifest``), student, loss and the task that joins them. ``stage``: a
    :class:`~openclip_distill.stages.Stage` whose freeze/trainable patterns apply to the student."""
    loss_cls = registry.get_loss_class(args.distill_loss)
    if is_blip_loss(loss_cls):  # a BLIP teacher and student pair: their own task (blip_task.py)
        return build_blip_run_parts(args, device, stage)
    teacher = None
    ensemble = is_ensemble_name(args.distill_teacher) or bool(manifest and manifest.get("members"))
    if manifest is None:
        if is_hf_teacher(_first_teacher(args)) and args.student_text_tower == "teacher":
            raise DistillUsageError(f"--student-text-tower teacher: teacher {_first_teacher(args)!r} is not an "
                                    f"OpenCLIP model, so the student cannot reuse its text tower; use "
                                    f"--student-text-tower train" + (" (an ensemble's student adopts the first "
                                                                     "teacher's tower)" if ensemble else ""))
        teacher = create_teacher(args.distill_teacher, args.distill_teacher_pretrained, device=device,
                                 precision=args.distill_teacher_precision or args.precision, cache_dir=args.cache_dir)
        teacher_dim, teacher_modalities = teacher.embed_dim, teacher.modalities
        teacher_size = teacher.image_size
    else:
        logging.info(f"Teacher {manifest['teacher']} ({manifest.get('teacher_pretrained')}) from the embedding cache "
                     f"{args.teacher_cache}: it is never instantiated")
        members = manifest.get("members")
        teacher_dim = tuple(int(m["embed_dim"]) for m in members) if members else int(manifest["embed_dim"])
        teacher_modalities = frozenset({IMAGE, TEXT})
        teacher_size = tuple(manifest["teacher_image_size"])
    student, preprocess_val, tokenizer = create_student_model(args, device)
    student_dim = _embed_dim(student, tokenizer, device)
    loss_kwargs = dict(args.distill_loss_kwargs)
    loss_kwargs.setdefault("impl", args.loss_impl)
    # what the loss consumes (from its flags alone), so the student is set up before the loss checks widths
    modalities = loss_modalities(registry.create_distill_loss(args.distill_loss, **loss_kwargs))
    _check_teacher_modalities(args, teacher, teacher_modalities, modalities)
    if TEXT in modalities and args.student_text_tower == "teacher" and not loss_cls.requires_paired_data \
            and set(modalities) == {TEXT}:
        raise DistillUsageError(f"--student-text-tower teacher: --distill-loss {args.distill_loss} trains the text "
                                f"tower only, which would be the teacher's frozen copy; use --student-text-tower train")
    if getattr(args, "student_init", "random") == "teacher":
        _inherit_teacher_weights(args, student, teacher, modalities)
    _configure_student(args, student, teacher, TEXT in modalities)
    loss = registry.create_distill_loss(args.distill_loss, context={
        "student_embed_dim": student_dim, "teacher_embed_dim": teacher_dim}, **loss_kwargs)
    if stage is not None:
        apply_parameter_patterns(student, stage)
    cached = {} if manifest is None else cached_teacher_targets(manifest)
    task = create_task(student, tokenizer, loss, teacher, **cached, device=device, precision=args.precision,
                       train_student_text=args.student_text_tower == "train")
    if not task.uses_student_scale:
        student.logit_scale.requires_grad_(False)  # e.g. DIME-FM's fixed scale: the student's is unused
    sizes = [max(task.student.image_size)] + ([max(teacher_size)] if teacher_size else [])
    view_size = max(sizes) if IMAGE in modalities else max(task.student.image_size)
    logging.info(f"Student {args.model}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params; "
                 f"loss {args.distill_loss} {loss_kwargs}; modalities {sorted(modalities)}")
    return RunParts(task=task, loss=loss, student=student, preprocess_val=preprocess_val, tokenizer=tokenizer,
                    teacher=teacher, manifest=manifest, view_size=view_size)
