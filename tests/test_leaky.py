"""Leaky ReLU as a dead-latent remedy (issue #15, part 2): while training, negative
pre-activations of the ``l1``/``kl`` objectives pass a gradient of slope ``leak``; the
forward values, and the saved SAE, stay a plain ReLU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saehooks.errors import SAEHooksError
from saehooks.sae import SAE, SAEConfig
from saehooks.training import losses
from saehooks.training.config import TrainConfig
from saehooks.training.objectives import make_objective
from saehooks.training.objectives.base import StepState

try:
    from tests import conftest_training as _fixtures
except ImportError:  # pytest's rootdir-relative import mode
    import conftest_training as _fixtures

fake_config = _fixtures.fake_config


def test_relu_leaky_grad_on_hand_values():
    pre = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    out = losses.relu_leaky_grad(pre, 0.1)
    assert out.tolist() == [0.0, 0.0, 3.0]  # the forward is a plain ReLU
    out.backward(torch.tensor([1.0, 2.0, 3.0]))
    # slope 1 above zero, leak at and below zero
    torch.testing.assert_close(pre.grad, torch.tensor([0.1, 0.2, 3.0]))
    pre.grad = None
    losses.relu_leaky_grad(pre, 0.0).backward(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(pre.grad, torch.tensor([0.0, 0.0, 3.0]))


def _sae(b_enc, W_dec) -> SAE:
    W_dec = torch.tensor(W_dec)
    sae = SAE(SAEConfig(d_in=W_dec.shape[1], d_sae=W_dec.shape[0]))
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor(b_enc))
        sae.W_dec.copy_(W_dec)
    return sae


@pytest.mark.parametrize("sparse_kernels", [True, False])
def test_l1_leak_gradient_on_hand_values(tmp_path, sparse_kernels):
    # d_in 1, pre = b_enc = (1, −0.5) (W_enc = 0), W_dec = (1; 2), b_dec 0, x = 3, λ 0.5:
    #   a = (1, 0), x̂ = 1, mse = (3 − 1)² = 4, penalty = 1 · ‖W_dec[0]‖ = 1, loss 4.5.
    #   ∂L/∂a_j = −2 (x − x̂) W_dec[j] + λ ‖W_dec[j]‖ = (−4 + 0.5, −8 + 1) = (−3.5, −7).
    #   ∂L/∂b_enc = ∂L/∂a · slope = (−3.5, −7 · leak): 0 for the silent latent without leak.
    base = fake_config(
        tmp_path,
        architecture="l1",
        l1_coefficient=0.5,
        sparsity_warmup_fraction=0.0,
        sparse_kernels=sparse_kernels,
    )
    x = torch.tensor([[3.0]])
    for leak, want in ((0.0, [-3.5, 0.0]), (0.1, [-3.5, -0.7])):
        obj = make_objective(dataclasses.replace(base, leak=leak))
        obj.sparse_max_density = 1.0  # sparse whenever allowed
        sae = _sae([1.0, -0.5], [[1.0], [2.0]])
        out = obj.forward(sae, x, StepState(0, 0, torch.zeros(2, dtype=torch.bool)))
        assert out.loss.item() == pytest.approx(4.5)
        assert out.l0 == 1.0 and out.fired.tolist() == [True, False]
        out.loss.backward()
        torch.testing.assert_close(sae.b_enc.grad, torch.tensor(want))


def test_leak_reaches_latents_that_fire_nowhere_and_changes_no_value(tmp_path):
    g = torch.Generator().manual_seed(0)
    d_in, d_sae, n = 8, 64, 32
    x = torch.randn(n, d_in, generator=g)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    b_enc = torch.full((d_sae,), -50.0)
    b_enc[:2] = 0.0  # two live latents; the other 62 are silent on every token
    results = {}
    for arch in ("l1", "kl"):
        base = fake_config(tmp_path, architecture=arch, d_sae=d_sae, sparsity_warmup_fraction=0.0)
        for leak in (0.0, 0.05):
            obj = make_objective(dataclasses.replace(base, leak=leak))
            sae = _sae(b_enc.tolist(), W_dec.tolist())
            with torch.no_grad():
                sae.W_enc.copy_(W_dec.t())
            out = obj.forward(sae, x, StepState(0, 0, torch.zeros(d_sae, dtype=torch.bool)))
            out.loss.backward()
            results[arch, leak] = (out.loss.item(), out.l0, sae.b_enc.grad[2:].abs().sum().item())
        loss0, l0_0, dead_grad0 = results[arch, 0.0]
        loss1, l0_1, dead_grad1 = results[arch, 0.05]
        assert loss1 == loss0 and l0_1 == l0_0  # the forward is unchanged
        assert dead_grad0 == 0.0 and dead_grad1 > 0.0


def test_leak_is_checked():
    with pytest.raises(SAEHooksError, match="leak must be < 1"):
        TrainConfig(leak=1.0)
    with pytest.raises(SAEHooksError, match="leak"):
        TrainConfig(leak=-0.1)
    assert TrainConfig(leak=0.01).leak == 0.01


def test_a_leaky_run_saves_a_plain_relu_sae(tmp_path):
    from saehooks.training import Trainer

    cfg = fake_config(tmp_path, architecture="l1", leak=0.05, checkpoint_every_tokens=0)
    trainer = Trainer(None, _fixtures.FakeStore(), cfg)
    trainer.run()
    sae = trainer.folded_sae()
    assert sae.cfg.architecture == "relu"
    x = _fixtures.FakeStore(seed=4).next_batch()
    with torch.no_grad():
        pre = (x * trainer.scale - trainer.sae.b_dec) @ trainer.sae.W_enc + trainer.sae.b_enc
        torch.testing.assert_close(sae.encode(x), torch.relu(pre), rtol=1e-4, atol=1e-5)
