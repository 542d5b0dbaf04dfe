"""Batch-by-batch float64 sums equal one-shot computations on the concatenated data.

Every streaming accumulator of the analysis tools (evaluate's loss and reconstruction
sums, the firing counts of the feature tools, the running top-k of the example
search) is fed random data split at random places -- batches of one row, empty
batches, one batch larger than the data -- and compared with a plain computation on
all the data at once, written here. Adversarial corners are generated on purpose:
activations with a large mean (where a one-pass ``Σx² − (Σx)²/n`` variance loses its
digits), latents that never fire, few positives, ties, one row holding most winners.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saehooks.analysis.stats import RunningTopK
from saehooks.metrics import FeatureCounts, ReconstructionSums, TokenSums

REL = 1e-9
SETTINGS = settings(max_examples=80, deadline=None)


@st.composite
def splits(draw, n: int) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` batches covering ``0 … n``: random cuts, all-ones, or one
    batch larger than the data (``hi`` past ``n`` is clipped by slicing)."""
    kind = draw(st.sampled_from(["random", "ones", "oversized"]))
    if kind == "ones":
        return [(i, i + 1) for i in range(n)]
    if kind == "oversized":
        return [(0, n + draw(st.integers(1, 5)))]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))  # repeats: empty batches
    edges = [0, *cuts, n]
    return list(zip(edges[:-1], edges[1:]))


def _activations(rng: np.random.Generator, n: int, d: int, kind: str) -> torch.Tensor:
    if kind == "offset":  # large mean, unit variance: the one-pass variance cancels
        return torch.tensor(rng.normal(size=(n, d)) + rng.uniform(1e4, 1e5, size=d))
    if kind == "tiny":
        return torch.tensor(rng.normal(scale=1e-3, size=(n, d)))
    return torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32).double()


def _latents(rng: np.random.Generator, n: int, d_sae: int, kind: str) -> torch.Tensor:
    if kind == "all_dead":
        return torch.zeros(n, d_sae)
    if kind == "few":  # a handful of positives
        acts = torch.zeros(n, d_sae)
        for _ in range(int(rng.integers(1, 4))):
            acts[rng.integers(n), rng.integers(d_sae)] = float(rng.uniform(0.1, 5))
        return acts
    if kind == "one_row":  # one row holds most of the firing
        acts = torch.zeros(n, d_sae)
        acts[int(rng.integers(n))] = torch.tensor(rng.uniform(0.5, 3, size=d_sae)).float()
        acts[int(rng.integers(n)), int(rng.integers(d_sae))] = 1.0
        return acts
    if kind == "ties":  # every latent fires (k = d_sae) with values from a small set
        return torch.tensor(rng.integers(1, 3, size=(n, d_sae))).float()
    dense = torch.tensor(rng.exponential(size=(n, d_sae))).float()
    return dense * torch.tensor(rng.random((n, d_sae)) < 0.3)


def _close(got: float, want: float) -> None:
    assert got == pytest.approx(want, rel=REL, abs=1e-12)


def _pca_fvu(x: torch.Tensor, rank: int) -> float:
    centred = x - x.mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred).flip(0).clamp_min(0)
    return float(eig[min(rank, eig.numel()) :].sum() / eig.sum())


@SETTINGS
@given(
    data=st.data(),
    n=st.integers(2, 40),
    d_in=st.integers(1, 6),
    d_sae=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    x_kind=st.sampled_from(["normal", "offset", "tiny"]),
    f_kind=st.sampled_from(["dense", "all_dead", "few", "one_row", "ties"]),
)
def test_reconstruction_sums_equal_one_shot(data, n, d_in, d_sae, seed, x_kind, f_kind):
    rng = np.random.default_rng(seed)
    x = _activations(rng, n, d_in, x_kind)
    x_hat = x + torch.tensor(rng.normal(scale=0.3, size=(n, d_in)))
    feats = _latents(rng, n, d_sae, f_kind)
    sums = ReconstructionSums(d_in, d_sae)
    for lo, hi in data.draw(splits(n)):
        sums.add(x[lo:hi].float() if x_kind == "normal" else x[lo:hi], x_hat[lo:hi], feats[lo:hi])
    got = sums.result()

    sse = float(((x - x_hat) ** 2).sum())
    variance = float(((x - x.mean(0)) ** 2).sum())
    l0 = float((feats != 0).sum(-1).double().mean())
    density = (feats != 0).double().mean(0)
    assert got["n_tokens"] == n
    _close(got["fvu"], sse / variance)
    _close(got["explained_variance"], 1 - sse / variance)
    _close(got["mse"], sse / n)
    _close(got["l0"], l0)
    _close(got["l1"], float(feats.abs().sum(-1).double().mean()))
    assert got["dead_fraction"] == float((density == 0).double().mean())
    assert torch.equal(got["feature_density"], density.float())
    assert got["pca_rank"] == round(l0)
    _close(got["pca_fvu"], _pca_fvu(x, round(l0)))


