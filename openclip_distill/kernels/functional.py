"""User-facing functional API; dispatches to an implementation by ``impl``.

Implementations (``IMPLS``):

* ``"naive"``   -- materialised fp32 logits (float64 for float64 features; ``naive.py``); the oracle.
* ``"chunked"`` -- tiled PyTorch ``autograd.Function``s (``chunked.py``), any device, O(N + M) saved state.
* ``"triton"``  -- fused Triton kernels (``triton_ops.py``); CUDA tensors, or CPU under ``TRITON_INTERPRET=1``.
* ``"auto"``    -- ``"triton"`` for CUDA tensors when Triton is importable, else ``"chunked"``. It falls back to
  ``"chunked"`` with one warning when ``TRITON_INTERPRET=1`` leaked into a job with CUDA tensors or a kernel
  fails to compile or launch (then for the rest of the process).

``distributed``: ``None`` (default) = distributed iff ``torch.distributed`` is initialised with world_size > 1;
``True`` = require it; ``False`` = always the local batch only. Distributed, each rank passes its *local*
rows; the right-hand side (texts / ``student_b`` / ``teacher_b``) is all-gathered with gradient and the
rank's loss covers its own rows and its own columns. Then ``mean over ranks of the returned losses`` equals
the single-process loss on the concatenated batch, and the gradient reaching each rank's features is
``world_size`` times the global gradient of those features, which DDP's gradient averaging turns into the
global parameter gradient (OpenCLIP ``ClipLoss(local_loss=True, gather_with_grad=True)`` convention; see
``distributed.py``).
"""
import torch

from . import chunked
from .distributed import GatherCache, World, distributed_layout, gather_sizes, resolve_world
from .layout import LossLayout
from .chunked_ensemble import similarity_kl_ensemble_chunked
from .naive import contrastive_loss_naive, similarity_kl_loss_ensemble_naive, similarity_kl_loss_naive
from .naive_distributed import contrastive_loss_naive_distributed, similarity_kl_loss_ensemble_naive_distributed, \
    similarity_kl_loss_naive_distributed
from .scale import scale_tensor
from .triton_support import auto_can_use_triton, check_triton_usable, is_kernel_failure, record_triton_failure, \
    triton_failed_before

IMPLS = ("auto", "naive", "chunked", "triton")


