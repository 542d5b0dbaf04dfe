"""Dead latents: the tracker's counts and what resampling does, against hand values
(issue #12: unit tests for ``resample_dead_latents`` and the dead-latent tracker)."""

from __future__ import annotations

import pytest
import torch

from saehooks.sae import SAE, SAEConfig
from saehooks.training.resample import DeadLatentTracker, resample_dead_latents

F, T = False, True


def test_a_latent_is_dead_after_window_tokens_without_firing():
    tracker = DeadLatentTracker(d_sae=4, window=100)
    assert tracker.dead.tolist() == [F, F, F, F] and tracker.dead_fraction == 0.0
    tracker.update(torch.tensor([T, F, F, F]), 60)
    assert tracker.since_fired.tolist() == [0, 60, 60, 60]
    tracker.update(torch.tensor([F, T, F, F]), 39)
    assert tracker.since_fired.tolist() == [39, 0, 99, 99]
    assert tracker.dead.tolist() == [F, F, F, F]  # 99 tokens: not yet
    tracker.update(torch.tensor([F, F, T, F]), 1)
    assert tracker.since_fired.tolist() == [40, 1, 0, 100]
    assert tracker.dead.tolist() == [F, F, F, T]  # exactly 100 tokens: dead
    assert tracker.dead_fraction == 0.25
    tracker.update(torch.tensor([F, F, F, F]), 60)
    assert tracker.dead.tolist() == [T, F, F, T] and tracker.dead_fraction == 0.5
    tracker.revive(torch.tensor([3]))  # a resampled latent gets a fresh window
    assert tracker.since_fired.tolist() == [100, 61, 60, 0]
    tracker.update(torch.tensor([T, F, F, F]), 10)  # firing revives a latent too
    assert tracker.dead.tolist() == [F, F, F, F]


def test_the_tracker_restores_checkpointed_counts_on_its_device():
    tracker = DeadLatentTracker(3, 5, device="cpu")
    tracker.load(torch.tensor([7, 0, 2], dtype=torch.int32))
    assert tracker.since_fired.dtype == torch.long
    assert tracker.dead.tolist() == [T, F, F]


