"""Which rows/columns of a similarity matrix this process owns, and how they are weighted.

The fused losses see a *local* block ``S = rows @ cols^T`` (``n`` local rows against all ``M`` columns).
A ``LossLayout`` says how that block's per-row and per-column terms enter the loss:

    loss = row_weight * sum_{local rows i} term_row(i) + col_weight * sum_{j in [col_start, col_stop)} term_col(j)

On one process ``rows`` is the whole left side and ``[col_start, col_stop) = [0, M)``; the weights are
``1/N``, ``1/M`` (batch means). In a distributed run the columns are the gathered right side, every rank
owns the columns that came from its own rows, the per-column softmax statistics are completed across
ranks with ``reduce_column_stats`` and the weights carry the factor ``world_size`` (see
``distributed.py`` for the exact convention). ``col_weight == 0`` means "rows only" (no column stats).
"""
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class LossLayout:
    row_weight: float
    col_weight: float
    col_start: int
    col_stop: int
    # reduce_column_stats(maxima: list[Tensor[M]], sums: list[list[Tensor[M]]]) -> same structure, merged
    # over all ranks; ``None`` on a single process.
    reduce_column_stats: Optional[Callable] = None

    @property
    def has_columns(self) -> bool:
        return self.col_weight != 0.0

    def tile_weights(self):
        """``(w, r)`` with ``row_weight * P + col_weight * Q = w * (Q + r * P)``; rows only: ``(row_weight, 1)``.

        The fused backwards form the tile gradient ``Q + r P`` (entries O(1)) and apply the loss weight ``w``
        (~1/N) to the O(N d) products afterwards: multiplied into a 16-bit tile, a weight of 1/65536 would push
        most entries into fp16's subnormal range."""
        if self.has_columns:
            return self.col_weight, self.row_weight / self.col_weight
        return self.row_weight, 1.0

    def paired_columns(self, cols, num_rows: int):
        """Columns paired with the local rows (InfoNCE targets): ``cols[col_start + i]`` for local row i."""
        if self.col_stop - self.col_start != num_rows:
            raise ValueError(f"InfoNCE pairs local rows with owned columns, got {num_rows} rows and "
                             f"{self.col_stop - self.col_start} owned columns")
        return cols[self.col_start:self.col_stop]

    @staticmethod
    def local(num_cols: int, *, row_weight: float, col_weight: float) -> "LossLayout":
        """Single-process layout: every column is owned, no cross-process reduction."""
        return LossLayout(row_weight=row_weight, col_weight=col_weight, col_start=0, col_stop=num_cols)