def resolve_impl(impl: str, like: torch.Tensor) -> str:
    """Validate ``impl`` and resolve ``"auto"`` for tensors like ``like``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if not triton_failed_before() and auto_can_use_triton(like) else "chunked"
    if impl == "triton":
        check_triton_usable(like)
    return impl


def _fused(impl: str):
    if impl == "chunked":
        return chunked.infonce_chunked, chunked.similarity_kl_chunked
    from . import triton_ops
    return triton_ops.infonce_triton, triton_ops.similarity_kl_triton


def _run_fused(requested: str, impl: str, which: int, *args):
    """Run the fused loss ``which`` (0 InfoNCE, 1 KL) of ``impl``; under ``auto`` a failing Triton falls back."""
    if impl == "chunked" or requested != "auto":
        return _fused(impl)[which](*args)
    try:
        return _fused("triton")[which](*args, fallback=True)
    except Exception as err:  # noqa: BLE001 -- compile/launch failure: warn once, use chunked
        if not is_kernel_failure(err):
            raise
        record_triton_failure(err)
        return _fused("chunked")[which](*args)


def contrastive_loss(image_features, text_features, logit_scale, *, impl="auto", distributed=None):
    """Symmetric InfoNCE, equal to OpenCLIP ``ClipLoss`` on one process (CLIP, Radford et al. 2021):

        S = logit_scale * I T^T,   L = 1/2 (CE(S, diag) + CE(S^T, diag))

    Features are used as given (normalise them first). ``I`` and ``T`` are paired: same number of rows.
    ``logit_scale``: python float or 0-d/1-element tensor (receives a gradient when it requires one).
    ``distributed``: see the module docstring.
    """
    requested, impl = impl, resolve_impl(impl, image_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(f"contrastive_loss needs paired features, got {image_features.shape[0]} images and "
                         f"{text_features.shape[0]} texts")
    world = resolve_world(distributed)
    if impl == "naive":
        if world is None:
            return contrastive_loss_naive(image_features, text_features, logit_scale)
        return contrastive_loss_naive_distributed(world, image_features, text_features, logit_scale)
    scale = scale_tensor(logit_scale, image_features)
    texts, layout = _columns_and_layout(world, image_features, text_features, lambda n, m: (0.5 / n, 0.5 / m))
    return _run_fused(requested, impl, 0, image_features, texts, scale, layout)


def cross_entropy_rows(rows, cols, logit_scale, *, impl="auto", distributed=None):
    """One direction of InfoNCE: ``CE_rows(s R C^T) = mean_i (lse_j s r_i.c_j - s r_i.c_i)``.

    Row ``i`` of ``rows`` is paired with row ``i`` of ``cols``. ``impl`` and ``distributed`` as in
    ``contrastive_loss`` (distributed: ``cols`` is all-gathered with gradient, each rank averages its
    own rows and the mean over ranks is the global loss); the fused kernels run rows-only.
    """
    requested, impl = impl, resolve_impl(impl, rows)
    if rows.shape[0] != cols.shape[0]:
        raise ValueError(f"cross_entropy_rows needs paired rows, got {rows.shape[0]} and {cols.shape[0]}")
    scale = scale_tensor(logit_scale, rows)
    cols, layout = _columns_and_layout(resolve_world(distributed), rows, cols, lambda n, m: (1.0 / n, 0.0))
    if impl == "naive":
        logits = scale * rows.float() @ cols.float().T
        targets = torch.arange(layout.col_start, layout.col_stop, device=rows.device)
        return layout.row_weight * torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return _run_fused(requested, impl, 0, rows, cols, scale, layout)


def similarity_kl_loss(student_a, student_b, teacher_a, teacher_b, *, student_scale, teacher_scale,
                       temperature=1.0, bidirectional=True, impl="auto", distributed=None):
    """DIME-FM similarity KL (Sun et al., ICCV 2023), teacher as target, batchmean, no tau^2 factor:

        A = teacher_scale * teacher_a teacher_b^T / tau,   B = student_scale * student_a student_b^T / tau
        L = KL_rows(A, B) [+ KL_rows(A^T, B^T) when bidirectional]

    Rectangular (N != M) allowed; teacher and student widths may differ. ``student_b`` may be ``teacher_b``
    (frozen teacher text tower) or ``student_a`` (self-similarity; both uses get gradient). Gradients reach
    the student tensors and ``student_scale`` (when a tensor requiring grad), never the teacher tensors.
    ``distributed``: see the module docstring.

    A teacher *ensemble* (MobileCLIP, Vasu et al., CVPR 2024): ``teacher_a``, ``teacher_b`` and
    ``teacher_scale`` given as sequences of K (teacher k: ``teacher_a[k]``, ``teacher_b[k]``, its own width and
    ``teacher_scale[k]``); the target is the average of the K softmaxes,
    ``p_i = 1/K sum_k softmax(teacher_scale[k] teacher_a[k][i] teacher_b[k]^T / tau)`` (and over columns).
    A sequence of one is the single-teacher loss, same code path. Ensembles run ``naive`` or ``chunked``
    (``auto`` picks ``chunked``), on one process or distributed.
    """
    teachers_a, teachers_b, teacher_scales = ensemble_members(teacher_a, teacher_b, teacher_scale)
    if len(teachers_a) > 1:
        return _similarity_kl_ensemble(student_a, student_b, teachers_a, teachers_b, teacher_scales, student_scale,
                                       temperature, bidirectional, impl, distributed)
    teacher_a, teacher_b, teacher_scale = teachers_a[0], teachers_b[0], teacher_scales[0]
    requested, impl = impl, resolve_impl(impl, student_a)
    if student_a.shape[0] != teacher_a.shape[0] or student_b.shape[0] != teacher_b.shape[0]:
        raise ValueError("similarity_kl_loss: student_a/teacher_a and student_b/teacher_b must have the same rows, got "
                         f"{tuple(student_a.shape)}, {tuple(teacher_a.shape)}, {tuple(student_b.shape)}, "
                         f"{tuple(teacher_b.shape)}")
    world = resolve_world(distributed)
    if impl == "naive":
        kwargs = dict(student_scale=student_scale, teacher_scale=teacher_scale, temperature=temperature,
                      bidirectional=bidirectional)
        if world is None:
            return similarity_kl_loss_naive(student_a, student_b, teacher_a, teacher_b, **kwargs)
        return similarity_kl_loss_naive_distributed(world, student_a, student_b, teacher_a, teacher_b, **kwargs)
    inv_tau = 1.0 / float(temperature)
    student_mult = scale_tensor(student_scale, student_a) * inv_tau
    teacher_mult = scale_tensor(teacher_scale, teacher_a).detach() * inv_tau
    teacher_a = teacher_a.detach() if teacher_a.requires_grad else teacher_a
    teacher_b = teacher_b.detach() if teacher_b.requires_grad else teacher_b
    weights = (lambda n, m: (1.0 / n, 1.0 / m)) if bidirectional else (lambda n, m: (1.0 / n, 0.0))
    gathered, layout = _columns_and_layout(world, student_a, [student_b, teacher_b], weights)
    return _run_fused(requested, impl, 1, student_a, gathered[0], teacher_a, gathered[1], student_mult, teacher_mult,
                      layout)


def ensemble_members(teacher_a, teacher_b, teacher_scale):
    """``(teachers_a, teachers_b, teacher_scales)`` as lists of K: a tensor (one teacher) or a sequence
    (an ensemble) each; a python float scale serves every teacher."""
    as_list = lambda x: [x] if isinstance(x, torch.Tensor) else list(x)  # noqa: E731
    teachers_a, teachers_b = as_list(teacher_a), as_list(teacher_b)
    scales = [teacher_scale] * len(teachers_a) if isinstance(teacher_scale, (int, float)) else as_list(teacher_scale)
    if not len(teachers_a) == len(teachers_b) == len(scales) >= 1:
        raise ValueError(f"similarity_kl_loss: a teacher ensemble needs as many teacher_a, teacher_b and "
                         f"teacher_scale entries, got {len(teachers_a)}, {len(teachers_b)} and {len(scales)}")
    return teachers_a, teachers_b, scales


def check_ensemble_impl(impl: str) -> str:
    """The implementation a teacher ensemble runs with (``auto`` -> ``chunked``); ``triton`` is refused in one
    line naming the flags."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        raise ValueError("similarity_kl_loss: --distill-teacher with several teachers (an ensemble) needs --loss-impl "
                         "chunked|naive (or auto); the Triton kernels take one teacher")
    return "chunked" if impl == "auto" else impl