def _sae() -> SAE:
    """d_in 2, d_sae 3; latent 1 is the dead one. Live decoder rows have norms 2 and 4,
    live encoder columns norms 1 and 3."""
    sae = SAE(SAEConfig(d_in=2, d_sae=3, dtype="float64"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [9.0, 9.0], [0.0, 4.0]]))
        sae.W_enc.copy_(torch.tensor([[1.0, 5.0, 0.0], [0.0, 5.0, 3.0]]))
        sae.b_enc.copy_(torch.tensor([0.5, -7.0, 0.25]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    return sae


def _adam_with_state(sae: SAE) -> torch.optim.Adam:
    """Adam after one step, its moments all non-zero."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=0.0)
    for p in sae.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("unit_norm", [True, False])
def test_resampling_sets_the_dead_latent_to_the_worst_input_direction(unit_norm):
    sae = _sae()
    optimizer = _adam_with_state(sae)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    x = torch.tensor([[3.0, 3.0], [4.0, 5.0], [0.0, 0.0]], dtype=torch.float64)
    x_hat = x.clone()
    x_hat[1] = 0.0  # only row 1 is badly reconstructed: every draw picks it
    dead = torch.tensor([F, T, F])
    n = resample_dead_latents(sae, dead, x, x_hat, optimizer, torch.Generator(), unit_norm)
    assert n == 1
    # x[1] − b_dec = [3, 4], norm 5: direction [0.6, 0.8]
    dec_norm = 1.0 if unit_norm else (2.0 + 4.0) / 2  # mean norm of the live rows
    assert torch.allclose(
        sae.W_dec[1], torch.tensor([0.6, 0.8], dtype=torch.float64) * dec_norm, rtol=1e-12
    )
    # encoder: the direction at 0.2 × the mean live column norm (1 + 3) / 2
    assert torch.allclose(
        sae.W_enc[:, 1], torch.tensor([0.24, 0.32], dtype=torch.float64), rtol=1e-12
    )
    assert sae.b_enc[1].item() == 0.0
    for name in ("W_dec", "b_enc"):  # live latents untouched
        assert torch.equal(sae.state_dict()[name][[0, 2]], before[name][[0, 2]])
    assert torch.equal(sae.W_enc[:, [0, 2]], before["W_enc"][:, [0, 2]])
    assert torch.equal(sae.b_dec, before["b_dec"])
    # Adam: the resampled latent's moments are zero, the others' and the step count kept
    state = optimizer.state
    for param, index, rest in (
        (sae.W_dec, (1,), ([0, 2],)),
        (sae.W_enc, (slice(None), 1), (slice(None), [0, 2])),
        (sae.b_enc, (1,), ([0, 2],)),
    ):
        for key in ("exp_avg", "exp_avg_sq"):
            assert bool((state[param][key][index] == 0).all()), key
            assert bool((state[param][key][rest] != 0).all()), key
        assert float(state[param]["step"]) == 1.0
    assert bool((state[sae.b_dec]["exp_avg"] != 0).all())


def test_resampling_draws_without_replacement_while_it_can():
    # three dead latents, three inputs with an error: each input is used once
    sae = SAE(SAEConfig(d_in=2, d_sae=4, dtype="float64"))
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.fill_(1.0)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    x_hat = x.clone()
    x_hat[:3] = 0.0  # rows 0-2 have an error, row 3 none
    dead = torch.tensor([T, T, T, F])
    optimizer = torch.optim.Adam(sae.parameters())
    resample_dead_latents(sae, dead, x, x_hat, optimizer, torch.Generator().manual_seed(0), True)
    rows = {tuple(r) for r in sae.W_dec[:3].tolist()}
    assert rows == {(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)}


def test_more_dead_latents_than_inputs_with_an_error_draw_with_replacement():
    # four dead latents, one input with an error (without replacement this would fail)
    sae = SAE(SAEConfig(d_in=2, d_sae=5, dtype="float64"))
    with torch.no_grad():
        sae.b_dec.zero_()
    x = torch.tensor([[0.0, 3.0], [1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    x_hat = x.clone()
    x_hat[0] = 0.0
    dead = torch.tensor([T, T, T, T, F])
    optimizer = torch.optim.Adam(sae.parameters())
    assert resample_dead_latents(sae, dead, x, x_hat, optimizer, torch.Generator(), True) == 4
    assert sae.W_dec[:4].tolist() == [[0.0, 1.0]] * 4


def test_nothing_to_resample():
    sae = _sae()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    optimizer = _adam_with_state(sae)
    x = torch.ones(2, 2, dtype=torch.float64)
    # no dead latent; and a perfect reconstruction (no input to draw)
    assert (
        resample_dead_latents(
            sae, torch.tensor([F, F, F]), x, x * 0, optimizer, torch.Generator(), True
        )
        == 0
    )
    assert (
        resample_dead_latents(
            sae, torch.tensor([F, T, F]), x, x, optimizer, torch.Generator(), True
        )
        == 0
    )
    assert all(torch.equal(v, before[k]) for k, v in sae.state_dict().items())


def test_with_every_latent_dead_the_norms_come_from_all_latents():
    # the live means would be means of nothing (NaN weights before this was handled)
    sae = _sae()
    x = torch.tensor([[4.0, 5.0]], dtype=torch.float64)
    optimizer = torch.optim.Adam(sae.parameters())
    assert (
        resample_dead_latents(
            sae, torch.tensor([T, T, T]), x, x * 0, optimizer, torch.Generator(), False
        )
        == 3
    )
    dec_norm = (2.0 + 9.0 * 2**0.5 + 4.0) / 3
    enc_norm = (1.0 + 5.0 * 2**0.5 + 3.0) / 3
    direction = torch.tensor([0.6, 0.8], dtype=torch.float64)
    assert torch.allclose(sae.W_dec, (direction * dec_norm).expand(3, 2), rtol=1e-12)
    assert torch.allclose(sae.W_enc, (direction[:, None] * enc_norm * 0.2).expand(2, 3), rtol=1e-12)
