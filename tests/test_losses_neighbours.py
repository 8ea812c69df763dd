"""`clip-kd` (CLIP-KD) and `affinity` (TinyCLIP) against float64 formulas written out here and OpenCLIP's
own ClipLoss / DistillClipLoss: values and gradients for the naive, chunked and (interpreted) triton
implementations, under torch.distributed (slow), and their CLI runs on paired data."""
import math
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss, DistillClipLoss

import openclip_distill  # noqa: F401 (registers configs and losses)
from openclip_distill import create_distill_loss, list_losses
from openclip_distill import main as distill_main
from openclip_distill.errors import DistillUsageError
from openclip_distill.kernels import chunked
from openclip_distill.kernels import cross_entropy_rows

from test_cli import base_args, read_losses

U = 2.0 ** -24  # fp32 unit roundoff
N = 13          # batch: with 5 rows per chunk the chunked kernels walk three tiles, one of them short


def fp32_atol(magnitude, length):
    """Expected fp32 rounding error of a result built from ``length`` chained roundings (dot products of
    width d, softmax sums over N columns, means over N rows) on values up to ``magnitude``: each rounding
    is a relative error <= u, independent ones add like a random walk (sigma ~ sqrt(length) u magnitude);
    we allow 10 sigma. A wrong factor or term is off by O(magnitude), orders of magnitude more."""
    return 10.0 * math.sqrt(length) * U * magnitude


@pytest.fixture(params=["naive", "chunked"])
def impl(request, monkeypatch):
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_ROWS", 5)
    return request.param


# ---- the formulas, written out in float64 -------------------------------------------------------------

def n(x):
    return x / x.norm(dim=-1, keepdim=True)


def log_softmax_rows(x):
    """x_ij - log sum_k exp x_ik (float64: no overflow for the |x| <= 100 used here)."""
    return x - x.exp().sum(1, keepdim=True).log()


def ce_rows(x):
    """mean_i (log sum_j exp x_ij - x_ii): cross-entropy of each row against the diagonal."""
    return (-log_softmax_rows(x).diagonal()).mean()


def kl_rows(a, b):
    """mean_i sum_j p_ij (log p_ij - log q_ij), p = softmax(a_i), q = softmax(b_i)."""
    la, lb = log_softmax_rows(a), log_softmax_rows(b)
    return (la.exp() * (la - lb)).sum(1).mean()


def h_rows(a, b):
    """mean_i -sum_j p_ij log q_ij, p = softmax(a_i), q = softmax(b_i)."""
    return -(log_softmax_rows(a).exp() * log_softmax_rows(b)).sum(1).mean()


def clip_kd_reference(I, T, It, Tt, s, st, maps, w):
    I, T, It, Tt, s = I.double(), T.double(), It.double(), Tt.double(), s.double()
    (Wi, bi), (Wt, bt) = [(W.double(), b.double()) for W, b in maps]
    PI, PT = I @ Wi.T + bi, T @ Wt.T + bt
    task = 0.5 * (ce_rows(s * I @ T.T) + ce_rows(s * T @ I.T))
    A, B = st * It @ Tt.T, s * I @ T.T
    crd = 0.5 * (kl_rows(A, B) + kl_rows(A.T, B.T))
    qi, qt = (I, T) if I.shape[1] == It.shape[1] else (n(PI), n(PT))
    icl = 0.5 * (ce_rows(s * qi @ Tt.T) + ce_rows(s * qt @ It.T))
    fd = ((PI - It) ** 2).mean() + ((PT - Tt) ** 2).mean()
    return {"task_loss": w[0] * task, "crd_loss": w[1] * crd, "icl_loss": w[2] * icl, "fd_loss": w[3] * fd}


def affinity_reference(I, T, It, Tt, s, c, clip_weight):
    I, T, It, Tt, s = I.double(), T.double(), It.double(), Tt.double(), s.double()
    A, B = c * It @ Tt.T, c * I @ T.T
    return {"affinity_loss": 0.5 * (h_rows(A, B) + h_rows(A.T, B.T)),
            "contrastive_loss": clip_weight * 0.5 * (ce_rows(s * I @ T.T) + ce_rows(s * T @ I.T))}


