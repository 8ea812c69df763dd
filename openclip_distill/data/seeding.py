"""Stable seed derivation shared by the data pipeline.

Python's ``hash()`` is salted per process (PYTHONHASHSEED), so it cannot be used for anything that
must agree between DataLoader workers, ranks or a resumed run. ``derive_seed`` hashes its parts with
BLAKE2b instead: the same parts give the same 63-bit seed on every machine and in every process.
"""
import hashlib

_SEED_MASK = (1 << 63) - 1


def derive_seed(*parts) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (ints / strings; each is ``str()``-ed).

    Parts are length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` give different seeds.
    The result fits ``torch.Generator.manual_seed`` and ``random.Random``.
    """
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        raw = str(part).encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return int.from_bytes(h.digest(), "little") & _SEED_MASK


def worker_id_and_count():
    """``(worker_id, num_workers)`` of the current DataLoader worker, ``(0, 1)`` in the main process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    if info is None:
        return 0, 1
    return info.id, info.num_workers
