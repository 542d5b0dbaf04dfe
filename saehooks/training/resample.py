"""Dead latents: tracking, and resampling for the ``l1`` / ``kl`` objectives.

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
    """

    def __init__(self, d_sae: int, window: int) -> None:
        self.window = window
        self.since_fired = torch.zeros(d_sae, dtype=torch.long)

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """Record a batch of ``n_tokens`` in which the latents ``fired [d_sae]`` fired."""
        self.since_fired += n_tokens
        self.since_fired[fired] = 0

    @property
    def dead(self) -> Tensor:
        """``[d_sae]`` bool mask of dead latents."""
        return self.since_fired >= self.window

    @property
    def dead_fraction(self) -> float:
        return float(self.dead.float().mean())

    def revive(self, latents: Tensor) -> None:
        """Give resampled latents a fresh window."""
        self.since_fired[latents] = 0


@torch.no_grad()
def resample_dead_latents(sae: SAE, dead: Tensor, x: Tensor, x_hat: Tensor,
                          optimizer: torch.optim.Optimizer, generator: torch.Generator,
                          unit_norm_decoder: bool, encoder_scale: float = 0.2) -> int:
    """Re-initialise dead latents on inputs the SAE reconstructs badly.

    Source: Bricken et al. 2023, "Towards Monosemanticity", appendix "Neuron
    resampling": sample inputs with probability proportional to the square of their
    reconstruction loss; set the dead latent's decoder row to the (bias-centred) input
    direction, its encoder column to that direction scaled to ``encoder_scale`` times
    the mean encoder norm of the live latents, its bias to 0, and reset the Adam
    moments of everything that changed.

    Args:
        sae: training-space SAE, modified in place.
        dead: ``[d_sae]`` bool mask.
        x: normalised inputs ``[n, d_in]``.
        x_hat: their reconstructions ``[n, d_in]``.
        optimizer: Adam over the SAE's parameters (its moments are reset in place).
        generator: random source of the sampling.
        unit_norm_decoder: decoder rows are unit norm; otherwise new rows get the mean
            norm of the live rows.
        encoder_scale: encoder norm of a resampled latent relative to the live mean.

    Returns:
        The number of latents resampled.
    """
    ids = dead.nonzero().squeeze(1)
    if ids.numel() == 0:
        return 0
    err = (x - x_hat).pow(2).sum(-1)
    if float(err.sum()) == 0.0:
        return 0
    picks = torch.multinomial(err.double(), ids.numel(), replacement=ids.numel() > x.shape[0],
                              generator=generator)
    direction = x[picks] - sae.b_dec
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    dec_norm = 1.0 if unit_norm_decoder else float(sae.W_dec[alive].norm(dim=-1).mean())
    enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if alive.any() else 1.0
    sae.W_dec[ids] = direction * dec_norm
    sae.W_enc[:, ids] = direction.t() * enc_norm * encoder_scale
    sae.b_enc[ids] = 0.0
    for param, index in ((sae.W_dec, (ids,)), (sae.W_enc, (slice(None), ids)),
                         (sae.b_enc, (ids,))):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
    return int(ids.numel())