def features(seed, s_dim, t_dim, rows=N):
    g = torch.Generator().manual_seed(seed)
    student = [n(torch.randn(rows, s_dim, generator=g)).requires_grad_(True) for _ in range(2)]
    teacher = [n(torch.randn(rows, t_dim, generator=g)) for _ in range(2)]
    # a teacher that agrees with itself more than chance, so its softmaxes are not near-uniform
    teacher[1] = n(teacher[1] + 1.5 * teacher[0]).detach()
    return student, teacher


def assert_close_fp32(got, want, magnitude, length, what):
    tol = fp32_atol(magnitude, length)
    err = (got.double() - want).abs().max().item()
    assert err <= tol, f"{what}: |fp32 - float64| = {err:.3g} > {tol:.3g}"


# ---- clip-kd --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [(16, 16), (12, 16)])
def test_clip_kd_values_and_gradients_match_formula(impl, dims):
    check_clip_kd(impl, dims)


def check_clip_kd(impl, dims):
    s_dim, t_dim = dims
    w = (0.9, 1.1, 1.3, 2000.0)
    loss = create_distill_loss("clip-kd", impl=impl, task_weight=w[0], crd_weight=w[1], icl_weight=w[2],
                               fd_weight=w[3], context={"student_embed_dim": s_dim, "teacher_embed_dim": t_dim})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the maps away from their init so the test sees them
        for m in (loss.image_map, loss.text_map):
            m.weight.add_(0.05 * torch.randn(m.weight.shape, generator=g))
            m.bias.add_(0.05 * torch.randn(m.bias.shape, generator=g))
    (I, T), (It, Tt) = features(2, s_dim, t_dim)
    s = torch.tensor(30.0, requires_grad=True)
    st = torch.tensor(60.0)
    maps = [(m.weight, m.bias) for m in (loss.image_map, loss.text_map)]
    out = loss(I, T, s, It, Tt, st, output_dict=True)
    want = clip_kd_reference(I, T, It, Tt, s, st, maps, w)
    assert set(out) == set(want)
    length = t_dim + 2 * N
    softmax_scale = 2 * (30.0 + 60.0)  # logit range of both matrices
    for k in ("task_loss", "crd_loss", "icl_loss"):
        assert_close_fp32(out[k], want[k], max(w[:3]) * softmax_scale, length, k)
    fd_magnitude = w[3] * 2 * max(((a.double() @ W.double().T + b.double()).abs().max().item() + 1) ** 2
                                  for a, (W, b) in zip((I, T), maps))
    assert_close_fp32(out["fd_loss"], want["fd_loss"], fd_magnitude, s_dim + N * t_dim, "fd_loss")

    params = [I, T, s, loss.image_map.weight, loss.text_map.bias]
    got = torch.autograd.grad(sum(out.values()), params)
    ref = torch.autograd.grad(sum(want.values()), params)
    for name, a, b in zip(("I", "T", "s", "P_i.weight", "P_t.bias"), got, ref):
        # a logit off by e shifts the softmax weights by a relative ~e, and e <~ u * (logit range)
        assert_close_fp32(a, b, b.abs().max().item() * softmax_scale, length, f"d{name}")
    assert It.grad is None and Tt.grad is None


