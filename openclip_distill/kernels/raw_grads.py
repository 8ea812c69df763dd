"""Turn raw tile-gradient sums into input gradients (shared by ``chunked`` and ``triton``).

With ``S = s * X``, ``X = rows cols^T`` and ``G = dL/dS`` the fused backward passes accumulate
``R = G @ cols`` and ``C = G^T @ rows`` (fp32). Then

    dL/drows = s * R,   dL/dcols = s * C,   dL/ds = sum_ij G_ij X_ij = sum_i rows_i . R_i

each times the upstream gradient ``g`` (the loss is a scalar).
"""


def finish_grads(grad_output, scale, rows_fp32, raw_rows, raw_cols, rows, cols, need_rows, need_scale):
    """``(d rows, d cols, d scale)`` in the inputs' dtypes; ``None`` where not needed / not computed."""
    factor = scale * grad_output
    grad_scale = (rows_fp32 * raw_rows).sum() * grad_output if need_scale else None
    grad_rows = (raw_rows * factor).to(rows.dtype) if need_rows else None
    grad_cols = (raw_cols * factor).to(cols.dtype) if raw_cols is not None else None
    return grad_rows, grad_cols, grad_scale
