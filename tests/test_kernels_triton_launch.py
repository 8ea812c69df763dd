"""How the Triton kernels are launched (no GPU, no interpreter needed): the TF32 setting read, the device a
launch runs on, ``auto``'s fallback to ``chunked``, autotune keys, grid and panel sizes."""
import math
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from openclip_distill.kernels import chunked, contrastive_loss, functional, similarity_kl_loss, triton_support  # noqa: E402
from openclip_distill.kernels import triton_autotune  # noqa: E402


class _RaisingMatmulFlags:
    """Stands in for ``torch.backends.cuda.matmul`` after a process used the new ``fp32_precision`` API, where
    torch 2.14 raises on a read of the legacy ``allow_tf32``."""

    def __init__(self, fp32_precision):
        self.fp32_precision = fp32_precision
        self.legacy_reads = 0

    @property
    def allow_tf32(self):
        self.legacy_reads += 1
        raise RuntimeError("mixing legacy and new fp32 precision APIs")


@pytest.fixture
def compiled_mode(monkeypatch):
    """Pretend we are not under TRITON_INTERPRET (the precision choice is then the GPU's)."""
    monkeypatch.setattr(triton_autotune, "triton_interpreter_enabled", lambda: False)


def _use_flags(monkeypatch, flags):
    monkeypatch.setattr(torch.backends.cuda, "matmul", flags)


def test_16bit_launch_never_reads_the_tf32_setting(monkeypatch, compiled_mode):
    flags = _RaisingMatmulFlags("none")
    _use_flags(monkeypatch, flags)
    assert triton_autotune.fp32_dot_precision(False) == "ieee"
    assert flags.legacy_reads == 0


@pytest.mark.parametrize("new_api,expected", [("tf32", "tf32"), ("ieee", "tf32x3")])
def test_fp32_launch_prefers_the_new_precision_api(monkeypatch, compiled_mode, new_api, expected):
    flags = _RaisingMatmulFlags(new_api)
    _use_flags(monkeypatch, flags)
    assert triton_autotune.fp32_dot_precision(True) == expected
    assert flags.legacy_reads == 0


def test_fp32_launch_never_raises_on_the_legacy_flag(monkeypatch, compiled_mode):
    _use_flags(monkeypatch, _RaisingMatmulFlags("none"))  # new API unset, legacy read raises
    assert triton_autotune.fp32_dot_precision(True) == "tf32x3"  # fp32-accurate default


def test_fp32_launch_follows_the_legacy_flag_when_it_reads(monkeypatch, compiled_mode):
    _use_flags(monkeypatch, types.SimpleNamespace(fp32_precision="none", allow_tf32=True))
    assert triton_autotune.fp32_dot_precision(True) == "tf32"


def test_kernel_flags_read_precision_only_for_fp32_operands(monkeypatch, compiled_mode):
    from openclip_distill.kernels import triton_ops
    flags = _RaisingMatmulFlags("none")
    _use_flags(monkeypatch, flags)
    triton_ops.kernel_flags(torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.float16))
    assert flags.legacy_reads == 0


def test_launches_run_on_the_tensors_gpu():
    """A tensor on cuda:1 is launched under ``torch.cuda.device(1)`` whatever the current device is."""
    context = triton_support.launch_device(torch.device("cuda", 1))
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    assert not isinstance(triton_support.launch_device(torch.device("cpu")), torch.cuda.device)


def test_every_launch_is_wrapped_in_the_device_context():
    import inspect

    from openclip_distill.kernels import triton_ops
    source = inspect.getsource(triton_ops)
    launches = source.count("_kernel[")
    # the two forward launches are wrapped directly; the two backward launches are `write_panel`
    # callbacks, which `_reduce_gradient_panels` calls inside its own `with launch_device(...)`
    reduce_fn = inspect.getsource(triton_ops._reduce_gradient_panels)
    assert "with launch_device(" in reduce_fn and reduce_fn.index("with launch_device(") < reduce_fn.index(
        "write_panel(start, stop, grad)")
    assert launches == 4 and source.count("with launch_device(") - 1 + source.count("def write_panel(") == launches


# ------------------------------------------------------------------------------------------------ auto fallback