def test_clip_kd_task_term_is_openclip_clip_loss_and_icl_uses_teacher_keys(impl):
    (I, T), (It, Tt) = features(3, 16, 16)
    s = torch.tensor(25.0)
    loss = create_distill_loss("clip-kd", impl=impl, task_weight=1.0, crd_weight=0, icl_weight=1.0, fd_weight=0,
                               context={"student_embed_dim": 16, "teacher_embed_dim": 16})
    assert loss.image_map is None and loss.text_map is None  # FD off, widths match: no maps to train
    out = loss(I, T, s, It, Tt, torch.tensor(50.0), output_dict=True)
    torch.testing.assert_close(out["task_loss"], ClipLoss()(I, T, s), rtol=1e-5, atol=1e-6)
    assert float(out["crd_loss"]) == 0.0 and float(out["fd_loss"]) == 0.0
    # ICL's first half is one direction of ClipLoss between student images and teacher texts
    half = cross_entropy_rows(I, Tt, s, impl=impl)
    labels = torch.arange(N)
    torch.testing.assert_close(half, torch.nn.functional.cross_entropy(s * I @ Tt.T, labels), rtol=1e-5, atol=1e-6)


def test_clip_kd_maps_identity_init_perfect_student_and_state_dict():
    loss = create_distill_loss("clip-kd", impl="naive", context={"student_embed_dim": 8, "teacher_embed_dim": 8})
    for m in (loss.image_map, loss.text_map):
        torch.testing.assert_close(m.weight, torch.eye(8))
        assert not m.bias.any()
    assert set(loss.state_dict()) == {"image_map.weight", "image_map.bias", "text_map.weight", "text_map.bias"}
    assert all(p.requires_grad for p in loss.parameters())
    # a student equal to its teacher (same scale): FD and CRD vanish, task and ICL are the teacher's InfoNCE
    (I, T), _ = features(4, 8, 8)
    out = loss(I, T, torch.tensor(20.0), I.detach(), T.detach(), torch.tensor(20.0), output_dict=True)
    assert out["fd_loss"].item() == 0.0 and abs(out["crd_loss"].item()) < 1e-5
    torch.testing.assert_close(out["icl_loss"], out["task_loss"])
    # different widths: real linear maps (not square), one per modality
    wide = create_distill_loss("clip-kd", context={"student_embed_dim": 8, "teacher_embed_dim": 12})
    assert wide.image_map.weight.shape == (12, 8) and wide.text_map.weight.shape == (12, 8)


def test_clip_kd_bad_input():
    with pytest.raises(DistillUsageError, match="fd_weight"):
        create_distill_loss("clip-kd", fd_weight=-1)
    with pytest.raises(DistillUsageError, match="at least one weight"):
        create_distill_loss("clip-kd", task_weight=0, crd_weight=0, icl_weight=0, fd_weight=0)
    (I, T), (It, Tt) = features(5, 8, 12)
    with pytest.raises(DistillUsageError, match="student_embed_dim"):  # widths differ, no maps built
        create_distill_loss("clip-kd", impl="naive")(I, T, 10.0, It, Tt, 10.0)
    with pytest.raises(DistillUsageError, match="--student-text-tower train"):
        create_distill_loss("clip-kd", impl="naive")(I, None, 10.0, It, Tt, 10.0)


# ---- affinity -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [(16, 16), (12, 20)])
def test_affinity_values_and_gradients_match_formula(impl, dims):
    check_affinity(impl, dims)


def check_affinity(impl, dims):
    (I, T), (It, Tt) = features(6, *dims)  # no common width needed: the two matrices are separate
    c, clip_weight = 40.0, 0.6
    s = torch.tensor(15.0, requires_grad=True)
    loss = create_distill_loss("affinity", impl=impl, scale=c, clip_weight=clip_weight)
    out = loss(I, T, s, It, Tt, output_dict=True)
    want = affinity_reference(I, T, It, Tt, s, c, clip_weight)
    length = max(dims) + 2 * N
    for k in want:
        assert_close_fp32(out[k], want[k], 2 * (c + c), length, k)
    got = torch.autograd.grad(sum(out.values()), [I, T, s])
    ref = torch.autograd.grad(sum(want.values()), [I, T, s])
    for name, a, b in zip("ITs", got, ref):
        assert_close_fp32(a, b, b.abs().max().item() * 4 * c, length, f"d{name}")  # as for clip-kd


