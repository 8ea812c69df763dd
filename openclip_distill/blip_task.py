"""The BLIP side of the batch -> loss seam: :class:`BlipDistillTask` and the run parts it needs.

Chosen by the loss (a loss class with ``teacher_kind = "blip"``, i.e. ``dlip``) instead of
:class:`~openclip_distill.task.DistillTask`: the teacher is a :class:`~openclip_distill.teachers.hf_blip.BlipTeacher`
(``--distill-teacher hf:<dir>`` with ``retrieval/`` and/or ``captioning/``), the student a
:class:`~openclip_distill.models.blip_pair.BlipPair` built from it (``--model blip-small``, a preset of
``build_blip_student``; ``--student-init teacher`` copies a uniform selection of teacher layers, DLIP's
initialisation) whose retrieval and captioning models share one vision tower. Each step tokenises the
captions once with the teacher's tokenizer (the student keeps its vocabulary), runs the student (which
mines its ITM hard negatives from its own ITC similarities) and then the frozen teacher on the same
view and the same ITM pairs, and hands the loss ``student=`` and ``teacher=``
:class:`~openclip_distill.models.blip_pair.BlipOutputs`. The trained student is written as two
``save_pretrained`` directories, ``<logs>/<name>/student/retrieval`` and ``.../captioning``.
"""
import logging
import os
import shutil

import torch
from open_clip_train.precision import get_autocast

from . import registry
from .errors import DistillUsageError
from .models.blip_pair import BlipPair
from .models.blip_student import build_blip_student, get_blip_student_preset, num_params
from .stages import apply_parameter_patterns, check_patterns_match
from .teachers import IMAGE, TEXT, create_teacher

BOTH = frozenset({IMAGE, TEXT})


def is_blip_loss(loss_cls) -> bool:
    return getattr(loss_cls, "teacher_kind", None) == "blip"


class BlipStudentHandle:
    """The student model as the engine hands it back (``model`` may become its DDP wrapper)."""

    def __init__(self, model):
        self.model = model


class BlipDistillTask:
    """Batch (views in [0, 1] + raw captions) -> ``{"student": BlipOutputs, "teacher": BlipOutputs}``."""

    modalities = BOTH

    def __init__(self, student: BlipPair, teacher, loss, *, device, precision="fp32"):
        self.student = BlipStudentHandle(student)
        self.teacher, self.loss = teacher, loss
        self.device = torch.device(device)
        self.parts = loss.parts
        self.input = teacher.image_input()
        self.autocast = get_autocast(precision, device_type=self.device.type)
        self.itc_temperature = float(getattr(loss, "itc_temperature", 0.07))

    def images_of(self, batch):
        return batch["image"].to(self.device, non_blocking=True)

    def __call__(self, batch) -> dict:
        pixels = self.input(self.images_of(batch))
        ids, mask = self.teacher.tokenize_captions(list(batch["text"]))
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self.autocast():
            # ITM negatives are drawn with torch's global RNG (seeded per rank by the run)
            s_out = self.student.model(pixels, ids, mask, self.parts, itc_temperature=self.itc_temperature)
        if not self.loss.reads_teacher:  # task losses only (e.g. the demo's baseline): no teacher forward
            return {"student": s_out, "teacher": None}
        with torch.no_grad(), self.teacher.autocast():
            t_out = self.teacher.pair(pixels.to(self.teacher.dtype), ids, mask, self.parts, itm_pairs=s_out.itm_pairs,
                                      itc_temperature=self.itc_temperature)
        return {"student": s_out, "teacher": t_out}


def untrained_parameters(task: BlipDistillTask) -> list:
    """Names of the student's trainable parameters that no enabled loss signal reaches (e.g. the decoder
    when every LM weight is 0), found by one backward pass on a synthetic batch of two pairs (whether a
    module is used does not depend on the data). DDP needs them frozen: it waits for every gradient."""
    student = task.student.model
    batch = {"image": torch.rand(2, 3, *task.teacher.image_size), "text": ["a photo", "a photo of a cat"]}
    with torch.enable_grad():
        total = sum(task.loss(**task(batch), output_dict=True).values())
        if not total.requires_grad:  # nothing trainable at all
            return []
        total.backward()
    names = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    student.zero_grad(set_to_none=True)
    task.loss.zero_grad(set_to_none=True)
    return names


def build_blip_student_pair(teacher, model_name: str, student_init: str) -> BlipPair:
    """The student pair of preset ``model_name`` for a :class:`BlipTeacher` (one shared vision tower)."""
    preset = get_blip_student_preset(model_name)
    init = "teacher-layers" if student_init == "teacher" else "random"
    built = {}
    for role in ("retrieval", "captioning"):
        t_model = getattr(teacher.pair, role)
        if t_model is not None:
            try:
                built[role] = build_blip_student(t_model, init=init, **preset.resolve(t_model.config)).float()
            except DistillUsageError as e:
                raise DistillUsageError(f"--model {model_name}: {e}") from None
    return BlipPair(built.get("retrieval"), built.get("captioning"), share_vision=True)


