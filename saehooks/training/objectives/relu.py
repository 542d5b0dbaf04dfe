"""What the ``l1`` and ``kl`` objectives share: a ReLU SAE with a sparsity penalty.

Loss ``mse(x, x̂) + c · penalty`` with the coefficient ``c`` warmed up linearly over
``sparsity_warmup_fraction`` of the steps (Anthropic, April 2024 update) and, with
``target_l0 > 0``, scaled by a controller that steers the batch L0 to the target; dead
latents are resampled (Bricken et al. 2023). A subclass gives the base coefficient
and the penalty (:mod:`.l1`, :mod:`.kl`).

With ``sparse_kernels`` and a code at most 1/16 dense, the active entries go through
the sparse kernels (the same loss as the dense path, computed on the non-zeros);
denser codes (early in training) run the dense autograd path, under bf16 autocast if
the matmul dtype is bf16.

Leaky ReLU (``leak > 0``), a dead-latent remedy: the forward pass stays a plain ReLU
(so the training loss is the saved ReLU SAE's loss) and the backward pass gives
negative pre-activations the slope ``leak`` (:func:`losses.relu_leaky_grad`), so a
latent that fires on no token still moves towards firing where that would lower the
loss (reconstruction gain against penalty). That gradient reaches every entry of the
``[batch, d_sae]`` code, so with ``leak > 0`` the batch always runs the dense path
(the sparse kernels carry gradients for the non-zeros only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saehooks.sae import SAE
from saehooks.training import losses, resample, sparse
from saehooks.training.objectives.base import (
    ForwardOutput,
    LoopHandles,
    Objective,
    StepState,
)


class ReLUObjective(Objective):
    """Base of the penalised ReLU objectives; saved as a ``relu`` SAE.

    Attributes:
        log_gain: log of the target-L0 controller's factor on the coefficient (0
            without a target).
    """

    # fmt: off
    fields = frozenset({"sparse_kernels", "sparsity_warmup_fraction", "total_tokens",
                        "batch_size", "target_l0", "target_l0_rate", "target_l0_max_factor",
                        "resample_dead", "resample_every_tokens", "resample_stop_fraction",
                        "leak"})
    # fmt: on
    inference_architecture = "relu"
    sparse_max_density = 1 / 16
    """The sparse kernels run when at most this fraction of the code is non-zero."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_gain = 0.0

    # ---- what a subclass gives -------------------------------------------------------
    @property
    def base_coefficient(self) -> float:
        """The configured coefficient (λ or β)."""
        raise NotImplementedError

    def penalty(
        self, sae: SAE, acts: Tensor, cols: Tensor | None, n: int, state: StepState
    ) -> tuple[Tensor, Tensor | None]:
        """The penalty per token of a batch's code and the firing rate to report.

        Args:
            sae: training-space SAE.
            acts: ``[nnz]`` active values at latents ``cols [nnz]`` (sparse path), or
                the dense code ``[n, d_sae]`` with ``cols`` None.
            n: tokens in the batch.
            state: the step.

        Returns:
            ``(penalty, firing_rate)``: a differentiable scalar, and ``[d_sae]`` or None
            (:attr:`ForwardOutput.firing_rate`).
        """
        raise NotImplementedError

    # ---- schedule and controller -----------------------------------------------------
    def warmup_steps(self) -> int:
        """Steps over which the coefficient rises linearly from 0 (0: no warm-up)."""
        return round(self.cfg.sparsity_warmup_fraction * self.cfg.total_steps)

    def coefficient(self, step: int) -> float:
        """``base · min(1, (step + 1) / warm-up steps) · exp(log_gain)``."""
        warm = self.warmup_steps()
        base = self.base_coefficient
        scheduled = base * min(1.0, (step + 1) / warm) if warm else base
        return scheduled * math.exp(self.log_gain)

    def update_controller(self, l0: float, step: int) -> None:
        """After the warm-up, move ``log_gain`` by ``target_l0_rate · clip(log(l0 /
        target_l0), −1, 1)``, kept within ``±log(target_l0_max_factor)`` (a
        Lagrangian-style controller on the batch L0)."""
        target = self.cfg.target_l0
        if target <= 0 or step < self.warmup_steps():
            return
        error = math.log(max(l0, 1e-3) / target)
        bound = math.log(self.cfg.target_l0_max_factor)
        gain = self.log_gain + self.cfg.target_l0_rate * max(-1.0, min(1.0, error))
        self.log_gain = max(-bound, min(bound, gain))

    # ---- a training step -------------------------------------------------------------
    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: ReLU code, reconstruction, ``mse + coefficient(step) · penalty``.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step (its coefficient, and the tokens before it for ``kl``).
        """
        coefficient = self.coefficient(state.step)
        n, d_sae = x.shape[0], sae.W_dec.shape[0]
        leak = self.cfg.leak
        if self.cfg.sparse_kernels and leak == 0.0:
            x_c = x - sae.b_dec
            pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, self.matmul_dtype)
            mask = pre > 0
            nnz = int(mask.sum())
            if nnz <= n * d_sae * self.sparse_max_density:
                rows, cols = mask.nonzero(as_tuple=True)  # row-major, so sorted by row
                code = sparse.code_from_rows(pre[mask], rows, cols, n)
                bags = sparse.latent_bags(cols, d_sae)
                acts = torch.relu(sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, code, bags))
                x_hat = sparse.sparse_decode(code._replace(vals=acts), sae.W_dec, bags) + sae.b_dec
                mse = losses.mse(x, x_hat)
                aux, rate = self.penalty(sae, acts, cols, n, state)
                return ForwardOutput(
                    mse + coefficient * aux,
                    x_hat.detach(),
                    mse.detach(),
                    aux.detach(),
                    bags.counts > 0,
                    nnz / n,
                    0.0,
                    rate,
                )
        enabled = self.matmul_dtype == torch.bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = losses.relu_leaky_grad(pre.to(x.dtype), leak)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
        mse = losses.mse(x, x_hat)
        aux, rate = self.penalty(sae, acts, None, n, state)
        return self.dense_output(mse, aux, coefficient, x_hat, acts, rate)

    @staticmethod
    def dense_output(
        mse: Tensor, aux: Tensor, coefficient: float, x_hat: Tensor, acts: Tensor, rate
    ) -> ForwardOutput:
        """The step's output from a dense code ``acts [n, d_sae]``: loss ``mse +
        coefficient · aux``, the latents that fired, and the batch L0."""
        active = acts.detach() > 0
        return ForwardOutput(
            mse + coefficient * aux,
            x_hat.detach(),
            mse.detach(),
            aux.detach(),
            active.any(0),
            float(active.sum()) / acts.shape[0],
            0.0,
            rate,
        )

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """The L0 controller, then resampling when a ``resample_every_tokens`` boundary
        was crossed by this batch, up to ``resample_stop_fraction`` of the run."""
        self.update_controller(out.l0, state.step)
        self.maybe_resample(sae, x, out, state, loop)

    def maybe_resample(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> int:
        """Resample the dead latents (:func:`resample.resample_dead_latents`) if this
        batch crossed a resampling boundary; revive them in the tracker.

        Returns:
            The number of latents resampled.
        """
        every = self.cfg.resample_every_tokens
        after = state.tokens + x.shape[0] * state.ranks  # tokens over all ranks
        if not (
            self.cfg.resample_dead
            and every
            and after // every > state.tokens // every
            and after <= self.cfg.resample_stop_fraction * self.cfg.total_tokens
        ):
            return 0
        dead = loop.tracker.dead
        n = resample.resample_dead_latents(
            sae, dead, x, out.x_hat, loop.optimizer, loop.generator, self.unit_norm_decoder
        )
        if n:
            loop.tracker.revive(dead.nonzero().squeeze(1))
        return n

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The controller's ``log_gain``."""
        return {}, {"log_gain": self.log_gain}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore ``log_gain``."""
        self.log_gain = float(values["log_gain"])
