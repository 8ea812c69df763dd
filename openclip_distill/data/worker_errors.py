"""One-line user errors from DataLoader workers.

PyTorch re-raises an exception from a worker with the same type but a message holding the whole
worker traceback. ``main`` prints ``str(DistillUsageError)`` as one line, so the data layer
strips that back to the original message.
"""
from typing import Iterable, Iterator, TypeVar

from ..errors import DistillUsageError

T = TypeVar("T")
_MARKER = "DistillUsageError: "


def original_message(message: str) -> str:
    """The original message of a worker-wrapped DistillUsageError (``message`` if not wrapped)."""
    if "Original Traceback" not in message:
        return message
    lines = message.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _MARKER in lines[i]:
            return " ".join(part.strip() for part in
                            [lines[i].split(_MARKER, 1)[1]] + lines[i + 1:]).strip()
    return lines[-1].strip()


def unwrap_worker_errors(items: Iterable[T]) -> Iterator[T]:
    """Iterate ``items``; a DistillUsageError raised in a worker comes out with its own message."""
    try:
        yield from items
    except DistillUsageError as err:
        message = str(err)
        clean = original_message(message)
        if clean == message:
            raise
        raise DistillUsageError(clean) from None