@pytest.fixture
def fresh_fallback_state(monkeypatch):
    monkeypatch.setattr(triton_support, "_WARNED", set())
    monkeypatch.setattr(triton_support, "_TRITON_FAILED", [])


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()


def test_auto_with_a_leaked_interpreter_on_cuda_uses_chunked_with_one_warning(monkeypatch, fresh_fallback_state):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cuda_like = types.SimpleNamespace(is_cuda=True)
    with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET") as record:
        assert functional.resolve_impl("auto", cuda_like) == "chunked"
        assert functional.resolve_impl("auto", cuda_like) == "chunked"
    assert len(record) == 1


def test_explicit_triton_with_a_leaked_interpreter_on_cuda_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        triton_support.check_triton_usable(types.SimpleNamespace(is_cuda=True))


def _auto_picks_failing_triton(monkeypatch, fail_in):
    """``auto`` resolves to Triton (as on a GPU) and the Triton function fails in forward or backward."""
    from openclip_distill.kernels import triton_ops
    monkeypatch.setattr(functional, "auto_can_use_triton", lambda like: True)
    if fail_in == "forward":
        def broken(*args, **kwargs):
            raise RuntimeError("PassManager::run failed (simulated compile error)")
        monkeypatch.setattr(triton_ops, "infonce_triton", broken)
        monkeypatch.setattr(triton_ops, "similarity_kl_triton", broken)
    else:  # forward succeeds with chunked's arithmetic, the backward kernels fail
        def broken_backward(*args, **kwargs):
            raise RuntimeError("out of resource: shared memory (simulated launch error)")
        monkeypatch.setattr(triton_ops, "_infonce_backward", broken_backward)
        monkeypatch.setattr(triton_ops, "_kl_backward", broken_backward)
        monkeypatch.setattr(triton_ops.TritonInfoNCE, "forward", _forward_by_chunked(chunked.ChunkedInfoNCE, 3))
        monkeypatch.setattr(triton_ops.TritonSimilarityKL, "forward", _forward_by_chunked(chunked.ChunkedSimilarityKL, 6))


def _forward_by_chunked(function, num_inputs):
    """A Triton ``forward`` replaced by chunked's (the CPU cannot run the kernels); saves the inputs and two
    placeholder statistics, as the Triton forward does."""
    def forward(ctx, *args):
        inputs, layout, fallback = args[:num_inputs], args[num_inputs], args[num_inputs + 1]
        with torch.no_grad():
            loss = function.apply(*inputs, layout, chunked.DEFAULT_CHUNK_ROWS)
        ctx.save_for_backward(*inputs, torch.zeros(1), torch.zeros(1))
        ctx.layout, ctx.fallback = layout, fallback
        return loss
    return staticmethod(forward)


@pytest.mark.parametrize("fail_in", ["forward", "backward"])
def test_auto_falls_back_to_chunked_when_triton_fails(monkeypatch, fresh_fallback_state, fail_in):
    _auto_picks_failing_triton(monkeypatch, fail_in)
    images, texts = _features(9, 6, 0), _features(9, 6, 1)
    sa, sb, ta, tb = _features(9, 6, 2), _features(7, 6, 3), _features(9, 5, 4).detach(), _features(7, 5, 5).detach()

    def run(impl):
        loss = contrastive_loss(images, texts, 20.0, impl=impl)
        kl = similarity_kl_loss(sa, sb, ta, tb, student_scale=30.0, teacher_scale=40.0, impl=impl)
        return [loss, kl] + list(torch.autograd.grad(loss + kl, [images, texts, sa, sb]))

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = run("auto")
        again = run("auto")  # stays on chunked, no second warning
    want = run("chunked")
    assert [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)].__len__() == 1
    assert "chunked" in str(record[0].message)
    for a, b, c in zip(got, again, want):
        assert torch.equal(a, c) and torch.equal(b, c)


