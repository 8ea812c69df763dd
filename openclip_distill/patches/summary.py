"""One row per check step, printed as a plain-text table."""
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    seconds: Optional[float] = None  # None: not timed on its own (e.g. one comparison of a parity run)


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t()`` gives the elapsed seconds."""
    start = time.perf_counter()
    end = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def format_table(steps: List[Step]) -> str:
    rows = [("step", "result", "time", "detail")]
    rows += [(s.name, "ok" if s.ok else "FAIL", "" if s.seconds is None else f"{s.seconds:.1f}s", s.detail)
             for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    failed = sum(not s.ok for s in steps)
    lines.append(f"{len(steps) - failed} of {len(steps)} steps passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)
