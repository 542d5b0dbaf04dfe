"""Loss functions, kernels and small pure pieces of the trainer, against hand values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saehooks import activation_fns, metrics
from saehooks.cli.flags import field_docs
from saehooks.errors import InputError
from saehooks.sae import SAE, SAEConfig
from saehooks.training import init, losses, sparse
from saehooks.training.config import TrainConfig, parse_count
from saehooks.training.objectives import KLObjective, L1Objective, StepState, TopKObjective
from saehooks.training.trainer import lr_at


def topk_sparse_step(sae, x, cfg, dead):
    return TopKObjective(cfg).sparse_forward(sae, x, dead)


def topk_dense_step(sae, x, cfg, dead):
    return TopKObjective(cfg).dense_forward(sae, x, dead)


def test_mse_sums_over_d_in_and_averages_over_tokens():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x_hat = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    # token 0: 0 + 4 = 4; token 1: 9 + 1 = 10 -> mean 7
    assert losses.mse(x, x_hat).item() == 7.0


def test_the_logged_fvu_uses_variance_about_the_mean():
    # training logs saehooks.metrics.fvu (the package's one FVU) of each batch
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]; Σ‖x - mean‖² = 4
    x_hat = torch.tensor([[2.0, 0.0], [3.0, 2.0]])  # squared error 1
    assert metrics.fvu(x, x_hat) == 0.25
    # the training loss's mse is the same formula as metrics.mse: (1 + 0) / 2 tokens
    assert losses.mse(x, x_hat).item() == metrics.mse(x, x_hat) == 0.5


def test_l1_penalty_weights_by_decoder_norm():
    acts = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    W_dec = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # row norms 2, 0.5
    # token 0: 1*2 = 2; token 1: 2*2 + 3*0.5 = 5.5 -> mean 3.75
    assert losses.l1_penalty(acts, W_dec).item() == pytest.approx(3.75)
    x = torch.zeros(2, 2)
    x_hat = acts @ W_dec  # [[2, 0], [4, 1.5]] -> squared 4 and 18.25 -> mse 11.125
    assert losses.l1_loss(x, x_hat, acts, W_dec, 2.0).item() == pytest.approx(11.125 + 7.5)


def test_firing_probability_and_kl_penalty():
    acts = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    rho_hat = losses.firing_probability(acts, scale=1.0)
    expected = (2 - math.exp(-1) - math.exp(-3)) / 2  # mean of (1 - e^-1, 1 - e^-3)
    assert torch.allclose(rho_hat, torch.tensor([0.0, expected]))
    # with a small scale, rho_hat is the fraction of tokens on which the latent fires
    rare = torch.zeros(1000, 1)
    rare[:3] = 4.0
    assert losses.firing_probability(rare, scale=0.1).item() == pytest.approx(0.003, rel=1e-6)
    rho = 0.1
    got = losses.kl_sparsity_penalty(torch.tensor([0.1, 0.5]), rho)
    # KL(0.1‖0.1) = 0; KL(0.1‖0.5) = 0.1 ln 0.2 + 0.9 ln 1.8
    assert got.item() == pytest.approx(0.1 * math.log(0.2) + 0.9 * math.log(1.8), rel=1e-6)
    # a silent latent costs a finite amount (rho_hat clamped)
    assert torch.isfinite(losses.kl_sparsity_penalty(torch.tensor([0.0]), rho))
    loss = losses.kl_loss(torch.zeros(2, 2), torch.ones(2, 2), acts, rho, beta=0.5)
    expected = 2.0 + 0.5 * losses.kl_sparsity_penalty(rho_hat, rho).item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InputError, match="rho"):
        losses.kl_sparsity_penalty(torch.tensor([0.5]), 0.0)


def test_activation_functions_reject_bad_k_with_input_error():
    pre = torch.tensor([[1.0, -2.0, 3.0]])
    for k in (0, 4):
        with pytest.raises(InputError, match="pass a k between 1 and 3"):
            activation_fns.topk(pre, k)
    for k in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="k >= 1"):
            activation_fns.batch_topk(pre, k)
    assert torch.equal(activation_fns.topk(pre, 2), torch.tensor([[1.0, 0.0, 3.0]]))
    assert torch.equal(activation_fns.batch_topk(pre, 1), torch.tensor([[0.0, 0.0, 3.0]]))


def test_batch_topk_shares_the_budget_over_every_leading_dimension():
    # [2, 2, 3]: 4 rows share k · 4 = 4 slots; row [0, 0] holds three of the four largest
    pre = torch.tensor(
        [[[9.0, 8.0, 7.0], [-1.0, 0.5, -2.0]], [[6.0, -3.0, -4.0], [0.25, 0.0, -5.0]]]
    )
    expected = torch.tensor(
        [[[9.0, 8.0, 7.0], [0.0, 0.0, 0.0]], [[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
    )
    assert torch.equal(activation_fns.batch_topk(pre, 1), expected)
    # k = 2: 8 slots but only 6 positive values; zeros and negatives are never kept
    vals, rows, cols = activation_fns.batch_topk_code(pre.view(4, 3), 2)
    order = (rows * 3 + cols).argsort()  # sorted by row already; within a row, any order
    assert rows.tolist() == [0, 0, 0, 1, 2, 3]
    assert vals[order].tolist() == [9.0, 8.0, 7.0, 0.5, 6.0, 0.25]
    assert cols[order].tolist() == [0, 1, 2, 1, 0, 0]


def test_auxk_loss_and_topk_loss_hand_values():
    residual = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    aux = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # Σ‖e − ê‖² = 4 + 1, Σ‖e‖² = 1 + 4 + 1
    assert losses.auxk_loss(residual, aux).item() == pytest.approx(5 / 6, rel=1e-7)
    assert losses.auxk_loss(residual, torch.zeros(2, 2)).item() == 1.0
    assert losses.auxk_loss(residual, residual).item() == 0.0
    assert losses.auxk_loss(torch.zeros(2, 2), torch.zeros(2, 2)).item() == 0.0
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])
    x_hat = x - residual
    assert losses.topk_loss(x, x_hat).item() == 3.0  # (1 + 4 + 0 + 1) / 2
    # Var(x): mean [2, 1.5], deviations ±[1, 0.5] -> 1.25 per token
    assert losses.topk_loss(x, x_hat, residual, aux, 0.5).item() == pytest.approx(
        3.0 + 0.5 * 1.25 * 5 / 6, rel=1e-7
    )


def _auxk_sae() -> SAE:
    """d_in 2, d_sae 2: latent 0 (alive) explains axis 0, latent 1 (dead) axis 1."""
    sae = SAE(SAEConfig(d_in=2, d_sae=2))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(2))
        sae.W_enc.copy_(torch.eye(2))
        sae.b_dec.copy_(torch.tensor([0.5, 0.25]))  # dyadic: all arithmetic below is exact
    return sae


@pytest.mark.parametrize("step_fn", [topk_sparse_step, topk_dense_step])
def test_auxk_is_exactly_zero_for_a_perfect_dead_reconstruction_with_b_dec(step_fn):
    sae = _auxk_sae()
    x = torch.tensor([[2.5, 1.25]])  # b_dec + 2·e0 + 1·e1
    cfg = TrainConfig(architecture="topk", d_sae=2, k=1, aux_k=1, total_tokens=1, batch_size=1)
    out = step_fn(sae, x, cfg, dead=torch.tensor([False, True]))
    assert torch.equal(out.x_hat, torch.tensor([[2.5, 0.25]]))  # latent 0 only, plus b_dec
    assert out.aux.item() == 0.0  # dead latent 1 reconstructs the residual [0, 1] exactly
    assert out.loss.item() == pytest.approx(1.0)  # main mse only
    # decoding the aux latents *with* b_dec would not be 0: the residual excludes it
    assert losses.auxk_loss(x - out.x_hat, torch.tensor([[0.0, 1.0]]) + sae.b_dec).item() > 0


@pytest.mark.parametrize("step_fn", [topk_sparse_step, topk_dense_step])
def test_auxk_trains_a_dead_latent_whose_pre_activation_is_negative(step_fn):
    # A dead latent below zero is the usual case; a ReLU in the aux path would give it
    # no gradient and AuxK would never revive anything.
    sae = _auxk_sae()
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([0.0, -3.0]))  # latent 1: pre-activation 1 - 3 < 0
    x = torch.tensor([[2.5, 1.25], [1.5, 1.25]])
    cfg = TrainConfig(architecture="topk", d_sae=2, k=1, aux_k=1, total_tokens=2, batch_size=2)
    out = step_fn(sae, x, cfg, dead=torch.tensor([False, True]))
    assert out.aux.item() > 1.0  # ê = -2·e1 points away from e = +1·e1
    out.loss.backward()
    assert sae.b_enc.grad[1].item() < 0  # raising latent 1 lowers the aux loss...
    assert sae.W_dec.grad[1].abs().sum().item() > 0  # ...and its decoder row learns


def _params(seed: int, d_in=16, d_sae=128):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, dtype="float64"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return sae, torch.randn(64, d_in, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["topk", "l1", "kl"])
def test_sparse_kernels_match_dense_autograd(arch):
    sae, x = _params(0)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:40] = True
    cfg = TrainConfig(
        architecture=arch,
        d_sae=128,
        k=6,
        aux_k=4,
        matmul_dtype="float32",
        total_tokens=64,
        batch_size=64,
        l1_coefficient=0.3,
        kl_beta=0.3,
        sparsity_warmup_fraction=0.0,
    )
    results = []
    for use_sparse in (True, False):
        sae.zero_grad()
        c = dataclasses.replace(cfg, sparse_kernels=use_sparse)
        if arch == "topk":
            step = topk_sparse_step if use_sparse else topk_dense_step
            out = step(sae, x, c, dead)
        else:
            with torch.no_grad():  # keep the code sparse enough for the sparse path
                sae.b_enc.fill_(-2.0)
            objective = (L1Objective if arch == "l1" else KLObjective)(c)
            out = objective.forward(sae, x, StepState(0, 0, dead))
        out.loss.backward()
        results.append((out.loss.detach(), out.l0, [p.grad.clone() for p in sae.parameters()]))
    (loss_s, l0_s, grads_s), (loss_d, l0_d, grads_d) = results
    assert l0_s == l0_d
    assert torch.allclose(loss_s, loss_d, rtol=1e-10)
    for gs, gd in zip(grads_s, grads_d):
        assert torch.allclose(gs, gd, rtol=1e-8, atol=1e-10)


def test_sparse_decode_equals_dense_product():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 3, generator=g)
    vals, idx = torch.rand(4, 2, generator=g), torch.randint(0, 10, (4, 2), generator=g)
    code = sparse.code_from_topk(vals, idx)
    assert code.n_rows == 4 and code.offsets.tolist() == [0, 2, 4, 6]
    dense = torch.zeros(4, 10).index_put_((code.rows, code.cols), code.vals, accumulate=True)
    got = sparse.sparse_decode(code, W, sparse.latent_bags(code.cols, 10))
    assert torch.allclose(got, dense @ W, atol=1e-6)


def test_geometric_median_is_robust_and_normalisation_scale():
    pts = torch.tensor([[0.0], [1.0], [10.0]])
    assert init.geometric_median(pts).item() == pytest.approx(1.0, abs=1e-4)
    x = torch.tensor([[3.0, 4.0], [0.0, 10.0]])  # norms 5 and 10 -> mean 7.5
    assert init.normalisation_scale(x) == pytest.approx(math.sqrt(2) / 7.5)
    with pytest.raises(ValueError, match="zero"):
        init.normalisation_scale(torch.zeros(3, 2))


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_fold_scale_reads_raw_activations(arch):
    sae, x = _params(2)
    train = SAE(
        SAEConfig(
            d_in=16, d_sae=128, architecture=arch, k=8 if arch == "topk" else None, dtype="float64"
        )
    )
    train.load_state_dict(sae.state_dict(), strict=False)
    if arch == "jumprelu":
        with torch.no_grad():
            train.threshold.fill_(0.3)
    scale = 0.37
    out = SAE(train.cfg.replace())
    init.fold_scale(train, scale, out)
    if arch == "jumprelu":
        with torch.no_grad():
            out.threshold.fill_(0.3)
    assert torch.allclose(out(x), train(x * scale) / scale, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out.encode(x), train.encode(x * scale), rtol=1e-10, atol=1e-12)


def test_schedules():
    cfg = TrainConfig(
        architecture="l1",
        total_tokens=100 * 10,
        batch_size=10,
        lr=1.0,
        lr_warmup_fraction=0.1,
        lr_decay_fraction=0.2,
        l1_coefficient=4.0,
        sparsity_warmup_fraction=0.5,
    )
    assert cfg.total_steps == 100
    assert [lr_at(s, cfg) for s in (0, 9, 10, 79, 80, 99)] == [0.1, 1.0, 1.0, 1.0, 1.0, 0.05]
    l1 = L1Objective(cfg)
    assert l1.coefficient(0) == pytest.approx(4.0 / 50)
    assert l1.coefficient(49) == l1.coefficient(99) == 4.0
    kl = KLObjective(dataclasses.replace(cfg, architecture="kl", kl_beta=2.0))
    assert kl.coefficient(24) == pytest.approx(1.0) and kl.coefficient(50) == 2.0
    assert TopKObjective(dataclasses.replace(cfg, architecture="topk")).coefficient(0) == 0.0
    l1.log_gain = math.log(3.0)  # the target-L0 controller's factor multiplies it
    assert l1.coefficient(99) == pytest.approx(12.0)


def test_config_fields_are_documented_and_counts_parse():
    docs = field_docs(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert not missing
    assert parse_count("20M") == 20_000_000
    assert parse_count("1.5e6") == 1_500_000
    assert parse_count("64k") == 64_000
    assert parse_count(4096) == 4096
    with pytest.raises(ValueError, match="count"):
        parse_count("lots")
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(architecture="gated")
    with pytest.raises(ValueError, match="k"):
        TrainConfig(architecture="topk", k=0)
    cfg = TrainConfig(architecture="kl", adam_betas=(0.8, 0.99))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
