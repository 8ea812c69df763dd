"""Distributed similarity losses: 2 gloo CPU processes against one process on the concatenated batch.

Convention checked (``openclip_distill/kernels/distributed.py``): with rank r holding its local rows,

* ``mean_r loss_r == loss_global`` (the single-process naive loss on the whole batch),
* the gradient reaching rank r's features is ``world_size * dL_global/dx_r``,
* the replicated logit scale: ``mean_r dloss_r/ds == dL_global/ds``

(what DDP's gradient averaging turns into the global gradient). Ranks hold unequal row counts.
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from openclip_distill.kernels import contrastive_loss, similarity_kl_loss

WORLD = 2
N, M, D_S, D_T = 13, 9, 6, 10
ROW_SPLIT, COL_SPLIT = (7, 6), (4, 5)  # unequal on purpose
IMPLS = ("naive", "chunked", "triton")
ENSEMBLE_IMPLS = ("naive", "chunked")  # the Triton kernels take one teacher
KL_MODES = [("own", True), ("own", False), ("teacher_b", True), ("student_a", True), ("student_a", False)]


def global_batch():
    g = torch.Generator().manual_seed(0)

    def unit(n, d):
        return F.normalize(torch.randn(n, d, generator=g) + 2.0, dim=-1)

    return dict(student_a=unit(N, D_S), student_b=unit(M, D_S), teacher_a=unit(N, D_T), teacher_b=unit(M, D_T),
                teacher_b_shared=unit(M, D_S), teacher_a_self=unit(N, D_T), images=unit(N, D_S), texts=unit(N, D_S))


def kl_call(batch, mode, bidirectional, impl, rows=slice(None), cols=slice(None), distributed=None):
    """Run one KL configuration on the given row/column slices; returns (loss, {name: grad})."""
    leaf = lambda x: x.clone().requires_grad_()  # noqa: E731
    scale = torch.tensor(80.0, requires_grad=True)
    student_a = leaf(batch["student_a"][rows])
    if mode == "own":
        student_b = leaf(batch["student_b"][cols])
        teacher_a, teacher_b = batch["teacher_a"][rows], batch["teacher_b"][cols]
        wrt = dict(student_a=student_a, student_b=student_b)
    elif mode == "teacher_b":
        teacher_a, teacher_b = batch["teacher_a"][rows][:, :D_S].contiguous(), batch["teacher_b_shared"][cols]
        student_b = teacher_b
        wrt = dict(student_a=student_a)
    else:  # self-similarity: rows and columns are the same local rows
        student_b, teacher_a = student_a, batch["teacher_a_self"][rows]
        teacher_b = teacher_a
        wrt = dict(student_a=student_a)
    wrt["scale"] = scale
    loss = similarity_kl_loss(student_a, student_b, teacher_a, teacher_b, student_scale=scale, teacher_scale=100.0,
                              temperature=3.0, bidirectional=bidirectional, impl=impl, distributed=distributed)
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return loss.detach(), dict(zip(wrt, grads))


def ensemble_kl_call(batch, bidirectional, impl, rows=slice(None), cols=slice(None), distributed=None):
    """The KL against a 2-teacher ensemble (widths D_T and D_S, scales 100 and 30) on the given slices."""
    student_a = batch["student_a"][rows].clone().requires_grad_()
    student_b = batch["student_b"][cols].clone().requires_grad_()
    scale = torch.tensor(80.0, requires_grad=True)
    teachers_a = [batch["teacher_a"][rows], batch["teacher_a_self"][rows][:, :D_S].contiguous()]
    teachers_b = [batch["teacher_b"][cols], batch["teacher_b_shared"][cols]]
    loss = similarity_kl_loss(student_a, student_b, teachers_a, teachers_b, student_scale=scale,
                              teacher_scale=[100.0, 30.0], temperature=3.0, bidirectional=bidirectional, impl=impl,
                              distributed=distributed)
    grads = torch.autograd.grad(loss, [student_a, student_b, scale])
    return loss.detach(), dict(student_a=grads[0], student_b=grads[1], scale=grads[2])


def infonce_call(batch, impl, rows=slice(None), distributed=None):
    images, texts = batch["images"][rows].clone().requires_grad_(), batch["texts"][rows].clone().requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    loss = contrastive_loss(images, texts, scale, impl=impl, distributed=distributed)
    grads = torch.autograd.grad(loss, [images, texts, scale])
    return loss.detach(), dict(images=grads[0], texts=grads[1], scale=grads[2])


def clip_distill_call(batch, rows=slice(None), ensemble=False):
    """OpenCLIP-style soft cross-entropy distillation: fused KL + teacher entropy (gathered across ranks
    when torch.distributed is initialised; the single-process reference runs in the test process).
    ``ensemble``: a second teacher (other features, scale 20) joins the first."""
    from openclip_distill import create_distill_loss
    teacher_images = batch["teacher_a_self"][rows][:, :D_S].contiguous()
    teacher_texts, scale = batch["student_a"][rows], 50.0
    if ensemble:
        teacher_images = (teacher_images, batch["teacher_a"][rows])
        teacher_texts, scale = (teacher_texts, batch["teacher_a_self"][rows]), (50.0, 20.0)
    with torch.no_grad():
        out = create_distill_loss("clip-distill", impl="chunked")(
            batch["images"][rows], batch["texts"][rows], 14.0, teacher_images, teacher_texts, scale,
            output_dict=True)
    return {k: v.detach() for k, v in out.items()}


def _slices(rank):
    r0 = sum(ROW_SPLIT[:rank])
    c0 = sum(COL_SPLIT[:rank])
    return slice(r0, r0 + ROW_SPLIT[rank]), slice(c0, c0 + COL_SPLIT[rank])


def _worker(rank, port, out_dir):
    assert os.environ.get("TRITON_INTERPRET") == "1"  # inherited: must precede the child's first triton import
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    from openclip_distill.kernels import triton_ops
    # Triton backward in panels of 4 rows: InfoNCE's diagonal target at panel offset + the rank's column offset.
    triton_ops.panel_rows = lambda num_rows, num_cols, element_size: min(num_rows, 4)
    try:
        batch = global_batch()
        rows, cols = _slices(rank)
        results = {}
        for impl in IMPLS:
            results["infonce", impl] = infonce_call(batch, impl, rows)
            for mode, bidirectional in KL_MODES:
                kl_cols = rows if mode == "student_a" else cols
                results["kl", impl, mode, bidirectional] = kl_call(batch, mode, bidirectional, impl, rows, kl_cols)
        for impl in ENSEMBLE_IMPLS:
            for bidirectional in (True, False):
                results["kl-ensemble", impl, bidirectional] = ensemble_kl_call(batch, bidirectional, impl, rows, cols)
        results["clip-distill"] = clip_distill_call(batch, rows)
        results["clip-distill-ensemble"] = clip_distill_call(batch, rows, ensemble=True)
        # distributed=False under an initialised group: the local batch only
        results["local-only"] = infonce_call(batch, "chunked", rows, distributed=False)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results():
    # The children run the Triton kernels in the CPU interpreter, which Triton reads when it is first imported
    # (torch and open_clip import it early), so the variable must be in the environment the children start with.
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
            return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


# Tolerances from the arithmetic, in norms (robust to summation order): every path computes in fp32 from the
# same fp32 inputs with logits of size <= 100 (scale 80 / tau 3 and 1/0.07), so losses and gradients carry
# ~scale x 2^-24 relative round-off; the bound is 16 x 100 x 2^-24 ~ 1e-4 (the tests' FP32_RTOL).
FP32_RTOL = 16 * 100 * 2.0 ** -24


def _relative_error(got, want):
    ref = want.double().norm().item()
    err = (got.double() - want.double()).norm().item()
    return err / ref if ref > 0 else err


def _check(per_rank, global_loss, global_grads, slice_of):
    mean_loss = torch.stack([loss for loss, _ in per_rank]).mean()
    assert abs(mean_loss.item() - global_loss.item()) <= FP32_RTOL * max(1.0, abs(global_loss.item()))
    for name, grad in global_grads.items():
        if name == "scale":
            got = torch.stack([grads[name] for _, grads in per_rank]).mean()
            assert _relative_error(got, grad) <= FP32_RTOL, (got.item(), grad.item())
            continue
        for rank, (_, grads) in enumerate(per_rank):
            want = WORLD * grad[slice_of(name, rank)]
            err = _relative_error(grads[name], want)
            assert err <= FP32_RTOL, f"{name} on rank {rank}: relative error {err:.3g}"


@pytest.mark.parametrize("impl", IMPLS)
def test_distributed_contrastive_loss_matches_global_batch(rank_results, impl):
    global_loss, global_grads = infonce_call(global_batch(), "naive", distributed=False)
    per_rank = [results["infonce", impl] for results in rank_results]
    _check(per_rank, global_loss, global_grads, lambda name, rank: _slices(rank)[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode,bidirectional", KL_MODES, ids=[f"{m}-{'bi' if b else 'rows'}" for m, b in KL_MODES])
def test_distributed_similarity_kl_matches_global_batch(rank_results, impl, mode, bidirectional):
    global_loss, global_grads = kl_call(global_batch(), mode, bidirectional, "naive", distributed=False)
    per_rank = [results["kl", impl, mode, bidirectional] for results in rank_results]
    _check(per_rank, global_loss, global_grads,
           lambda name, rank: _slices(rank)[1] if name == "student_b" else _slices(rank)[0])


@pytest.mark.parametrize("impl", ENSEMBLE_IMPLS)
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "rows"])
def test_distributed_ensemble_kl_matches_global_batch(rank_results, impl, bidirectional):
    global_loss, global_grads = ensemble_kl_call(global_batch(), bidirectional, "naive", distributed=False)
    per_rank = [results["kl-ensemble", impl, bidirectional] for results in rank_results]
    _check(per_rank, global_loss, global_grads,
           lambda name, rank: _slices(rank)[1] if name == "student_b" else _slices(rank)[0])


def test_distributed_false_uses_the_local_batch(rank_results):
    batch = global_batch()
    for rank, results in enumerate(rank_results):
        local_loss, _ = infonce_call({k: v[_slices(rank)[0]] for k, v in batch.items() if k in ("images", "texts")},
                                     "naive", distributed=False)
        assert abs(results["local-only"][0].item() - local_loss.item()) <= FP32_RTOL * max(1.0, abs(local_loss.item()))


def test_distributed_clip_distill_value_is_the_global_soft_cross_entropy(rank_results):
    """mean over ranks of (fused KL + entropy of the gathered teacher batch) == one-process value."""
    for name, ensemble in (("clip-distill", False), ("clip-distill-ensemble", True)):
        want = clip_distill_call(global_batch(), ensemble=ensemble)
        for key in ("contrastive_loss", "distill_loss"):
            got = torch.stack([r[name][key] for r in rank_results]).mean()
            assert abs(got.item() - want[key].item()) <= FP32_RTOL * max(1.0, abs(want[key].item())), (name, key)
