"""Every optimised training path equals a plain reference written here (issue #10, part 2).

The references are deliberately naive: dense ``[batch, d_sae]`` matrices, selection
by a full sort, Python-level formulas. Hypothesis draws the inputs and, on purpose,
the corners where pruning and sparse bookkeeping break: few positive
pre-activations, one row holding most of the batch's winners (an outlier high-norm
token), ties at the cut, k = d_sae, every latent dead, no latent dead, rows that are
all negative, codes that cross the chunk boundary of the batched dot products.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from saehooks import activation_fns
from saehooks.sae import SAE, SAEConfig
from saehooks.training import sparse
from saehooks.training.config import TrainConfig
from saehooks.training.objectives import (
    BatchTopKObjective,
    KLObjective,
    L1Objective,
    LoopHandles,
    StepState,
    TopKObjective,
)
from saehooks.training.resample import DeadLatentTracker

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
CORNERS = ("random", "few_positive", "outlier_row", "all_negative", "ties")


# ---- plain references --------------------------------------------------------------
def ref_topk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: the k largest entries by a full descending sort."""
    order = pre.argsort(dim=-1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, True)


def ref_batchtopk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Whole batch: the k·n largest entries by a full descending sort, positive only."""
    flat = pre.flatten()
    order = flat.argsort(descending=True, stable=True)[: k * pre.shape[0]]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.view_as(pre) & (pre > 0)


def ref_code_step(sae: SAE, x, mask, dead, k_aux: int, alpha: float):
    """Dense TopK/BatchTopK loss with AuxK on pre-ReLU dead-latent values (Gao et al.)."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    acts = torch.where(mask, torch.relu(pre), torch.zeros_like(pre))
    x_hat = acts @ sae.W_dec + sae.b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean()
    aux = torch.zeros((), dtype=x.dtype)
    if bool(dead.any()):
        masked = torch.where(dead, pre.detach(), torch.full_like(pre, -torch.inf))
        aux_mask = ref_topk_mask(masked, min(k_aux, int(dead.sum())))
        e = (x - x_hat).detach()
        e_hat = torch.where(aux_mask, pre, torch.zeros_like(pre)) @ sae.W_dec
        variance = ((x - x.mean(0)) ** 2).sum(-1).mean()
        aux = ((e_hat - e) ** 2).sum() / (e**2).sum().clamp_min(1e-300)
        loss = loss + alpha * variance * aux
    active = acts.detach() > 0
    return loss, x_hat.detach(), active, aux.detach()


@contextmanager
def chunk_size(size: int) -> Iterator[None]:
    """Run the sparse kernels with another chunk size of the batched dot products."""
    saved = sparse._CHUNK
    sparse._CHUNK = size
    try:
        yield
    finally:
        sparse._CHUNK = saved


@contextmanager
def dots_path(path: str) -> Iterator[None]:
    """Run the sparse kernels' dot products on ``sampled_addmm`` ("sampled", the default
    for fp32/fp64) or on the chunked gather-and-bmm fallback ("chunked")."""
    saved = sparse._SAMPLED_DTYPES
    sparse._SAMPLED_DTYPES = saved if path == "sampled" else ()
    try:
        yield
    finally:
        sparse._SAMPLED_DTYPES = saved


def topk_sparse_step(sae: SAE, x, cfg: TrainConfig, dead):
    """The TopK objective's forward pass on the sparse kernels."""
    return TopKObjective(cfg).sparse_forward(sae, x, dead)


def topk_dense_step(sae: SAE, x, cfg: TrainConfig, dead):
    """The TopK objective's dense autograd forward pass."""
    return TopKObjective(cfg).dense_forward(sae, x, dead)


def batchtopk_step(sae: SAE, x, cfg: TrainConfig, dead):
    """The BatchTopK objective's forward pass at the first step."""
    return BatchTopKObjective(cfg).forward(sae, x, StepState(0, 0, dead))


