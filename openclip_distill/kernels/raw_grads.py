"""Turn raw tile-gradient sums into input gradients, in place (shared by ``chunked`` and ``triton``).

With ``S = s * X``, ``X = rows cols^T`` and ``G = dL/dS`` the fused backward passes accumulate fp32
``R = G @ cols`` and ``C = G^T @ rows``, up to a common factor ``w``. Then

    dL/drows = s w g R,   dL/dcols = s w g C,   dL/ds = w g sum_ij G_ij X_ij = w g sum_i rows_i . R_i

with ``g`` the upstream gradient (the loss is a scalar). ``R`` and ``C`` are scaled in place and returned
as the gradients when the inputs are fp32, so no extra N x d buffer is allocated.
"""
import torch


def finish_grads(grad_output, weight, scale, rows_fp32, raw_rows, raw_cols, rows, cols, need_rows, need_scale):
    """``(d rows, d cols, d scale)`` in the inputs' dtypes; ``None`` where not needed / not computed."""
    upstream = grad_output * weight
    grad_scale = None
    if need_scale:
        grad_scale = torch.dot(rows_fp32.reshape(-1), raw_rows.reshape(-1)) * upstream
    factor = scale * upstream
    grad_rows = raw_rows.mul_(factor).to(rows.dtype) if need_rows else None
    grad_cols = raw_cols.mul_(factor).to(cols.dtype) if raw_cols is not None else None
    return grad_rows, grad_cols, grad_scale
