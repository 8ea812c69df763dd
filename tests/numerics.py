"""Norm-relative comparisons for results that agree in exact arithmetic but are rounded differently.

Two computations of the same quantity in another order (micro-batches vs one batch, two processes vs
one, ZeRO vs DDP, cached vs live embeddings) agree only up to rounding, and which entries differ most
depends on the CPU's kernels and thread count. An elementwise check (``assert_close(rtol, atol)``)
fails on entries that are small next to the terms they were summed from (cancellation), so these
helpers bound a whole tensor relative to its norm instead:

    ||a - b||_F <= tol * max(||a||_F, ||b||_F)

with ``tol`` derived from the computation (``rounding_tolerance``), never guessed. Where the two
computations are truly identical (a bit-for-bit replay) tests compare exactly instead.
"""
import math

import torch


def rounding_tolerance(dtype, *, terms, amplification=1.0, computations=2) -> float:
    """Relative (norm) error bound of ``computations`` independent roundings of one result:

        tol = computations * amplification * sqrt(terms) * eps(dtype)

    ``sqrt(terms) * eps``: a length-``terms`` accumulation has relative error of order sqrt(n) u
    (u = eps / 2, the unit roundoff) with high probability (probabilistic rounding-error analysis,
    Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019), instead of the worst case n u; ``terms`` is the
    longest accumulation in the computation. ``amplification``: how much a relative error of the
    inputs can grow in the output (e.g. ``s / tau`` for a softmax over cosine similarities times a
    logit scale ``s`` at temperature ``tau``). Each of the two results is within half of ``tol`` of
    the exact value, hence within ``tol`` of each other.
    """
    return computations * amplification * math.sqrt(terms) * torch.finfo(dtype).eps


def relative_error(a, b) -> float:
    """``||a - b||_F / max(||a||_F, ||b||_F)`` in float64 (0 when both are zero)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    scale = max(float(a.norm()), float(b.norm()))
    diff = float((a - b).norm())
    return 0.0 if diff == 0 else diff / scale if scale else math.inf


def assert_close_in_norm(a, b, tol, what=""):
    """``||a - b|| <= tol * max(||a||, ||b||)`` (see the module docstring)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    err = relative_error(a, b)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g} (norm {float(b.double().norm()):.3g})"


def assert_tensors_close_in_norm(a: dict, b: dict, tol, what=""):
    """``assert_close_in_norm`` on every tensor of two dicts with the same keys (e.g. state dicts)."""
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        assert_close_in_norm(a[k], b[k], tol, f"{what} {k}")


def assert_rows_close_in_norm(a, b, tol, what=""):
    """``assert_close_in_norm`` row by row (one embedding per row: each is checked against its own norm)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    for i in range(a.shape[0]):
        assert_close_in_norm(a[i], b[i], tol, f"{what} row {i}")
