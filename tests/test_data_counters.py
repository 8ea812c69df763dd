"""Skip counters shared between the main process and forked workers."""
import multiprocessing

import pytest

from openclip_distill.data.counters import DEFAULT_SKIP_REASONS, SkipCounters


def _bump(counters, reason, n):
    for _ in range(n):
        counters.add(reason)


def test_counts_and_snapshot():
    c = SkipCounters()
    assert set(DEFAULT_SKIP_REASONS) <= set(c.snapshot())
    assert all(v == 0 for v in c.snapshot().values())
    c.add("corrupt_image")
    c.add("corrupt_image", 2)
    c.add("empty_text")
    snap = c.snapshot()
    assert snap["corrupt_image"] == 3 and snap["empty_text"] == 1 and c.total() == 4
    assert c["corrupt_image"] == 3
    c.reset()
    assert c.total() == 0


def test_unknown_reason_and_custom_reasons():
    c = SkipCounters(reasons=["too_small"])
    c.add("too_small")
    assert c.snapshot()["too_small"] == 1
    with pytest.raises(KeyError, match="unknown skip reason"):
        c.add("typo_reason")


def test_counts_from_forked_workers_are_visible():
    ctx = multiprocessing.get_context("fork")
    c = SkipCounters()
    procs = [ctx.Process(target=_bump, args=(c, "corrupt_image", 50)) for _ in range(3)]
    for p in procs:
        p.start()
    c.add("corrupt_image", 7)
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert c.snapshot()["corrupt_image"] == 157
