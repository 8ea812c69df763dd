"""Gradient accumulation that keeps every negative (GradCache; Gao et al., 2021).

Similarity-matrix losses couple all samples of a batch, so summing per-micro-batch losses (what
plain accumulation does) loses the cross-micro-batch negatives. Instead, for K micro-batches:

1. outputs of every micro-batch without grad (teacher and student; the RNG state is recorded so
   the student's re-forward sees the same dropout / patch dropout),
2. the loss on the concatenated full batch, differentiated w.r.t. the student *outputs* (and the
   loss's own trainable parameters, e.g. feature adapters),
3. each micro-batch re-forwarded with grad and back-propagated with ``sum(f * dL/df)``.

The parameter gradient equals the one of a single batch K times as large. Outputs are combined by
shape, not by name: a tensor with a batch dimension is concatenated, a 0-d tensor (a logit scale)
is shared by all micro-batches, a tuple (one entry per ensemble teacher) is combined entry by entry, so
any loss input a task produces works.
"""
import torch

from .compute_dtype import at_least_fp32

def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _combine(parts):
    """Concatenate per-micro-batch tensors along the batch; a 0-d tensor is shared (the first one); tuples
    (a teacher ensemble's per-member outputs) combine entry by entry."""
    if isinstance(parts[0], tuple):
        return tuple(_combine([p[i] for p in parts]) for i in range(len(parts[0])))
    if parts[0] is None or not torch.is_tensor(parts[0]):
        return parts[0]
    if parts[0].ndim == 0:
        return parts[0]
    return torch.cat(parts)


def grad_cache_backward(engine, task, loss, micro_batches, is_finite=None):
    """Accumulate the full-batch gradient of ``loss`` over ``micro_batches`` into the student of
    ``engine`` (``openclip_distill.engine``: its ``accumulation_context`` and ``backward``), through
    ``task`` (:class:`openclip_distill.task.DistillTask`).

    Returns the full-batch loss terms (detached) and whether the step is usable (finite loss);
    nothing is back-propagated when it is not.
    """
    device = task.device
    teacher, student, rng = [], [], []
    for batch in micro_batches:
        images = task.images_of(batch)
        teacher.append(task.teacher_outputs(batch, images))
        rng.append(_rng_state(device))
        student.append(task.student_outputs(batch, images, grad=False))

    inputs = {k: _combine([t[k] for t in teacher]) for k in teacher[0]}
    leaves = {}
    for k in student[0]:
        value = _combine([s[k] for s in student])
        if torch.is_tensor(value) and value.is_floating_point():
            leaves[k] = value.detach().requires_grad_(True)
            inputs[k] = leaves[k]
    inputs = task.select(inputs)

    with task.autocast():
        losses = loss(**inputs, output_dict=True)
    total = sum(losses.values())
    losses = {k: v.detach() for k, v in losses.items()}
    losses["loss"] = total.detach()
    if is_finite is not None and not is_finite(total):
        return losses, False

    used = {k: v for k, v in leaves.items() if k in inputs}
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, list(used.values()) + loss_params, allow_unused=True)
    loss_grads = [(p, g) for p, g in zip(loss_params, grads[len(used):]) if g is not None]
    grads = dict(zip(used, grads[:len(used)]))

    offsets = {k: 0 for k in grads}
    last = len(micro_batches) - 1
    for j, batch in enumerate(micro_batches):
        images = task.images_of(batch)
        _set_rng_state(rng[j], device)
        with engine.accumulation_context(last=j == last):
            out = task.student_outputs(batch, images, grad=True)
            surrogate = torch.zeros((), dtype=torch.float32, device=device)
            for k, g in grads.items():
                if g is None or out.get(k) is None:
                    continue
                if out[k].ndim:
                    n = out[k].shape[0]
                    rows = g[offsets[k]:offsets[k] + n]
                    surrogate = surrogate + (at_least_fp32(out[k]) * at_least_fp32(rows)).sum()
                    offsets[k] += n
                elif j == 0:  # a scalar shared by all micro-batches: its gradient counts once
                    surrogate = surrogate + (at_least_fp32(out[k]) * at_least_fp32(g)).sum()
            if j == 0:  # the loss's own parameters (once), through the engine so AMP scaling applies
                for p, g in loss_grads:
                    surrogate = surrogate + (at_least_fp32(p) * at_least_fp32(g)).sum()
            engine.backward(surrogate)
    return losses, True
