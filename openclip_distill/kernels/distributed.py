"""Data-parallel similarity losses: local rows against the gathered other side.

Each rank r holds ``n_r`` rows of the left side (images / ``student_a``) and ``m_r`` rows of the right side
(texts / ``student_b``). The right side is all-gathered *with gradient*; rank r computes the block
``S_r = rows_r @ cols_all^T`` only. Per-row statistics are complete locally; per-column log-sum-exp
statistics are completed with two small all-reduces (MAX, then SUM of the re-shifted sums, O(M) floats),
so no rank ever holds more than its own ``n_r x M`` block, tiled.

Convention (the same as OpenCLIP ``ClipLoss(local_loss=True, gather_with_grad=True)``):

* Rank r's loss ``L_r`` is the sum of its own rows' terms and its own columns' terms with weights
  ``world_size / N`` and ``world_size / M`` (N, M the global sizes), i.e. the mean over local rows (and
  local columns) when all ranks hold equally many. Hence ``mean_r L_r == L_global``, the single-process
  loss on the concatenated batch.
* Backward on every rank delivers to rank r's features ``d(sum_r' L_r')/dx_r = world_size * dL_global/dx_r``
  (the gather's backward sums every rank's column gradient onto the owner). DDP then *averages* parameter
  gradients over ranks, which turns this into exactly ``dL_global/dtheta``. A replicated logit scale gets
  ``dL_r/ds`` on rank r, and ``mean_r dL_r/ds == dL_global/ds`` -- again what DDP's averaging computes.

``torch.distributed.nn.all_gather`` has the same summing backward; we use our own so that ranks may hold
different numbers of rows and tensors without grad are gathered without autograd.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .layout import LossLayout


@dataclass(frozen=True)
class World:
    size: int
    rank: int


def resolve_world(distributed: Optional[bool]) -> Optional[World]:
    """``None``: distributed iff torch.distributed is initialised with world_size > 1; ``True``: require it;
    ``False``: always local. Returns ``None`` for a local computation."""
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised and dist.get_world_size() > 1
    if not distributed:
        return None
    if not initialised:
        raise RuntimeError("distributed=True but torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first, or pass distributed=False)")
    return World(size=dist.get_world_size(), rank=dist.get_rank())


def gather_sizes(world: World, counts, device) -> list:
    """Per-rank row counts (ranks may differ, e.g. a last partial batch), one list per entry of ``counts``."""
    local = torch.tensor(list(counts), device=device, dtype=torch.int64)
    sizes = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(sizes, local)
    table = torch.stack(sizes).cpu().tolist()
    return [[row[k] for row in table] for k in range(len(counts))]


def _all_gather_rows(tensor: torch.Tensor, sizes: list) -> torch.Tensor:
    """Concatenate every rank's rows (padding to the largest count for the collective)."""
    largest = max(sizes)
    padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class AllGatherRowsWithGrad(torch.autograd.Function):
    """``y = cat_r x_r``; backward sums ``dy`` over ranks and returns this rank's slice (reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor, sizes, rank):
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.contiguous()
        sizes, rank = ctx.sizes, ctx.rank
        if len(set(sizes)) == 1 and dist.get_backend() == "nccl":
            mine = grad.new_empty((sizes[rank],) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(mine, grad, op=dist.ReduceOp.SUM)
            return mine, None, None
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(sizes[:rank])
        return grad[start: start + sizes[rank]], None, None


def gather_rows(world: World, tensor: torch.Tensor, sizes: list) -> torch.Tensor:
    """All-gather rows; with autograd (summing backward) only when ``tensor`` requires grad."""
    if tensor.requires_grad and torch.is_grad_enabled():
        return AllGatherRowsWithGrad.apply(tensor, sizes, world.rank)
    with torch.no_grad():
        return _all_gather_rows(tensor, sizes)


class GatherCache:
    """Gathers each distinct tensor once (``student_b is teacher_b``, ``student_b is student_a``)."""

    def __init__(self, world: World, sizes: list):
        self.world, self.sizes, self._done = world, sizes, {}

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in self._done:
            self._done[id(tensor)] = (tensor, gather_rows(self.world, tensor, self.sizes))
        return self._done[id(tensor)][1]


def reduce_column_stats(maxima, sums):
    """Complete per-column online-softmax statistics over all ranks: two all-reduces of O(M) floats.

    ``maxima``: list of G tensors [M]; ``sums``: list of G lists of tensors [M] shifted by the matching max.
    """
    local_max = torch.stack(maxima)
    global_max = local_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
    factor = torch.exp(local_max - global_max)
    flat = torch.stack([s * factor[g] for g, group in enumerate(sums) for s in group])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    merged, k = [], 0
    for group in sums:
        merged.append(list(flat[k: k + len(group)]))
        k += len(group)
    return list(global_max), merged


def distributed_layout(world: World, row_sizes: list, col_sizes: list, *, row_weight_global: float,
                       col_weight_global: float) -> LossLayout:
    """Layout of rank ``world.rank``'s block: its columns are the ones gathered from its own rows.

    ``*_weight_global`` are the single-process weights on the concatenated batch (e.g. 1/N); each is
    multiplied by ``world.size`` so that ``mean_r L_r == L_global`` (see module docstring).
    """
    col_start = sum(col_sizes[: world.rank])
    return LossLayout(row_weight=row_weight_global * world.size, col_weight=col_weight_global * world.size,
                      col_start=col_start, col_stop=col_start + col_sizes[world.rank],
                      reduce_column_stats=reduce_column_stats)