def check_blip_flags(args) -> None:
    """Flags the BLIP path does not combine with (one-line errors)."""
    if args.deepspeed:
        raise DistillUsageError(f"--deepspeed: --distill-loss {args.distill_loss} trains a BLIP pair with plain/DDP "
                                f"training only for now; drop --deepspeed (torchrun for several GPUs)")
    if args.accum_freq > 1:
        raise DistillUsageError(f"--accum-freq: --distill-loss {args.distill_loss} does not accumulate gradients "
                                f"(GradCache re-runs feature towers, not a BLIP); use --accum-freq 1 and a "
                                f"batch that fits")
    if args.eval_data:
        raise DistillUsageError(f"--eval-data: --distill-loss {args.distill_loss} has no in-training evaluation; "
                                f"evaluate the written student directories afterwards")


def export_blip_student(student: BlipPair, teacher, out_dir: str) -> dict:
    """Write ``<out_dir>/retrieval`` and/or ``<out_dir>/captioning`` with ``save_pretrained`` (plus the
    teacher's tokenizer and preprocessor config); each directory is written beside and renamed into place."""
    written = {}
    os.makedirs(out_dir, exist_ok=True)
    for role in ("retrieval", "captioning"):
        model = getattr(student, role)
        if model is None:
            continue
        final = os.path.join(out_dir, role)
        tmp = f"{final}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        teacher.tokenizer.save_pretrained(tmp)
        src = os.path.join(teacher.dirs.get(role, next(iter(teacher.dirs.values()))), "preprocessor_config.json")
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(tmp, "preprocessor_config.json"))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        written[role] = final
    logging.info(f"Student written to {', '.join(written.values())} (from_pretrained loads them)")
    return written


def build_blip_run_parts(args, device, stage=None):
    """:class:`~openclip_distill.task_factory.RunParts` for a BLIP teacher and a ``blip-*`` student."""
    from .task_factory import RunParts

    check_blip_flags(args)
    get_blip_student_preset(args.model)  # an unknown --model fails before the teacher loads
    teacher = create_teacher(args.distill_teacher, args.distill_teacher_pretrained, device=device,
                             precision=args.distill_teacher_precision or "fp32", cache_dir=args.cache_dir)
    if getattr(teacher, "kind", None) != "hf-blip":
        raise DistillUsageError(f"--distill-teacher: --distill-loss {args.distill_loss} distils a BLIP, but "
                                f"{args.distill_teacher!r} is not one ({teacher.kind} teacher); pass hf:<dir> with BLIP "
                                f"retrieval/ and/or captioning/ save_pretrained directories")
    student = build_blip_student_pair(teacher, args.model, getattr(args, "student_init", "random")).to(device)
    student.train()
    cfg_s, cfg_t = student.config, teacher.pair.config
    loss_kwargs = dict(args.distill_loss_kwargs)
    loss_kwargs.setdefault("impl", args.loss_impl)
    loss = registry.create_distill_loss(args.distill_loss, context={
        "student_vision_width": cfg_s.vision_config.hidden_size, "teacher_vision_width": cfg_t.vision_config.hidden_size,
        "student_text_width": cfg_s.text_config.hidden_size, "teacher_text_width": cfg_t.text_config.hidden_size},
        **loss_kwargs).to(device)
    missing = loss.parts - student.available_parts()
    if missing:
        have = " and ".join(sorted(teacher.dirs))
        raise DistillUsageError(f"--distill-teacher: {args.distill_teacher!r} has only {have}, but --distill-loss "
                                f"{args.distill_loss} uses {', '.join(sorted(missing))}; add the missing model "
                                f"directory or set those weights to 0 in --distill-loss-kwargs")
    if stage is not None:
        check_patterns_match([n for n, _ in student.named_parameters()], stage, args.model)
        apply_parameter_patterns(student, stage)
    task = BlipDistillTask(student, teacher, loss, device=device, precision=args.precision)
    unused = untrained_parameters(task)
    if unused:
        params = dict(student.named_parameters())
        for name in unused:
            params[name].requires_grad_(False)
        logging.info(f"{len(unused)} student tensors get no gradient from the enabled {args.distill_loss} signals "
                     f"and stay frozen (e.g. {unused[0]})")
    logging.info(f"Student {args.model}: {num_params(student) / 1e6:.2f}M params (teacher "
                 f"{num_params(teacher.pair) / 1e6:.2f}M); loss {args.distill_loss} {loss_kwargs}")
    return RunParts(task=task, loss=loss, student=student, preprocess_val=None, tokenizer=teacher.tokenizer,
                    teacher=teacher, manifest=None, view_size=max(teacher.image_size),
                    export_final=lambda out_dir: export_blip_student(student, teacher, out_dir))
