"""The ``kl`` objective: ``mse + β Σ_j KL(ρ ‖ ρ̂_j)`` on soft firing rates.

Source: the average-activation (KL) sparsity penalty of Ng 2011 ("Sparse
autoencoder", CS294A notes) on ReLU latents with unit-norm decoder rows; each latent's
firing rate ``ρ̂_j`` is the batch mean of ``1 − exp(−a_j / kl_scale)``
(:func:`losses.firing_probability`). The penalty's *value* is taken on a running
estimate over ``kl_window_tokens`` tokens (:func:`losses.running_firing_rate`), so it
does not depend on the batch size; its *gradient* is the batch penalty's
(:func:`losses.kl_penalty_running`). Warm-up, target-L0 controller and resampling:
:mod:`.relu`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saehooks import distributed
from saehooks.sae import SAE
from saehooks.training import losses
from saehooks.training.objectives.base import ForwardOutput, LoopHandles, StepState
from saehooks.training.objectives.relu import ReLUObjective


class KLObjective(ReLUObjective):
    """ReLU SAE with Ng's KL sparsity penalty; saved as ``relu``.

    Attributes:
        running: ``[d_sae]`` running firing estimate over the batches so far (None
            before the first step).
    """

    name = "kl"
    fields = ReLUObjective.fields | {"kl_beta", "kl_rho", "kl_scale", "kl_window_tokens"}
    unit_norm_decoder = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running: Tensor | None = None

    @property
    def base_coefficient(self) -> float:
        """β (``kl_beta``)."""
        return self.cfg.kl_beta

    def next_running(self, rate: Tensor, n: int, tokens_seen: int) -> Tensor:
        """The running estimate including a batch of ``n`` tokens whose firing rate is
        ``rate [d_sae]``, after ``tokens_seen`` tokens (no gradient)."""
        start = self.running if self.running is not None else torch.zeros_like(rate)
        return losses.running_firing_rate(rate, start, n, tokens_seen, self.cfg.kl_window_tokens)

    def penalty(
        self, sae: SAE, acts: Tensor, cols: Tensor | None, n: int, state: StepState
    ) -> tuple[Tensor, Tensor]:
        """``Σ_j KL(ρ ‖ R_j)`` on the running estimate ``R`` including this batch,
        with the gradient of the batch's ``Σ_j KL(ρ ‖ ρ̂_j)``; and ``ρ̂ [d_sae]``."""
        if cols is None:
            rate = losses.firing_probability(acts, self.cfg.kl_scale)
        else:  # the same mean over the non-zeros only (a silent latent adds 0)
            fired = losses.soft_firing(acts, self.cfg.kl_scale)
            rate = acts.new_zeros(sae.W_dec.shape[0]).index_add(0, cols, fired) / n
        running = self.next_running(rate.detach(), n * state.ranks, state.tokens)
        return losses.kl_penalty_running(rate, running, self.cfg.kl_rho), rate.detach()

    def sync(self, out: ForwardOutput, ranks: int) -> ForwardOutput:
        """As :meth:`Objective.sync`, and the batch firing rate ``ρ̂ [d_sae]`` is the
        mean over ranks (the whole batch's rate: every rank holds as many tokens), so
        the running estimate stays identical on every rank."""
        out = super().sync(out, ranks)
        if ranks <= 1 or out.firing_rate is None:
            return out
        rate = distributed.all_reduce_(out.firing_rate.detach().clone()) / ranks
        return out._replace(firing_rate=rate)

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """Take this batch (``x.shape[0] · state.ranks`` tokens) into the running
        estimate, then as :class:`ReLUObjective`."""
        if out.firing_rate is not None:
            n = x.shape[0] * state.ranks
            self.running = self.next_running(out.firing_rate, n, state.tokens)
        super().after_step(sae, x, out, state, loop)

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``log_gain`` and the running estimate."""
        tensors, values = super().state_dict()
        if self.running is not None:
            tensors["running"] = self.running
        return tensors, values

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore ``log_gain`` and the running estimate (the loop has moved it to the
        training device)."""
        super().load_state_dict(tensors, values)
        running = tensors.get("running")
        self.running = None if running is None else running.clone()