def test_explicit_triton_does_not_hide_failures(monkeypatch, fresh_fallback_state):
    from openclip_distill.kernels import triton_ops
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets impl='triton' accept CPU tensors

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile error")

    monkeypatch.setattr(triton_ops, "infonce_triton", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        contrastive_loss(_features(4, 3, 0), _features(4, 3, 1), 10.0, impl="triton")


# ------------------------------------------------------------------------------------------------ autotune keys

def _autotuned_kernels():
    from openclip_distill.kernels import triton_infonce_kernels, triton_kl_kernels
    return [triton_infonce_kernels.infonce_stats_forward_kernel, triton_infonce_kernels.infonce_grad_panel_kernel,
            triton_kl_kernels.similarity_kl_stats_forward_kernel, triton_kl_kernels.similarity_kl_grad_panel_kernel]


@pytest.mark.parametrize("kernel", _autotuned_kernels(), ids=lambda k: k.fn.__name__)
def test_autotune_key_holds_every_variant_flag(kernel):
    """A config tuned for one variant (HAS_COLS, IS_FP32, ...) must not be reused for another."""
    tuned = set(kernel.configs[0].kwargs)
    variant_flags = {name for name, param in zip(kernel.fn.arg_names, kernel.fn.params)
                     if param.is_constexpr and name not in tuned}
    assert variant_flags and variant_flags <= set(kernel.keys), variant_flags - set(kernel.keys)


def test_kernels_have_no_atomics():
    import inspect

    from openclip_distill.kernels import triton_infonce_kernels, triton_kl_kernels, triton_tiles
    for module in (triton_infonce_kernels, triton_kl_kernels, triton_tiles):
        assert "atomic_" not in inspect.getsource(module), module.__name__


# ------------------------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("n,m", [(65536, 65536), (65536, 524288), (2048, 2048), (37, 23), (1, 1)])
def test_forward_grid_bounds_the_partial_statistics(n, m):
    """P_r P_c ~ target programs and the partials stats x (P_c N + P_r M) near their minimum 2 sqrt(T N M)."""
    target = 264  # 2 x 132 SMs (H100 SXM)
    p_rows, p_cols = triton_autotune.split_programs(n, m, 64, 64, target)
    assert 1 <= p_rows <= math.ceil(n / 64) and 1 <= p_cols <= math.ceil(m / 64)
    if n >= 2048:
        assert 0.5 * target <= p_rows * p_cols <= 2 * target
        assert p_cols * n + p_rows * m <= 1.5 * 2 * math.sqrt(target * n * m)


def test_kl_partials_at_the_issue_sizes():
    """KL (5 stats) partials: 42 MB at N = M = 65536, 121 MB at M = 524288 (was 346 MB and 2.8 GB)."""
    for m, limit in [(65536, 50e6), (524288, 140e6)]:
        p_rows, p_cols = triton_autotune.split_programs(65536, m, 64, 64, 264)
        assert 5 * 4 * (p_cols * 65536 + p_rows * m) <= limit


def test_panel_rows_bound_the_gradient_panel():
    from openclip_distill.kernels import triton_ops
    rows = triton_ops.panel_rows(65536, 65536, 2)
    assert rows % 128 == 0 and rows * 65536 * 2 <= triton_ops.PANEL_BYTES
    assert triton_ops.panel_rows(100, 50, 4) == 100
    assert triton_ops.panel_rows(10, 10 ** 9, 4) == 1


def test_tile_weights_leave_the_small_loss_weight_out_of_the_tile():
    from openclip_distill.kernels.layout import LossLayout
    weight, ratio = LossLayout.local(65536, row_weight=0.5 / 65536, col_weight=0.5 / 65536).tile_weights()
    assert weight == 0.5 / 65536 and ratio == 1.0
    weight, ratio = LossLayout.local(10, row_weight=0.2, col_weight=0.0).tile_weights()
    assert (weight, ratio) == (0.2, 1.0)
    weight, ratio = LossLayout.local(10, row_weight=0.2, col_weight=0.1).tile_weights()
    assert weight == 0.1 and ratio == pytest.approx(2.0)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), ValueError("bad shapes")])
def test_auto_does_not_hide_out_of_memory_or_usage_errors(monkeypatch, fresh_fallback_state, error):
    from openclip_distill.kernels import triton_ops
    monkeypatch.setattr(functional, "auto_can_use_triton", lambda like: True)

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(triton_ops, "infonce_triton", broken)
    with pytest.raises(type(error)):
        contrastive_loss(_features(4, 3, 0), _features(4, 3, 1), 10.0, impl="auto")
    assert not triton_support.triton_failed_before()
