"""The ``l1`` objective: ``mse + λ Σ_j a_j ‖W_dec[j]‖``, decoder rows free in norm.

Source: Anthropic, "Circuits Updates – April 2024" ("Update on how we train SAEs"):
the L1 penalty weighted by each latent's decoder norm (:func:`losses.l1_penalty`),
so the decoder need not be kept at unit norm. Warm-up, target-L0 controller and
resampling: :mod:`.relu`.
"""

from __future__ import annotations

from torch import Tensor

from saehooks.sae import SAE
from saehooks.training import losses
from saehooks.training.objectives.base import StepState
from saehooks.training.objectives.relu import ReLUObjective


class L1Objective(ReLUObjective):
    """ReLU SAE with the decoder-norm-weighted L1 penalty; saved as ``relu``."""

    name = "l1"
    fields = ReLUObjective.fields | {"l1_coefficient"}
    unit_norm_decoder = False

    @property
    def base_coefficient(self) -> float:
        """λ (``l1_coefficient``)."""
        return self.cfg.l1_coefficient

    def penalty(
        self, sae: SAE, acts: Tensor, cols: Tensor | None, n: int, state: StepState
    ) -> tuple[Tensor, None]:
        """``mean_token Σ_j a_j ‖W_dec[j]‖`` (no firing rate to report)."""
        if cols is None:
            return losses.l1_penalty(acts, sae.W_dec), None
        # the same sum over the non-zeros only
        return (acts * sae.W_dec.norm(dim=-1)[cols]).sum() / n, None
