"""The seam between a batch and a loss: :class:`DistillTask`.

A task turns one batch into the keyword inputs of a distillation loss. It asks the teacher side for
targets (a live :class:`~openclip_distill.teachers.Teacher`, or embeddings cached beside the data)
and the student side for outputs, and hands the loss only the keywords its ``forward`` declares
among:

    image_features, text_features, logit_scale, logit_bias                          (student, with grad)
    dist_image_features, dist_text_features, dist_logit_scale, dist_logit_bias      (teacher, no grad)

With a teacher ensemble (``--distill-teacher A,B``) every ``dist_*`` input is a tuple with one entry per
teacher (``dist_image_features[k]``: teacher k's ``[N, D_k]`` features, ``dist_logit_scale[k]`` its scale);
with one teacher they are plain tensors, as before.

Which modalities a step carries follows the loss (``loss_modalities``): a loss that only uses text
trains from sentences alone, one that only uses images from images alone.
"""
import inspect
from typing import Optional, Sequence

import torch

from .teachers import IMAGE, TEXT

BOTH = frozenset({IMAGE, TEXT})


def loss_input_names(loss) -> set:
    return set(inspect.signature(loss.forward).parameters)


def loss_modalities(loss) -> frozenset:
    """The modalities a loss consumes: its ``modalities`` attribute (a set of "image"/"text"), both by default."""
    return frozenset(getattr(loss, "modalities", BOTH))


def loss_needs_paired_data(loss_or_cls) -> bool:
    return bool(getattr(loss_or_cls, "requires_paired_data", False))


class LiveTeacherTargets:
    """Targets from a frozen :class:`Teacher`, computed on the same views the student sees."""

    def __init__(self, teacher, device):
        self.teacher = teacher
        self.scale = _scalars(teacher.logit_scale, device)
        self.bias = None if teacher.logit_bias is None else _scalars(teacher.logit_bias, device)

    def __call__(self, batch, images, modalities) -> dict:
        out = {}
        if IMAGE in modalities:
            out["dist_image_features"] = self.teacher.encode_image(images)
        if TEXT in modalities:
            out["dist_text_features"] = self.teacher.encode_text(batch["text"])
        return self._with_scales(out)

    def _with_scales(self, out):
        out["dist_logit_scale"] = self.scale
        if self.bias is not None:
            out["dist_logit_bias"] = self.bias
        return out


def _scalars(values, device):
    """A 0-d fp32 tensor for a float, a tuple of them for a sequence (one per ensemble member)."""
    if isinstance(values, (tuple, list)):
        return tuple(torch.tensor(float(v), dtype=torch.float32, device=device) for v in values)
    return torch.tensor(float(values), dtype=torch.float32, device=device)


class CachedTeacherTargets(LiveTeacherTargets):
    """Targets read from the batch (``dist_image_features``/``dist_text_features``, written by the
    teacher-embedding cache loader) with the cached teacher's scale and bias. A cached ensemble stores its
    members' embeddings side by side (``embed_dims``: each member's width); they are split back into one
    tensor per member."""

    def __init__(self, logit_scale, logit_bias, device, embed_dims: Optional[Sequence[int]] = None):
        self.teacher = None
        self.device = device
        self.embed_dims = None if embed_dims is None else [int(d) for d in embed_dims]
        self.scale = _scalars(logit_scale, device)
        self.bias = None if logit_bias is None else _scalars(logit_bias, device)

    def __call__(self, batch, images, modalities) -> dict:
        out = {}
        for key, modality in (("dist_image_features", IMAGE), ("dist_text_features", TEXT)):
            if modality in modalities:
                features = batch[key].to(self.device, torch.float32, non_blocking=True)
                out[key] = features if self.embed_dims is None else tuple(features.split(self.embed_dims, dim=1))
        return self._with_scales(out)


class DistillTask:
    """Batch -> loss keywords. ``student`` is an :class:`~openclip_distill.student.OpenCLIPStudent`,
    ``targets`` a :class:`LiveTeacherTargets` or :class:`CachedTeacherTargets`.

    ``train_student_text``: the student's own text tower runs (and trains); otherwise the loss gets
    the teacher's text targets only (a student that reuses the teacher's frozen text tower).
    """

    def __init__(self, student, targets, loss, *, device, train_student_text=False):
        self.student, self.targets, self.loss = student, targets, loss
        self.device = torch.device(device)
        self.input_names = loss_input_names(loss)
        self.modalities = loss_modalities(loss)
        self.student_text = TEXT in self.modalities and (loss_needs_paired_data(loss) or train_student_text)
        self.uses_student_scale = bool({"logit_scale", "logit_bias"} & self.input_names)

    @property
    def autocast(self):
        return self.student.autocast

    def images_of(self, batch):
        """The batch's views on the device (None when the step carries no images)."""
        if IMAGE not in self.modalities or batch.get("image") is None:
            return None
        return batch["image"].to(self.device, non_blocking=True)

    def teacher_outputs(self, batch, images) -> dict:
        return self.targets(batch, images, self.modalities)

    def student_outputs(self, batch, images, grad: bool = True) -> dict:
        texts = batch["text"] if self.student_text else None
        return self.student(images, texts, grad=grad)

    def select(self, inputs: dict) -> dict:
        """Only what the loss declares; a declared student text input is None when the text tower is frozen."""
        out = {k: v for k, v in inputs.items() if k in self.input_names}
        if "text_features" in self.input_names and "text_features" not in out:
            out["text_features"] = None
        return out

    def __call__(self, batch) -> dict:
        images = self.images_of(batch)
        inputs = self.teacher_outputs(batch, images)
        inputs.update(self.student_outputs(batch, images))
        return self.select(inputs)


def create_task(student_model, student_tokenizer, loss, teacher=None, *, cached_logit_scale=None,
                cached_logit_bias=None, cached_embed_dims=None, device="cpu", precision="fp32",
                train_student_text=False) -> DistillTask:
    """A :class:`DistillTask` for an OpenCLIP ``student_model`` and either a live ``teacher``
    (:class:`~openclip_distill.teachers.Teacher` or ``TeacherEnsemble``) or cached targets
    (``cached_logit_scale`` / ``cached_logit_bias`` of the cache's teacher, tuples for a cached ensemble
    whose members' widths are ``cached_embed_dims``; the features come with each batch)."""
    from .student import OpenCLIPStudent

    if teacher is not None:
        targets = LiveTeacherTargets(teacher, device)
    elif cached_logit_scale is not None:
        targets = CachedTeacherTargets(cached_logit_scale, cached_logit_bias, device, cached_embed_dims)
    else:
        raise ValueError("create_task needs a teacher or the cached teacher's logit scale")
    student = OpenCLIPStudent(student_model, student_tokenizer, device=device, precision=precision)
    return DistillTask(student, targets, loss, device=device, train_student_text=train_student_text)
