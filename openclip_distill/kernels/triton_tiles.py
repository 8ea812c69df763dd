"""Triton building blocks shared by the fused similarity-loss kernels (imported only when Triton is used).

* ``logits_tile``: ``X[i, j] = sum_k left[i, k] right[j, k]`` for a BLOCK_M x BLOCK_N tile, looping over the
  feature dim in BLOCK_D chunks with masking (any N, M, D), fp32 accumulator (tensor cores for 16-bit
  inputs, ``FP32_PRECISION`` for fp32 inputs).
* ``store_grad_tile``: writes a tile of the loss gradient ``G`` in the operand dtype (masked), for the
  backward's two GEMMs.
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
def store_grad_tile(grad_ptr, grad, rows, cols, num_rows, num_cols, stride_grad):
    """``grad_ptr[rows, cols] = grad`` rounded to the buffer's dtype; padding rows/columns are not written."""
    mask = (rows < num_rows)[:, None] & (cols < num_cols)[None, :]
    tl.store(grad_ptr + rows[:, None] * stride_grad + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)
