"""Which part of a sentence corpus one of ``n`` parallel streams (ranks x DataLoader workers) reads.

With at least ``n`` read units (files or line ranges) every stream takes whole units ``s, s+n, ...``
of the shuffled order; with fewer units every stream reads every ``n``-th line of every unit. A
stream whose share turns out empty (a tiny corpus) reads the whole corpus instead, with a warning:
the live and the cached sentence streams follow this same rule.
"""
import logging
from typing import List, Sequence, Tuple


def stream_share(order: Sequence[int], stream: int, num_streams: int) -> Tuple[List[int], int, int]:
    """``(units, stride, offset)``: the units stream ``stream`` of ``num_streams`` reads, and which lines of them."""
    if num_streams <= 1:
        return list(order), 1, 0
    if len(order) >= num_streams:
        return list(order[stream::num_streams]), 1, 0
    return list(order), num_streams, stream


def warn_empty_share(flag: str, stream: int, num_streams: int) -> None:
    logging.warning("%s: text stream %d/%d got no sentence from its share of the corpus; it reads the whole "
                    "corpus instead", flag, stream, num_streams)
