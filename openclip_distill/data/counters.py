"""Counts of skipped samples, shared between the main process and its DataLoader workers.

The counts live in one ``multiprocessing.Array`` of int64 created in ``__init__``. Create the
counter BEFORE the DataLoader starts its workers: forked (or spawned) workers then share the same
memory and every ``add`` made in a worker is visible in ``snapshot()`` in the main process.
Counts are per process group (per rank); all-reduce them yourself if you want a global figure.
"""
import logging
import multiprocessing
from typing import Dict, Iterable, Optional

# Every reason the data layer itself can report.
DEFAULT_SKIP_REASONS = (
    "corrupt_image",  # image bytes present but not decodable
    "missing_image",  # sample without any jpg/jpeg/png/webp member
    "missing_text",  # paired sample without the caption member
    "empty_text",  # caption / sentence that is empty after stripping whitespace
    "bad_text_record",  # jsonl line with bad JSON or without the text field, undecodable bytes
    "bad_shard",  # a shard / file that could not be opened or read to the end
)


class SkipCounters:
    """Per-reason counters of skipped samples, safe across forked DataLoader workers.

    >>> counters = SkipCounters()
    >>> counters.add("corrupt_image")
    >>> counters.snapshot()["corrupt_image"]
    1
    """

    def __init__(self, reasons: Optional[Iterable[str]] = None, ctx=None):
        names = list(DEFAULT_SKIP_REASONS)
        for reason in reasons or ():
            if reason not in names:
                names.append(str(reason))
        self.reasons = tuple(names)
        self._index = {name: i for i, name in enumerate(self.reasons)}
        ctx = ctx or multiprocessing
        self._counts = ctx.Array("q", len(self.reasons), lock=True)
        self._warned = set()  # per process: log the first skip of each reason at WARNING level

    def add(self, reason: str, n: int = 1, detail: str = "") -> None:
        """Count ``n`` skipped samples for ``reason`` (one of ``self.reasons``)."""
        try:
            idx = self._index[reason]
        except KeyError:
            raise KeyError(f"unknown skip reason {reason!r}; known: {', '.join(self.reasons)}") from None
        with self._counts.get_lock():
            self._counts[idx] += int(n)
        if reason not in self._warned:
            self._warned.add(reason)
            logging.warning("data: skipping sample(s): %s%s (further skips are counted, not logged)",
                            reason, f" ({detail})" if detail else "")
        elif detail:
            logging.debug("data: skipped %s (%s)", reason, detail)

    def __getitem__(self, reason: str) -> int:
        return int(self._counts[self._index[reason]])

    def snapshot(self) -> Dict[str, int]:
        """``{reason: count}`` for all reasons (zeros included), read atomically."""
        with self._counts.get_lock():
            values = list(self._counts[:])
        return {name: int(v) for name, v in zip(self.reasons, values)}

    def total(self) -> int:
        return sum(self.snapshot().values())

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(self.reasons)):
                self._counts[i] = 0

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.snapshot().items() if v}
        return f"SkipCounters({nonzero})"
