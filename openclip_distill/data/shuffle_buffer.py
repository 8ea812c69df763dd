"""A seeded streaming shuffle buffer (bounded memory, explicit ``random.Random``)."""
import random
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_END = object()


def _pop_random(buf: list, rng: random.Random):
    idx = rng.randrange(len(buf))
    buf[idx], buf[-1] = buf[-1], buf[idx]
    return buf.pop()


def buffer_shuffle(items: Iterable[T], bufsize: int, rng: random.Random,
                   initial: Optional[int] = None) -> Iterator[T]:
    """Yield ``items`` in a pseudo-random order, holding at most ``bufsize`` of them.

    Output starts once ``initial`` items (default ``bufsize``) are buffered; while the buffer is
    below ``bufsize`` it keeps growing (two items in, one out). At the end the rest is drained.
    ``bufsize <= 1`` keeps the input order. The output depends only on the input sequence and
    the state of ``rng``.
    """
    if bufsize <= 1:
        yield from items
        return
    initial = bufsize if initial is None else max(1, min(int(initial), bufsize))
    it = iter(items)
    buf = []
    for item in it:
        buf.append(item)
        if len(buf) < bufsize:
            extra = next(it, _END)
            if extra is not _END:
                buf.append(extra)
        if len(buf) >= initial:
            yield _pop_random(buf, rng)
    while buf:
        yield _pop_random(buf, rng)