def relu_step(sae: SAE, x, cfg: TrainConfig, running, tokens_seen: int):
    """The l1 / kl objective's forward pass after ``tokens_seen`` tokens (its
    coefficient is the configured one: no warm-up in these configs), then its
    ``after_step``; the kl running estimate starts at ``running`` (None: the first
    batch). Returns the output and the objective."""
    objective = (L1Objective if cfg.architecture == "l1" else KLObjective)(cfg)
    if running is not None:
        objective.running = running.clone()
    d_sae = sae.cfg.d_sae
    out = objective.forward(sae, x, StepState(0, tokens_seen, torch.zeros(d_sae, dtype=bool)))
    loop = LoopHandles(
        torch.optim.Adam(sae.parameters()), DeadLatentTracker(d_sae, 10**9), torch.Generator()
    )
    objective.after_step(
        sae, x, out, StepState(0, tokens_seen, torch.zeros(d_sae, dtype=bool)), loop
    )
    return out, objective


def ref_grads(sae: SAE, loss: torch.Tensor) -> list[torch.Tensor]:
    sae.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    return grads


# ---- inputs --------------------------------------------------------------------------
def _twins(d_sae: int) -> torch.Tensor:
    """Group id of each latent: latent ``h + j`` is the twin of latent ``j``."""
    twin = torch.arange(d_sae)
    half = d_sae // 2
    twin[half : 2 * half] = torch.arange(half)
    return twin