def test_one_pass_variance_would_lose_the_digits_that_the_pairwise_update_keeps():
    """The adversarial case the offset data above stands for, pinned with known numbers:
    x = 1e8 + (-1, 0, 1) has variance sum exactly 2; Σx² − (Σx)²/n in float64 does not."""
    x = torch.tensor([[1e8 - 1], [1e8], [1e8 + 1]], dtype=torch.float64)
    one_pass = float((x**2).sum() - x.sum() ** 2 / 3)
    assert abs(one_pass - 2.0) > 1e-3  # what the old accumulator computed
    sums = ReconstructionSums(1, 1)
    for row in x:
        sums.add(row[None], torch.full((1, 1), 1e8, dtype=torch.float64), torch.zeros(1, 1))
    assert sums.comoment.item() == 2.0
    assert sums.result()["fvu"] == 1.0  # predicting the mean leaves all the variance


@SETTINGS
@given(
    data=st.data(),
    n=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1e6]),
)
def test_token_sums_equal_one_shot_means(data, n, seed, scale):
    rng = np.random.default_rng(seed)
    a = torch.tensor(rng.exponential(scale, size=n)).float()
    b = torch.tensor(rng.normal(scale=scale, size=n)).float()
    sums = TokenSums("a", "b")
    for lo, hi in data.draw(splits(n)):
        sums.add(a=a[lo:hi], b=b[lo:hi])
    assert sums.count == n
    means = sums.means()
    _close(means["a"], float(a.double().mean()))
    _close(means["b"], float(b.double().mean()))


def test_token_sums_with_nothing_added_are_nan():
    assert np.isnan(TokenSums("a").means()["a"])


@SETTINGS
@given(
    data=st.data(),
    n=st.integers(1, 40),
    d_sae=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    f_kind=st.sampled_from(["dense", "all_dead", "few", "one_row", "ties"]),
)
def test_feature_counts_equal_one_shot(data, n, d_sae, seed, f_kind):
    rng = np.random.default_rng(seed)
    acts = _latents(rng, n, d_sae, f_kind)
    counts = FeatureCounts(d_sae)
    for lo, hi in data.draw(splits(n)):
        counts.add(acts[lo:hi])
    assert counts.n_tokens == n
    assert torch.equal(counts.fired, (acts > 0).sum(0).double())
    assert torch.equal(counts.peak, acts.max(0).values.clamp_min(0).double())
    torch.testing.assert_close(counts.total, acts.double().sum(0), rtol=REL, atol=1e-12)
    assert torch.equal(counts.frequency(), (acts > 0).double().mean(0))
    torch.testing.assert_close(counts.mean(), acts.double().mean(0), rtol=REL, atol=1e-12)


def _top_k_brute_force(acts: torch.Tensor, k: int) -> list[tuple[float, int, int]]:
    flat = acts.flatten()
    order = torch.sort(-flat, stable=True).indices  # ties: earlier (sequence, position)
    picked = [int(i) for i in order if flat[i] > 0][:k]
    return [(float(flat[i]), i // acts.shape[1], i % acts.shape[1]) for i in picked]


@SETTINGS
@given(
    data=st.data(),
    n_seq=st.integers(1, 8),
    n_pos=st.integers(1, 12),
    k=st.integers(1, 12),
    context=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["dense", "few", "one_row", "ties", "all_dead"]),
)
def test_running_top_k_equals_a_full_sort(data, n_seq, n_pos, k, context, seed, kind):
    rng = np.random.default_rng(seed)
    acts = _latents(rng, n_seq * n_pos, 1, kind).reshape(n_seq, n_pos)
    if kind == "ties":
        acts = acts - 1.0  # values 0 and 1: many ties at the top, zeros never picked
    top = RunningTopK(k, context)
    for lo, hi in data.draw(splits(n_seq)):
        top.update(lo, acts[lo:hi])
    want = _top_k_brute_force(acts, k)
    assert [(s, p) for s, p, _ in top.items] == [(s, p) for _, s, p in want]
    assert top.values.tolist() == [v for v, _, _ in want]
    for seq, pos, window in top.items:
        lo = max(0, pos - context)
        assert torch.equal(window, acts[seq, lo : pos + context + 1])


def test_accumulators_live_on_the_cpu_in_float64():
    """Inputs of any device and dtype are reduced there and added as ``.cpu()`` float64
    values (on a GPU the per-batch sums come over; the running totals never leave)."""
    sums = ReconstructionSums(3, 4)
    sums.add(torch.randn(5, 3, dtype=torch.float16).float(), torch.randn(5, 3), torch.rand(5, 4))
    counts, tokens = FeatureCounts(4), TokenSums("a")
    counts.add(torch.rand(5, 4, dtype=torch.bfloat16))
    tokens.add(a=torch.rand(5, dtype=torch.float16))
    held = [
        sums.mean,
        sums.comoment,
        sums.sse,
        sums.l0,
        sums.l1,
        sums.counts.fired,
        sums.counts.total,
        counts.total,
        counts.fired,
        counts.peak,
        tokens.sums["a"],
    ]
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in held)
    assert sums.result()["feature_density"].device.type == "cpu"
