"""Spearman correlation of pairwise cosine similarities, against scipy (or a naive formula)."""
import itertools
import math

import pytest
import torch

from openclip_distill.eval.sentence_similarity import average_ranks, pairwise_cosine_spearman, pairwise_cosines, spearman


def _naive_average_ranks(xs):
    """Rank of x = (number of values < x) + (number of values == x + 1) / 2."""
    return [sum(y < x for y in xs) + (sum(y == x for y in xs) + 1) / 2 for x in xs]


def _naive_spearman(xs, ys):
    rx, ry = _naive_average_ranks(xs), _naive_average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def _naive_pairwise_cosines(emb):
    rows = emb.tolist()
    out = []
    for i, j in itertools.combinations(range(len(rows)), 2):
        a, b = rows[i], rows[j]
        out.append(sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    return out


def test_average_ranks_with_ties():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    assert average_ranks(x).tolist() == _naive_average_ranks(x.tolist()) == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]


def test_spearman_matches_reference_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(200, generator=g, dtype=torch.float64)
    xt, yt = torch.round(x * 2) / 2, torch.round(y * 2) / 2  # many ties
    for a, b in ((x, y), (xt, yt)):
        assert spearman(a, b) == pytest.approx(_naive_spearman(a.tolist(), b.tolist()), abs=1e-12)
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return
    for a, b in ((x, y), (xt, yt)):
        assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


def test_pairwise_cosine_spearman_against_naive_pipeline():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(25, 12, generator=g)
    student = teacher[:, :7] + 0.5 * torch.randn(25, 7, generator=g)  # different width, related
    ct, cs = _naive_pairwise_cosines(teacher), _naive_pairwise_cosines(student)
    assert pairwise_cosines(teacher).tolist() == pytest.approx(ct, abs=1e-6)  # fp32 inputs, float64 compute
    expected = _naive_spearman(ct, cs)
    got = pairwise_cosine_spearman(teacher, student)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.2 < got < 0.99


def test_invariances_and_extremes():
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(30, 16, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    rotated = (teacher.double() @ rotation) * 3.0  # cosines unchanged up to rounding
    assert pairwise_cosine_spearman(teacher, rotated) == pytest.approx(1.0, abs=1e-9)
    unrelated = torch.randn(30, 16, generator=g)
    assert abs(pairwise_cosine_spearman(teacher, unrelated)) < 0.2


def test_bad_shapes():
    with pytest.raises(ValueError, match="same N"):
        pairwise_cosine_spearman(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="at least 3"):
        pairwise_cosine_spearman(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="constant"):
        spearman(torch.ones(4), torch.arange(4.0))