def test_affinity_is_openclip_distill_term_at_a_common_scale(impl):
    (I, T), (It, Tt) = features(7, 16, 16)
    c, s = 50.0, torch.tensor(12.0)
    out = create_distill_loss("affinity", impl=impl, scale=c, clip_weight=0.5)(I, T, s, It, Tt, output_dict=True)
    ref = DistillClipLoss()(I, T, torch.tensor(c), It, Tt, torch.tensor(c), output_dict=True)
    torch.testing.assert_close(out["affinity_loss"], ref["distill_loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["contrastive_loss"], 0.5 * ClipLoss()(I, T, s), rtol=1e-5, atol=1e-6)
    # the student's scale enters only the contrastive term: with clip_weight=0 the loss ignores it, yet
    # the scale stays in the graph (a zero gradient) so DistributedDataParallel sees every parameter used
    s = torch.tensor(12.0, requires_grad=True)
    plain = create_distill_loss("affinity", impl=impl, scale=c)
    total = plain(I, T, s, It, Tt)
    (ds,) = torch.autograd.grad(total, [s])
    assert float(ds) == 0.0
    torch.testing.assert_close(total, plain(I, T, torch.tensor(99.0), It, Tt))


def test_affinity_bad_input():
    with pytest.raises(DistillUsageError, match="scale"):
        create_distill_loss("affinity", scale=0)
    with pytest.raises(DistillUsageError, match="clip_weight"):
        create_distill_loss("affinity", clip_weight=-0.1)
    with pytest.raises(DistillUsageError, match="rejected its arguments"):
        create_distill_loss("affinity", temperature=2.0)


def test_both_registered_for_paired_data():
    assert {"clip-kd", "affinity"} <= set(list_losses())
    for name in ("clip-kd", "affinity"):
        assert create_distill_loss(name).requires_paired_data


# ---- CLI ------------------------------------------------------------------------------------------------

def test_cli_clip_kd_maps_in_loss_state_dict_not_in_student(tiny_corpus, tmp_path):
    """A 24-wide student under a 32-wide teacher: the FD maps are real 24 -> 32 linear maps."""
    args = base_args(tiny_corpus, tmp_path, "kd", "--distill-loss", "clip-kd", "--train-data",
                     tiny_corpus["paired"], "--train-num-samples", "32", "--student-text-tower", "train",
                     "--model", "test-tiny-student-24", "--epochs", "1")
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "kd" / "losses.jsonl")
    assert len(losses) == 4 and all({"task_loss", "crd_loss", "icl_loss", "fd_loss", "loss"} <= set(r)
                                    for r in losses)
    assert all(math.isfinite(r["loss"]) for r in losses)
    ckpt_path = tmp_path / "kd" / "checkpoints" / "epoch_1.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt["loss_state_dict"]) == {"image_map.weight", "image_map.bias", "text_map.weight",
                                            "text_map.bias"}
    assert ckpt["loss_state_dict"]["image_map.weight"].shape == (32, 24)
    assert not any("map" in k for k in ckpt["state_dict"])
    fresh = create_distill_loss("clip-kd", context={"student_embed_dim": 24, "teacher_embed_dim": 32})
    fresh.load_state_dict(ckpt["loss_state_dict"])  # what --resume does
    model, _, _ = open_clip.create_model_and_transforms("test-tiny-student-24", pretrained=str(ckpt_path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][k])


def test_cli_affinity_run(tiny_corpus, tmp_path):
    args = base_args(tiny_corpus, tmp_path, "aff", "--distill-loss", "affinity", "--distill-loss-kwargs",
                     "clip_weight=0.5", "--train-data", tiny_corpus["paired"], "--train-num-samples", "32",
                     "--student-text-tower", "train", "--epochs", "1")
    assert distill_main.main(args) == 0
    losses = read_losses(tmp_path / "aff" / "losses.jsonl")
    assert len(losses) == 4 and all({"affinity_loss", "contrastive_loss", "loss"} <= set(r) for r in losses)
    ckpt_path = tmp_path / "aff" / "checkpoints" / "epoch_1.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert "loss_state_dict" not in ckpt  # nothing to train in the loss itself
    open_clip.create_model_and_transforms("test-tiny-student", pretrained=str(ckpt_path))


