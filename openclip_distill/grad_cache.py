"""Gradient accumulation that keeps every negative (GradCache; Gao et al., 2021).

Similarity-matrix losses couple all samples of a batch, so summing per-micro-batch losses (what
plain accumulation does) loses the cross-micro-batch negatives. Instead, for K micro-batches:

1. features of every micro-batch without grad (teacher and student; the RNG state is recorded so
   the student's re-forward sees the same dropout / patch dropout),
2. the loss on the concatenated full batch, differentiated w.r.t. the *features* only,
3. each micro-batch re-forwarded with grad and back-propagated with ``sum(f * dL/df)``.

The parameter gradient equals the one of a single batch K times as large.
"""
import torch

from .compute_dtype import at_least_fp32

STUDENT_BATCH_KEYS = ("image_features", "text_features")
STUDENT_SCALAR_KEYS = ("logit_scale", "logit_bias")


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cat(parts):
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def grad_cache_backward(engine, features, loss, micro_batches, is_finite=None):
    """Accumulate the full-batch gradient of ``loss`` over ``micro_batches`` into the student of
    ``engine`` (``openclip_distill.engine``: its ``accumulation_context`` and ``backward``).

    Returns the full-batch loss terms (detached) and whether the step is usable (finite loss);
    nothing is back-propagated when it is not.
    """
    device = features.device
    teacher, student, rng = [], [], []
    for batch in micro_batches:
        images = batch["image"].to(device, non_blocking=True)
        teacher.append(features.batch_teacher_features(batch, images))
        rng.append(_rng_state(device))
        student.append(features.student_features(images, batch["text"], grad=False))

    inputs, leaves = {}, {}
    for k in teacher[0]:
        inputs[k] = _cat([t[k] for t in teacher]) if teacher[0][k].ndim else teacher[0][k]
    for k in STUDENT_BATCH_KEYS + STUDENT_SCALAR_KEYS:
        if k not in student[0] or student[0][k] is None:
            continue
        value = _cat([s[k] for s in student]) if k in STUDENT_BATCH_KEYS else student[0][k]
        leaves[k] = value.detach().requires_grad_(True)
        inputs[k] = leaves[k]
    if "text_features" in features.input_names and "text_features" not in inputs:
        inputs["text_features"] = None
    inputs = {k: v for k, v in inputs.items() if k in features.input_names}

    with features.autocast():
        losses = loss(**inputs, output_dict=True)
    total = sum(losses.values())
    losses = {k: v.detach() for k, v in losses.items()}
    losses["loss"] = total.detach()
    if is_finite is not None and not is_finite(total):
        return losses, False

    used = {k: v for k, v in leaves.items() if k in inputs}
    grads = dict(zip(used, torch.autograd.grad(total, list(used.values()), allow_unused=True)))

    offsets = {k: 0 for k in STUDENT_BATCH_KEYS}
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        images = batch["image"].to(device, non_blocking=True)
        _set_rng_state(rng[j], device)
        with engine.accumulation_context(last=j == last):
            out = features.student_features(images, batch["text"], grad=True)
            surrogate = images.new_zeros((), dtype=torch.float32)
            for k, g in grads.items():
                if g is None or out.get(k) is None:
                    continue
                if k in STUDENT_BATCH_KEYS:
                    n = out[k].shape[0]
                    rows = g[offsets[k]:offsets[k] + n]
                    surrogate = surrogate + (at_least_fp32(out[k]) * at_least_fp32(rows)).sum()
                    offsets[k] += n
                elif j == 0:  # a scalar shared by all micro-batches: its gradient counts once
                    surrogate = surrogate + (at_least_fp32(out[k]) * at_least_fp32(g)).sum()
            engine.backward(surrogate)
    return losses, True