def fold_twins(t: torch.Tensor, twin: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a tensor over each group of twin latents along ``dim`` (the latent axis)."""
    out = torch.zeros_like(t)
    return out.index_add(dim, twin, t)


@st.composite
def sae_problems(draw):
    """(sae, x, k, dead, twin): a float64 SAE and batch with one corner built in.

    ``twin`` maps latents to groups of identical latents: with the ``ties`` corner the
    second half of the latents duplicates the first (exact dyadic values, so every
    pre-activation ties with its twin's), and which of two tied latents is kept is
    arbitrary; only twin-summed quantities are then comparable.
    """
    n = draw(st.integers(1, 10))
    d_in = draw(st.integers(1, 6))
    d_sae = draw(st.integers(1, 40))
    k = draw(
        st.one_of(
            st.just(d_sae), st.just(1), st.integers(1, max(1, d_sae // 4)), st.integers(1, d_sae)
        )
    )
    corner = draw(st.sampled_from(CORNERS))
    dead_kind = draw(st.sampled_from(("none", "all", "some")))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, dtype="float64"))

    def sample(*shape, step=1 / 64):
        if corner == "ties":  # dyadic values: every product and sum below is exact
            return torch.randint(-256, 257, shape, generator=g).double() * step
        return torch.randn(shape, generator=g, dtype=torch.float64)

    x = sample(n, d_in)
    twin = torch.arange(d_sae)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(sample(*p.shape, step=1 / 128 if name.startswith("W") else 1 / 64))
        if corner == "few_positive":  # most pre-activations far below zero
            sae.b_enc.sub_(4.0 + 4.0 * torch.rand(d_sae, generator=g, dtype=torch.float64))
        elif corner == "outlier_row":  # one high-norm token in a sparse batch holds
            x[draw(st.integers(0, n - 1))] *= 40.0  # most (often all) positive values
            sae.b_enc.sub_(draw(st.sampled_from((3.0, 12.0))))
        elif corner == "all_negative":
            sae.b_enc.fill_(-1e3)
        elif corner == "ties":
            twin = _twins(d_sae)
            sae.W_enc.copy_(sae.W_enc[:, twin])
            sae.b_enc.copy_(sae.b_enc[twin])
            sae.W_dec.copy_(sae.W_dec[twin])
    if dead_kind == "none":
        dead = torch.zeros(d_sae, dtype=torch.bool)
    elif dead_kind == "all":
        dead = torch.ones(d_sae, dtype=torch.bool)
    else:
        dead = torch.rand(d_sae, generator=g) < 0.5
        if corner == "ties":  # twins share their state, so ties stay harmless
            dead = dead[twin]
    return sae, x, k, dead, twin


def tie_decided(values: torch.Tensor, k: int, groups: torch.Tensor, positive: bool) -> bool:
    """Whether the k largest entries of each row of ``values`` are fixed up to swaps of
    equal entries within one group (twins): no two groups tie at a row's cut. With
    ``positive`` only a positive cut matters (non-positive entries are dropped)."""
    for row, grp in zip(values, groups):
        if k >= row.numel():
            continue
        cut = row.sort(descending=True).values[k - 1]
        if (cut > 0 or not positive) and grp[row == cut].unique().numel() > 1:
            return False
    return True


def selection_is_decided(pre, k, dead, k_aux, twin, batch: bool) -> bool:
    """No tie between different latents (other than twins) at the main or AuxK cut."""
    n, d_sae = pre.shape
    if batch:
        pairs = torch.arange(n)[:, None] * d_sae + twin[None, :]
        main = tie_decided(pre.flatten()[None], k * n, pairs.flatten()[None], True)
    else:
        main = tie_decided(pre, k, twin.expand(n, d_sae), True)
    if not bool(dead.any()):
        return main
    ids = dead.nonzero().squeeze(1)
    return main and tie_decided(
        pre[:, ids], min(k_aux, ids.numel()), twin[ids].expand(n, ids.numel()), False
    )


def _cfg(arch: str, d_sae: int, k: int, n: int, aux_k: int = 3, **changes) -> TrainConfig:
    base = dict(
        architecture=arch,
        d_sae=d_sae,
        k=k,
        aux_k=aux_k,
        aux_coefficient=0.25,
        matmul_dtype="float32",
        total_tokens=n,
        batch_size=n,
        sparsity_warmup_fraction=0.0,
        resample_dead=False,
    )
    return TrainConfig(**{**base, **changes})


def _check_against_reference(sae: SAE, x, out, mask, dead, cfg: TrainConfig, twin) -> None:
    """Loss, reconstruction, L0, fired latents, AuxK value and every gradient."""
    n = x.shape[0]
    loss, x_hat, active, aux = ref_code_step(sae, x, mask, dead, cfg.aux_k, cfg.aux_coefficient)
    assert torch.allclose(out.loss, loss, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out.x_hat, x_hat, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out.aux, aux, rtol=1e-10, atol=1e-12)
    assert out.l0 == float(active.sum()) / n
    assert torch.equal(
        fold_twins(out.fired.long(), twin, 0) > 0,  # some twin fired
        fold_twins(active.any(0).long(), twin, 0) > 0,
    )
    got, ref = ref_grads(sae, out.loss), ref_grads(sae, loss)
    for (name, _), a, b in zip(sae.named_parameters(), got, ref):
        dim = {"W_enc": 1, "b_enc": 0, "W_dec": 0}.get(name)
        if dim is not None:
            a, b = fold_twins(a, twin, dim), fold_twins(b, twin, dim)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), name


# ---- BatchTopK candidate pruning -------------------------------------------------------
def test_batchtopk_issue_example_keeps_every_exact_winner():
    # Issue #10: k=1, 5 rows, d_sae=16; row 0 holds [5, 4, 3, 2, 1, -1, ...] and every
    # other row is negative. Exact BatchTopK keeps 5 latents, threshold sample 1.0; the
    # pruned candidates (4k = 4 per row) kept only 4 and sampled 2.0.
    sae = SAE(SAEConfig(d_in=16, d_sae=16))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(16))
        sae.W_dec.copy_(torch.eye(16))
    x = -torch.ones(5, 16)
    x[0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    out = batchtopk_step(sae, x, _cfg("batchtopk", 16, 1, 5), torch.zeros(16, dtype=torch.bool))
    assert out.l0 * 5 == 5.0
    assert out.min_active == 1.0
    assert torch.equal(out.x_hat[0], torch.cat([x[0, :5], torch.zeros(11)]))
    assert torch.equal(out.x_hat[1:], torch.zeros(4, 16))


@pytest.mark.parametrize("bias", [-4.0, -9.0])
def test_batchtopk_outlier_token_is_reconstructed_exactly(bias):
    # An outlier high-norm token owns far more than 4k winners: every one must be kept,
    # whether the other rows fill the budget (bias -4) or the batch is sparse, with
    # fewer positive values than k · batch (bias -9: the case the pruning missed).
    g = torch.Generator().manual_seed(0)
    d_sae, k, n = 64, 2, 32
    sae = SAE(SAEConfig(d_in=8, d_sae=d_sae, dtype="float64"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.b_enc.fill_(bias)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    x[7] *= 30.0
    none_dead = torch.zeros(d_sae, dtype=torch.bool)
    cfg = _cfg("batchtopk", d_sae, k, n)
    out = batchtopk_step(sae, x, cfg, none_dead)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    mask = ref_batchtopk_mask(pre, k)
    assert int(mask[7].sum()) > 4 * k  # the corner is really hit
    assert (int(mask.sum()) == k * n) == (bias == -4.0)  # full budget, or a sparse batch
    _check_against_reference(sae, x, out, mask, none_dead, cfg, torch.arange(d_sae))
    assert out.min_active == pytest.approx(float(pre[mask].min()), rel=1e-12)


@st.composite
def pre_matrices(draw):
    """(pre, k) with the corners of the candidate pruning, exact dyadic values."""
    n = draw(st.integers(1, 12))
    d_sae = draw(st.integers(1, 48))
    k = draw(
        st.one_of(
            st.just(1), st.just(d_sae), st.integers(1, max(1, d_sae // 4)), st.integers(1, d_sae)
        )
    )
    corner = draw(st.sampled_from(CORNERS))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if corner == "ties":  # few distinct values: ties at every cut
        pre = torch.randint(-2, 3, (n, d_sae), generator=g).double()
    else:
        pre = torch.randint(-(2**20), 2**20, (n, d_sae), generator=g).double() / 2**16
    if corner == "few_positive":
        pre = pre - 40.0
        hot = torch.rand(n, d_sae, generator=g) < 0.05
        pre[hot] = pre[hot].abs() + 41.0
    elif corner == "outlier_row":
        row = draw(st.integers(0, n - 1))
        pre -= 40.0
        pre[row] += 80.0  # this row holds every positive value
    elif corner == "all_negative":
        pre = -pre.abs() - 1.0
    return pre, k


@SETTINGS
@given(pre_matrices())
def test_batchtopk_code_equals_a_full_sort(case):
    pre, k = case
    vals, rows, cols = activation_fns.batch_topk_code(pre, k)
    mask = ref_batchtopk_mask(pre, k)
    ref_vals = pre[mask]
    # invariants that hold even with ties at the cut: the kept values as a multiset,
    # hence their number and their minimum (the BatchTopK threshold sample)
    assert torch.equal(vals.sort().values, ref_vals.sort().values)
    assert bool((vals > 0).all())
    assert torch.equal(pre[rows, cols], vals)  # coordinates point at the values
    assert bool((rows[1:] >= rows[:-1]).all())  # sorted by row
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # no duplicates
    # activation_fns.batch_topk, built on the same selection, keeps the same values
    dense = activation_fns.batch_topk(pre, k)
    assert torch.equal(dense[dense > 0].sort().values, ref_vals.sort().values)
    if ref_vals.numel() and int((pre == ref_vals.min()).sum()) == 1:
        got = torch.zeros_like(mask)  # no tie at the cut: the kept set itself is unique
        got[rows, cols] = True
        assert torch.equal(got, mask)


@settings(SETTINGS, max_examples=100)
@given(sae_problems())
def test_batchtopk_forward_equals_dense_reference(problem):
    sae, x, k, dead, twin = problem
    n, d_sae = x.shape[0], sae.cfg.d_sae
    cfg = _cfg("batchtopk", d_sae, k, n)
    out = batchtopk_step(sae, x, cfg, dead)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    assume(selection_is_decided(pre, k, dead, cfg.aux_k, twin, batch=True))
    mask = ref_batchtopk_mask(pre, k)
    expected_min = float(pre[mask].min()) if bool(mask.any()) else 0.0
    assert out.min_active == pytest.approx(expected_min, rel=1e-12, abs=1e-14)
    _check_against_reference(sae, x, out, mask, dead, cfg, twin)


# ---- TopK: sparse kernels and the dense autograd path --------------------------------
@SETTINGS
@given(sae_problems(), st.sampled_from(("sparse", "dense")))
def test_topk_forward_equals_dense_reference(problem, path):
    sae, x, k, dead, twin = problem
    n, d_sae = x.shape[0], sae.cfg.d_sae
    cfg = _cfg("topk", d_sae, k, n)
    step = topk_sparse_step if path == "sparse" else topk_dense_step
    out = step(sae, x, cfg, dead)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    assume(selection_is_decided(pre, k, dead, cfg.aux_k, twin, batch=False))
    _check_against_reference(sae, x, out, ref_topk_mask(pre, k), dead, cfg, twin)


@settings(SETTINGS, max_examples=40)
@given(st.lists(sae_problems(), min_size=2, max_size=4), st.sampled_from(("sampled", "chunked")))
def test_topk_objective_reused_over_steps_equals_reference_each_time(problems, path):
    # One objective across batches of other sizes, SAEs and dead sets: its reused
    # pre-activation and AuxK scratch buffers never leak one step into the next, and an
    # earlier step's outputs stay intact after later steps overwrite the buffers.
    objective = TopKObjective(_cfg("topk", 1, 1, 1))
    kept = []
    with dots_path(path):
        for sae, x, k, dead, twin in problems:
            n, d_sae = x.shape[0], sae.cfg.d_sae
            cfg = _cfg("topk", d_sae, k, n)
            objective.cfg = cfg
            out = objective.sparse_forward(sae, x, dead)
            pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
            if not selection_is_decided(pre, k, dead, cfg.aux_k, twin, batch=False):
                continue
            _check_against_reference(sae, x, out, ref_topk_mask(pre, k), dead, cfg, twin)
            kept.append((out.x_hat.clone(), out.x_hat, out.loss.detach().clone(), out.loss))
    for x_hat_then, x_hat, loss_then, loss in kept:
        assert torch.equal(x_hat, x_hat_then) and torch.equal(loss.detach(), loss_then)


def test_encoder_pre_into_a_buffer_equals_a_fresh_result():
    g = torch.Generator().manual_seed(4)
    x_c, W_enc, b_enc = (
        torch.randn(5, 3, generator=g),
        torch.randn(3, 7, generator=g),
        torch.randn(7, generator=g),
    )
    for dtype in (torch.float32, torch.bfloat16):
        fresh = sparse.encoder_pre(x_c, W_enc, b_enc, dtype)
        buf = torch.full((5, 7), float("nan"))
        got = sparse.encoder_pre(x_c, W_enc, b_enc, dtype, out=buf)
        assert got.data_ptr() == buf.data_ptr() and torch.equal(got, fresh)
        ref = (x_c.to(dtype) @ W_enc.to(dtype)).float() + b_enc
        assert torch.allclose(
            got, ref if dtype == torch.bfloat16 else x_c @ W_enc + b_enc, atol=1e-5
        )


@pytest.mark.parametrize("step", [topk_sparse_step, topk_dense_step])
def test_auxk_default_k_aux_with_every_latent_dead(step):
    # aux_k = 0 picks the power of two nearest d_in / 2 (4 for d_in 8); with every
    # latent dead the aux latents are the 4 largest pre-activations of all latents.
    g = torch.Generator().manual_seed(5)
    sae = SAE(SAEConfig(d_in=8, d_sae=24, dtype="float64"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    dead = torch.ones(24, dtype=torch.bool)
    out = step(sae, x, _cfg("topk", 24, 3, 6, aux_k=0), dead)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    _check_against_reference(
        sae, x, out, ref_topk_mask(pre, 3), dead, _cfg("topk", 24, 3, 6, aux_k=4), torch.arange(24)
    )


# ---- ReLU objectives: sparse path vs dense path vs reference ---------------------------
def ref_relu_loss(sae, x, arch, coefficient, scale, rho, running, tokens_seen, window):
    """Plain dense l1 / kl loss; kl valued on the running estimate (over ``window``
    tokens, starting from ``running``) with the batch penalty's gradient."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    acts = torch.relu(pre)
    x_hat = acts @ sae.W_dec + sae.b_dec
    mse = ((x_hat - x) ** 2).sum(-1).mean()
    n = x.shape[0]
    if arch == "l1":
        return mse + coefficient * (acts * sae.W_dec.norm(dim=-1)).sum() / n, None
    rho_b = (1.0 - torch.exp(-acts / scale)).mean(0)
    a = min(1.0, n / min(window, tokens_seen + n))
    r = (1 - a) * running + a * rho_b.detach()
    q, q_b = r.clamp(1e-6, 1 - 1e-6), rho_b.clamp(1e-6, 1 - 1e-6)
    kl = (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).sum()
    kl_b = (rho * torch.log(rho / q_b) + (1 - rho) * torch.log((1 - rho) / (1 - q_b))).sum()
    # value on the running estimate, gradient of the batch penalty
    return mse + coefficient * (kl + kl_b - kl_b.detach()), r


@SETTINGS
@given(
    sae_problems(),
    st.sampled_from(("l1", "kl")),
    st.booleans(),
    st.integers(0, 10**6),
    st.sampled_from((0.0, 2.0, 6.0)),
    st.sampled_from((1, 7, 64, 32768)),
)
def test_relu_paths_equal_dense_reference(problem, arch, use_running, tokens_seen, shift, window):
    # window 1 / 7: shorter than most batches (the estimate is the batch's own)
    sae, x, _, _, _ = problem
    n, d_sae = x.shape[0], sae.cfg.d_sae
    with torch.no_grad():  # a larger shift: sparse enough for the sparse path
        sae.b_enc.sub_(shift)
    start = torch.linspace(0.0, 0.2, d_sae, dtype=torch.float64) if use_running else None
    results = []
    for sparse_kernels in (True, False):
        cfg = _cfg(
            arch,
            d_sae,
            1,
            n,
            kl_rho=0.05,
            kl_scale=0.3,
            kl_window_tokens=window,
            l1_coefficient=0.7,
            kl_beta=0.7,
            sparse_kernels=sparse_kernels,
        )
        out, objective = relu_step(sae, x, cfg, start, tokens_seen)
        results.append((out, objective, ref_grads(sae, out.loss)))
    zeros = torch.zeros(d_sae, dtype=torch.float64)  # the estimate before any batch
    loss, r = ref_relu_loss(
        sae, x, arch, 0.7, 0.3, 0.05, zeros if start is None else start, tokens_seen, window
    )
    ref = ref_grads(sae, loss)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    for out, objective, grads in results:
        assert torch.allclose(out.loss.detach(), loss.detach(), rtol=1e-10, atol=1e-12)
        assert out.l0 == float((pre > 0).sum()) / n
        assert torch.equal(out.fired, (pre > 0).any(0))
        for a, b in zip(grads, ref):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
        if arch == "kl":  # after_step took the batch into the estimate
            assert torch.allclose(objective.running, r, rtol=1e-12, atol=1e-15)


def test_relu_sparse_path_is_taken_and_equals_dense():
    # guard: the sparse branch really runs (code at most 1/16 dense) in this comparison
    g = torch.Generator().manual_seed(3)
    sae = SAE(SAEConfig(d_in=8, d_sae=128, dtype="float64"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.b_enc.fill_(-7.0)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    nnz = int((pre > 0).sum())
    assert 0 < nnz <= 32 * 128 // 16
    for arch in ("l1", "kl"):
        outs = []
        for sparse_kernels in (True, False):
            cfg = _cfg(
                arch, 128, 1, 32, sparse_kernels=sparse_kernels, l1_coefficient=0.5, kl_beta=0.5
            )
            running = torch.full((128,), 0.01, dtype=torch.float64)
            outs.append(relu_step(sae, x, cfg, running, 4096)[0])
        assert torch.allclose(outs[0].loss, outs[1].loss, rtol=1e-12)
        for a, b in zip(ref_grads(sae, outs[0].loss), ref_grads(sae, outs[1].loss)):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- the sparse kernels themselves ----------------------------------------------------
@st.composite
def sparse_codes(draw):
    """A COO code (rows sorted, unique (row, col)) with empty rows, maybe nnz = 0."""
    n = draw(st.integers(1, 12))
    d_sae = draw(st.integers(1, 30))
    d_in = draw(st.integers(1, 5))
    density = draw(st.sampled_from((0.0, 0.05, 0.3, 1.0)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, d_sae, generator=g) < density
    if draw(st.booleans()):
        mask[draw(st.integers(0, n - 1))] = True  # one row holding every latent
    rows, cols = mask.nonzero(as_tuple=True)
    tensors = [
        torch.randn(s, generator=g, dtype=torch.float64)
        for s in ((n, d_in), (d_in, d_sae), (d_sae,), (d_sae, d_in), (n, d_in))
    ]
    return n, d_sae, rows, cols, tensors


@SETTINGS
@given(sparse_codes(), st.sampled_from((1, 2, 3, 7, sparse._CHUNK)))
def test_sparse_kernels_and_gradients_equal_dense_autograd(code, chunk):
    # the default path: one sampled_addmm for the dot products
    n, d_sae, rows, cols, (x_c, W_enc, b_enc, W_dec, upstream) = code
    _check_kernels(n, d_sae, rows, cols, x_c, W_enc, b_enc, W_dec, upstream)
    with dots_path("chunked"), chunk_size(chunk):  # small chunks: codes cross boundaries
        _check_kernels(n, d_sae, rows, cols, x_c, W_enc, b_enc, W_dec, upstream)


def _check_kernels(n, d_sae, rows, cols, x_c, W_enc, b_enc, W_dec, upstream) -> None:
    leaves = [t.clone().requires_grad_(True) for t in (x_c, W_enc, b_enc, W_dec)]
    xs, We, be, Wd = leaves
    with torch.no_grad():
        selected = (xs @ We + be)[rows, cols]
    code, bags = sparse.code_from_rows(selected, rows, cols, n), sparse.latent_bags(cols, d_sae)
    vals = sparse.selected_pre(xs, We, be, code, bags)
    out = sparse.sparse_decode(code._replace(vals=vals), Wd, bags)
    (out * upstream).sum().backward()
    got = [t.grad.clone() if t.grad is not None else torch.zeros_like(t) for t in leaves]
    # dense reference: scatter the selected pre-activations into [n, d_sae]
    ref_leaves = [t.clone().requires_grad_(True) for t in (x_c, W_enc, b_enc, W_dec)]
    rx, rWe, rbe, rWd = ref_leaves
    mask = torch.zeros(n, d_sae, dtype=torch.bool)
    mask[rows, cols] = True
    dense = torch.where(mask, rx @ rWe + rbe, torch.zeros(n, d_sae, dtype=torch.float64))
    ref_out = dense @ rWd
    (ref_out * upstream).sum().backward()
    assert torch.allclose(out.detach(), ref_out.detach(), rtol=1e-12, atol=1e-12)
    for a, r in zip(got, ref_leaves):
        assert torch.allclose(a, r.grad, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(0, 50), st.sampled_from((1, 3, 16, 2048)))
def test_rowwise_dots_equal_a_python_loop(seed, nnz, chunk):
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(7, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 5, generator=g, dtype=torch.float64),
    )
    ai, bi = torch.randint(0, 7, (nnz,), generator=g), torch.randint(0, 4, (nnz,), generator=g)
    with chunk_size(chunk):
        got = sparse._rowwise_dots(a, ai, b, bi)
    ref = torch.tensor(
        [float(a[i] @ b[j]) for i, j in zip(ai.tolist(), bi.tolist())], dtype=torch.float64
    )
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", ["sampled", "chunked"])
def test_chunk_boundary_is_crossed_at_the_real_chunk_size(path):
    # nnz > _CHUNK with the shipped chunk size: entries after the first chunk are used
    g = torch.Generator().manual_seed(9)
    n, d_sae, d_in = 200, 96, 3
    assert n * d_sae > sparse._CHUNK
    rows = torch.arange(n).repeat_interleave(d_sae)
    cols = torch.arange(d_sae).repeat(n)
    vals = torch.randn(n * d_sae, generator=g, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    with dots_path(path):
        out = sparse.sparse_decode(
            sparse.code_from_rows(vals, rows, cols, n), W_dec, sparse.latent_bags(cols, d_sae)
        )
        upstream = torch.randn(n, d_in, generator=g, dtype=torch.float64)
        (out * upstream).sum().backward()
    ref = (upstream @ W_dec.detach().t()).flatten()  # ∂/∂vals[b, j] = upstream[b] · W_dec[j]
    assert torch.allclose(vals.grad, ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(out, vals.detach().view(n, d_sae) @ W_dec.detach(), rtol=1e-12)


@st.composite
def row_sorted_codes(draw):
    """(rows_table, cols_table, code) with empty rows anywhere (first, last, all), one row
    holding every column, columns unordered within a row, repeated (row, col) pairs."""
    n = draw(st.integers(1, 9))
    n_cols = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    counts = [draw(st.sampled_from((0, 0, 1, 3, n_cols, n_cols + 2))) for _ in range(n)]
    rows = torch.repeat_interleave(torch.arange(n), torch.tensor(counts, dtype=torch.long))
    if draw(st.booleans()):  # every column once per row, in a shuffled order
        cols = torch.cat([torch.randperm(n_cols, generator=g)[: min(c, n_cols)] for c in counts])
        rows = torch.repeat_interleave(
            torch.arange(n), torch.tensor([min(c, n_cols) for c in counts], dtype=torch.long)
        )
    else:  # random columns, repeats allowed
        cols = torch.randint(0, n_cols, (len(rows),), generator=g)
    dtype = draw(st.sampled_from((torch.float64, torch.float32, torch.bfloat16)))
    a = torch.randn(n, d, generator=g).to(dtype)
    b = torch.randn(n_cols, d, generator=g).to(dtype)
    vals = torch.zeros(len(rows), dtype=dtype)
    return a, b, sparse.code_from_rows(vals, rows, cols, n)


@SETTINGS
@given(row_sorted_codes(), st.sampled_from(("sampled", "chunked")))
def test_sampled_dots_equal_a_python_loop(case, path):
    a, b, code = case
    with dots_path(path):
        got = sparse.sampled_dots(a, b, code)
    ref = [
        float(a[i].double() @ b[j].double()) for i, j in zip(code.rows.tolist(), code.cols.tolist())
    ]
    assert got.dtype == a.dtype and got.shape == code.cols.shape
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[a.dtype]
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), rtol=tol, atol=tol)


def test_k_equal_d_sae_and_all_rows_negative_through_both_topk_objectives():
    g = torch.Generator().manual_seed(11)
    sae = SAE(SAEConfig(d_in=4, d_sae=6, dtype="float64"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    for arch in ("topk", "batchtopk"):
        cfg = _cfg(arch, 6, 6, 5)
        step = topk_sparse_step if arch == "topk" else batchtopk_step
        out = step(sae, x, cfg, torch.zeros(6, dtype=torch.bool))
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        # k = d_sae: every positive pre-activation is kept, i.e. a plain ReLU SAE
        assert torch.allclose(out.x_hat, torch.relu(pre) @ sae.W_dec + sae.b_dec, rtol=1e-12)
        with torch.no_grad():
            sae.b_enc.sub_(1e3)
        out = step(sae, x, dataclasses.replace(cfg, k=2), torch.ones(6, dtype=torch.bool))
        assert out.l0 == 0.0 and out.min_active == 0.0 and not bool(out.fired.any())
        assert torch.equal(out.x_hat, sae.b_dec.detach().expand(5, 4))
        out.loss.backward()  # AuxK still trains the (all dead) latents
        assert float(sae.b_enc.grad.abs().sum()) > 0
        sae.zero_grad()
        with torch.no_grad():
            sae.b_enc.add_(1e3)