def _similarity_kl_ensemble(student_a, student_b, teachers_a, teachers_b, teacher_scales, student_scale, temperature,
                            bidirectional, impl, distributed):
    impl = check_ensemble_impl(impl)
    for k, (a, b) in enumerate(zip(teachers_a, teachers_b)):
        if student_a.shape[0] != a.shape[0] or student_b.shape[0] != b.shape[0]:
            raise ValueError(f"similarity_kl_loss: teacher {k} of the ensemble has {a.shape[0]} x {b.shape[0]} "
                             f"rows, the student {student_a.shape[0]} x {student_b.shape[0]}")
    world = resolve_world(distributed)
    if impl == "naive":
        kwargs = dict(student_scale=student_scale, teacher_scales=teacher_scales, temperature=temperature,
                      bidirectional=bidirectional)
        if world is None:
            return similarity_kl_loss_ensemble_naive(student_a, student_b, teachers_a, teachers_b, **kwargs)
        return similarity_kl_loss_ensemble_naive_distributed(world, student_a, student_b, teachers_a, teachers_b,
                                                             **kwargs)
    inv_tau = 1.0 / float(temperature)
    student_mult = scale_tensor(student_scale, student_a) * inv_tau
    teacher_mults = [scale_tensor(t, a).detach() * inv_tau for t, a in zip(teacher_scales, teachers_a)]
    teachers_a = [a.detach() for a in teachers_a]
    weights = (lambda n, m: (1.0 / n, 1.0 / m)) if bidirectional else (lambda n, m: (1.0 / n, 0.0))
    gathered, layout = _columns_and_layout(world, student_a, [student_b, *[b.detach() for b in teachers_b]], weights)
    return similarity_kl_ensemble_chunked(student_a, gathered[0], teachers_a, gathered[1:], student_mult,
                                          teacher_mults, layout)


def _columns_and_layout(world: World, rows: torch.Tensor, columns, weights):
    """Column tensors of the local block (gathered when distributed) and its ``LossLayout``.

    ``weights(N, M)`` gives the single-process (row, column) weights for global sizes N, M.
    """
    single = isinstance(columns, torch.Tensor)
    column_list = [columns] if single else list(columns)
    num_cols = column_list[0].shape[0]
    if world is None:
        row_weight, col_weight = weights(rows.shape[0], num_cols)
        layout = LossLayout.local(num_cols, row_weight=row_weight, col_weight=col_weight)
    else:
        row_sizes, col_sizes = gather_sizes(world, [rows.shape[0], num_cols], rows.device)
        row_weight, col_weight = weights(sum(row_sizes), sum(col_sizes))
        layout = distributed_layout(world, row_sizes, col_sizes, row_weight_global=row_weight,
                                    col_weight_global=col_weight)
        gather = GatherCache(world, col_sizes)
        column_list = [gather(c) for c in column_list]
    return (column_list[0] if single else column_list), layout
