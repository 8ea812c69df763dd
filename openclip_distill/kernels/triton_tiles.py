"""Triton building blocks shared by the fused similarity-loss kernels (imported only when Triton is used).

* ``logits_tile``: ``X[i, j] = sum_k left[i, k] right[j, k]`` for a BLOCK_M x BLOCK_N tile, looping over the
  feature dim in BLOCK_D chunks with masking (any N, M, D), fp32 accumulator (tensor cores for 16-bit
  inputs, ``FP32_PRECISION`` for fp32 inputs).
* ``grad_dot``: ``G @ X_chunk`` for the backward, with G rounded to the operand dtype (Flash-Attention's
  choice for 16-bit inputs) and accumulated in fp32.
* ``UPCAST`` (set under ``TRITON_INTERPRET=1``): the CPU interpreter cannot ``tl.dot`` bfloat16 (it holds
  them as uint16), so operands are widened to fp32 first; values are unchanged (bf16 x bf16 products are
  exact in fp32), only the GPU's summation order differs.
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, IS_FP32: tl.constexpr, FP32_PRECISION: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=FP32_PRECISION)
    elif IS_FP32:
        return tl.dot(a, b, acc, input_precision=FP32_PRECISION)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def logits_tile(left_ptr, right_ptr, rows, cols, num_rows, num_cols, dim, stride_left, stride_right,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, IS_FP32: tl.constexpr, FP32_PRECISION: tl.constexpr):
    """fp32 tile ``left[rows] @ right[cols]^T``; out-of-range rows/cols/features load as 0."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_ok = rows < num_rows
    col_ok = cols < num_cols
    for d0 in range(0, dim, BLOCK_D):
        ks = d0 + tl.arange(0, BLOCK_D)
        k_ok = ks < dim
        a = tl.load(left_ptr + rows[:, None] * stride_left + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        bt = tl.load(right_ptr + cols[None, :] * stride_right + ks[:, None], mask=col_ok[None, :] & k_ok[:, None],
                     other=0.0)
        acc = _dot(a, bt, acc, UPCAST, IS_FP32, FP32_PRECISION)
    return acc


@triton.jit
def accumulate_grad_dots(grad, left_ptr, right_ptr, d_left_ptr, d_right_ptr, rows, cols, num_rows, num_cols,
                         dim, stride_left, stride_right, NEED_D_LEFT: tl.constexpr, NEED_D_RIGHT: tl.constexpr,
                         BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
                         FP32_PRECISION: tl.constexpr):
    """``d_left[rows] += grad @ right[cols]`` and ``d_right[cols] += grad^T @ left[rows]`` (fp32 atomics).

    ``grad`` is the BLOCK_M x BLOCK_N fp32 tile of dL/dX, zero outside the valid block.
    ``d_left``/``d_right`` are dense fp32 [rows, dim] accumulators.
    """
    row_ok = rows < num_rows
    col_ok = cols < num_cols
    for d0 in range(0, dim, BLOCK_D):
        ks = d0 + tl.arange(0, BLOCK_D)
        k_ok = ks < dim
        if NEED_D_LEFT:
            r = tl.load(right_ptr + cols[:, None] * stride_right + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                        other=0.0)
            part = _dot(grad.to(r.dtype), r, tl.zeros((grad.shape[0], BLOCK_D), dtype=tl.float32), UPCAST, IS_FP32,
                        FP32_PRECISION)
            tl.atomic_add(d_left_ptr + rows[:, None] * dim + ks[None, :], part, mask=row_ok[:, None] & k_ok[None, :])
        if NEED_D_RIGHT:
            l = tl.load(left_ptr + rows[:, None] * stride_left + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            part = _dot(tl.trans(grad).to(l.dtype), l, tl.zeros((grad.shape[1], BLOCK_D), dtype=tl.float32), UPCAST,
                        IS_FP32, FP32_PRECISION)
            tl.atomic_add(d_right_ptr + cols[:, None] * dim + ks[None, :], part, mask=col_ok[:, None] & k_ok[None, :])
