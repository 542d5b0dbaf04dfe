"""Dead latents: tracking (every objective), and resampling (the ``l1`` / ``kl`` remedy).

A latent is *dead* when it has not fired on any of the last ``window`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saehooks.sae import SAE


class DeadLatentTracker:
    """Tokens since each latent last fired.

    Args:
        d_sae: number of latents.
        window: tokens without firing after which a latent counts as dead.
        device: where the counters live (the training device).
    """

    def __init__(self, d_sae: int, window: int, device: str | torch.device = "cpu") -> None:
        self.window = window
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        """``[d_sae]`` long: tokens seen since each latent last fired."""
        self.revivals = 0
        """Calls of :meth:`revive` so far: the data-parallel loop compares it before and
        after a step to learn that latents were re-initialised (resampled) there."""

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """Record a batch of ``n_tokens`` in which the latents ``fired [d_sae]`` fired."""
        self.since_fired += n_tokens
        self.since_fired[fired] = 0

    @property
    def dead(self) -> Tensor:
        """``[d_sae]`` bool mask: latents silent for at least ``window`` tokens."""
        return self.since_fired >= self.window

    @property
    def dead_fraction(self) -> float:
        """Fraction of the latents that are dead."""
        return float(self.dead.float().mean())

    def revive(self, latents: Tensor) -> None:
        """Give resampled latents a fresh window."""
        self.revivals += 1
        self.since_fired[latents] = 0

    def load(self, since_fired: Tensor) -> None:
        """Restore the counters ``[d_sae]`` of a checkpoint (kept on this tracker's device)."""
        self.since_fired = since_fired.to(self.since_fired.device, torch.long, copy=True)


@torch.no_grad()
def resample_dead_latents(
    sae: SAE,
    dead: Tensor,
    x: Tensor,
    x_hat: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    unit_norm_decoder: bool,
    encoder_scale: float = 0.2,
) -> int:
    """Re-initialise dead latents on inputs the SAE reconstructs badly.

    Source: Bricken et al. 2023, "Towards Monosemanticity", appendix "Neuron
    resampling": sample inputs with probability proportional to the square of their
    reconstruction loss; set the dead latent's decoder row to the (bias-centred) input
    direction, its encoder column to that direction scaled to ``encoder_scale`` times
    the mean encoder norm of the live latents, its bias to 0, and reset the Adam
    moments of everything that changed (Adam's step count is kept).

    Inputs are drawn without replacement while there are at least as many inputs with
    a positive error as dead latents, else with replacement.

    Args:
        sae: training-space SAE, modified in place.
        dead: ``[d_sae]`` bool mask.
        x: normalised inputs ``[n, d_in]``.
        x_hat: their reconstructions ``[n, d_in]``.
        optimizer: Adam over the SAE's parameters (its moments are reset in place).
        generator: random source of the sampling (on ``x``'s device).
        unit_norm_decoder: decoder rows are unit norm; otherwise new rows get the mean
            norm of the live rows.
        encoder_scale: encoder norm of a resampled latent relative to the live mean.
            (With every latent dead, the means are taken over all latents.)

    Returns:
        The number of latents resampled (0 when none is dead or every input is
        reconstructed exactly).
    """
    ids = dead.nonzero().squeeze(1)
    if ids.numel() == 0:
        return 0
    err = (x - x_hat).pow(2).sum(-1)
    n_positive = int((err > 0).sum())
    if n_positive == 0:
        return 0
    picks = torch.multinomial(
        err.double(), ids.numel(), replacement=ids.numel() > n_positive, generator=generator
    )
    direction = x[picks] - sae.b_dec
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead if bool((~dead).any()) else torch.ones_like(dead)  # all dead: all
    dec_norm = 1.0 if unit_norm_decoder else float(sae.W_dec[alive].norm(dim=-1).mean())
    enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean())
    sae.W_dec[ids] = direction * dec_norm
    sae.W_enc[:, ids] = direction.t() * enc_norm * encoder_scale
    sae.b_enc[ids] = 0.0
    for param, index in ((sae.W_dec, (ids,)), (sae.W_enc, (slice(None), ids)), (sae.b_enc, (ids,))):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
    return int(ids.numel())