# ---- triton (interpreter on CPU) ------------------------------------------------------------------------

def test_triton_matches_formula_under_the_interpreter():
    """The same checks with impl="triton", this file run as a script under TRITON_INTERPRET=1 (which must
    be set before Triton is imported); ICL exercises the rows-only InfoNCE kernel."""
    pytest.importorskip("triton")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(openclip_distill.__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "checked" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---- torch.distributed (2 gloo CPU processes, slow) -----------------------------------------------------

DIST_SPLITS = {"unequal": (7, 6), "equal": (7, 7)}


def _distributed_case(impl, split, rank=None):
    """(loss terms, grads of the student features and scale) on rank ``rank``'s rows, or on all rows."""
    sizes = DIST_SPLITS[split]
    (I, T), (It, Tt) = features(8, 12, 16, rows=sum(sizes))
    rows = slice(None) if rank is None else slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    I, T = I.detach()[rows].clone().requires_grad_(True), T.detach()[rows].clone().requires_grad_(True)
    It, Tt = It[rows], Tt[rows]
    s = torch.tensor(30.0, requires_grad=True)
    if split == "unequal":
        out = {"ce_rows": cross_entropy_rows(I, T, s, impl=impl)}  # columns gathered with gradient
    else:
        torch.manual_seed(0)  # the same map initialisation on every rank and in the reference
        kd = create_distill_loss("clip-kd", impl=impl, context={"student_embed_dim": 12, "teacher_embed_dim": 16})
        out = kd(I, T, s, It, Tt, torch.tensor(60.0), output_dict=True)
        out.update(create_distill_loss("affinity", impl=impl, clip_weight=0.5)(I, T, s, It, Tt, output_dict=True))
    grads = torch.autograd.grad(sum(out.values()), [I, T, s], allow_unused=True)
    return {k: v.detach() for k, v in out.items()}, grads


def _distributed_worker(rank, port, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {(impl, split): _distributed_case(impl, split, rank)
                   for impl in ("naive", "chunked", "triton") for split in DIST_SPLITS}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_matches_the_concatenated_batch(tmp_path):
    """Per OpenCLIP's local-loss convention: the mean over ranks of each rank's loss is the loss of the whole
    batch and each rank's features get world_size times their share of its gradient (FD's per-rank mean
    needs equal per-rank batches, as the trainer's are)."""
    import socket
    import torch.multiprocessing as mp
    pytest.importorskip("triton")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["TRITON_INTERPRET"] = "1"  # read by the children's first Triton import
    try:
        mp.spawn(_distributed_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    finally:
        del os.environ["TRITON_INTERPRET"]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for (impl, split) in ranks[0]:
        want, want_grads = _distributed_case("naive", split)
        for k, v in want.items():
            got = (ranks[0][impl, split][0][k] + ranks[1][impl, split][0][k]) / 2
            torch.testing.assert_close(got, v, rtol=2e-5, atol=2e-5, msg=f"{impl} {split} {k}")
        sizes = DIST_SPLITS[split]
        for r in range(2):
            rows = slice(sum(sizes[:r]), sum(sizes[:r + 1]))
            for got, full in zip(ranks[r][impl, split][1][:2], want_grads[:2]):
                if full is not None:
                    torch.testing.assert_close(got, 2 * full[rows], rtol=1e-4, atol=1e-5)
        scale = (ranks[0][impl, split][1][2] + ranks[1][impl, split][1][2]) / 2
        torch.testing.assert_close(scale, want_grads[2], rtol=1e-4, atol=1e-5)

if __name__ == "__main__":  # worker of the test above
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for dims in ((16, 16), (12, 16)):
        check_clip_kd("triton", dims)
        check_affinity("triton", dims)
    print("checked")
