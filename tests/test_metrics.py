"""Metric functions against values computed by hand."""

import math

import pytest
import torch

from saehooks import metrics


def test_fvu_uses_variance_about_the_mean_not_about_zero():
    gen = torch.Generator().manual_seed(0)
    x = 1000.0 + torch.randn(500, 8, generator=gen)
    mean_only = x.mean(0).expand_as(x)
    assert metrics.fvu(x, mean_only) == pytest.approx(1.0, abs=1e-6)
    # the E[x^2]-normalised quantity would call this a near-perfect reconstruction
    assert ((x - mean_only).pow(2).sum() / x.pow(2).sum()).item() < 1e-5


def test_identical_inputs_give_zero_fvu_and_zero_kl():
    x = torch.randn(10, 4)
    assert metrics.fvu(x, x) == 0.0
    assert metrics.explained_variance(x, x) == 1.0
    logits = torch.randn(3, 5, 11)
    assert torch.equal(metrics.kl_div(logits, logits), torch.zeros(3, 5))


def test_kl_div_hand_computed():
    p = torch.tensor([0.0, math.log(3.0)])  # softmax -> [0.25, 0.75]
    q = torch.tensor([0.0, 0.0])  # uniform
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert metrics.kl_div(p, q).item() == pytest.approx(expected, rel=1e-6)


def test_next_token_ce_uniform_logits_is_log_vocab():
    tokens = torch.tensor([[0, 1, 2, 3]])
    ce = metrics.next_token_ce(torch.zeros(1, 4, 4), tokens)
    assert ce.shape == (1, 3)
    assert torch.allclose(ce, torch.full((1, 3), math.log(4.0)))


def test_next_token_ce_picks_the_next_token():
    logits = torch.full((1, 2, 3), -1e4)
    logits[0, 0, 2] = 0.0  # position 0 is sure of token 2
    assert metrics.next_token_ce(logits, torch.tensor([[1, 2]])).item() == pytest.approx(0.0)
    assert metrics.next_token_ce(logits, torch.tensor([[1, 0]])).item() == pytest.approx(1e4)


def test_ce_loss_score():
    assert metrics.ce_loss_score(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert metrics.ce_loss_score(2.0, 2.0, 4.0) == 1.0
    assert metrics.ce_loss_score(2.0, 4.0, 4.0) == 0.0
    assert math.isnan(metrics.ce_loss_score(2.0, 2.0, 2.0))


def test_mse_l0_l1():
    x, x_hat = torch.zeros(2, 5, 3), torch.ones(2, 5, 3)
    assert metrics.mse(x, x_hat) == pytest.approx(3.0)
    acts = torch.tensor([[0.0, 2.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    assert metrics.l0(acts).tolist() == [2, 1]
    assert metrics.l1(acts).tolist() == [3.0, 0.5]


def test_pca_fvu_hand_computed():
    # variance 2 along x, 0.5 along y: rank 1 leaves 0.5 / 2.5 unexplained
    x = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + 7.0
    assert metrics.pca_fvu(x, 1) == pytest.approx(0.2)
    assert metrics.pca_fvu(x, 0) == pytest.approx(1.0)
    assert metrics.pca_fvu(x, 2) == pytest.approx(0.0, abs=1e-12)


def test_kl_div_with_a_masked_vocabulary_is_finite_and_right():
    """-inf logits (masked tokens) used to give NaN; the KL over the allowed tokens
    is the KL of the two distributions restricted to them."""
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 10, generator=gen), torch.randn(3, 10, generator=gen)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    kl = metrics.kl_div(p.masked_fill(mask, float("-inf")), q.masked_fill(mask, float("-inf")))
    lp, lq = p[:, ~mask].log_softmax(-1).double(), q[:, ~mask].log_softmax(-1).double()
    expected = (lp.exp() * (lp - lq)).sum(-1)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl.double(), expected, atol=1e-6, rtol=1e-5)
    # q rules out a token p allows: the KL is infinite, not NaN
    only_q = metrics.kl_div(p, q.masked_fill(mask, float("-inf")))
    assert torch.isinf(only_q).all()
