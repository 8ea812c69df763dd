"""GEMMs of 16-bit operands with fp32 results (the backward's reduction of a gradient panel).

On CUDA, ``torch.mm``/``torch.addmm`` take ``out_dtype=torch.float32`` for bf16/fp16 operands (cuBLAS
accumulates in fp32 and writes fp32, so a running fp32 sum over panels loses nothing). Where that
overload is missing (CPU, other builds) the operands are widened to fp32 first on CPU (exact: a 16-bit
product fits fp32), and on CUDA the 16-bit product is widened after the GEMM (one rounding per panel).
"""
import torch

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_OUT_DTYPE_WORKS = {"mm": True, "addmm": True}


def _fallback(a, b):
    if a.is_cuda:
        return torch.mm(a, b).float()
    return torch.mm(a.float(), b.float())


def matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as fp32 (``a``, ``b`` of one dtype)."""
    if a.dtype not in _SIXTEEN_BIT:
        return torch.mm(a.float(), b.float())
    if a.is_cuda and _OUT_DTYPE_WORKS["mm"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_WORKS["mm"] = False
    return _fallback(a, b)


def addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """In place ``acc += a @ b`` with an fp32 ``acc`` (cuBLAS reads and writes ``acc`` once: beta = 1)."""
    if a.dtype not in _SIXTEEN_BIT:
        return acc.addmm_(a.float(), b.float())
    if a.is_cuda and _OUT_DTYPE_WORKS["addmm"]:
        try:
            return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_WORKS["addmm"] = False
    return acc.add_(_fallback(a, b))
