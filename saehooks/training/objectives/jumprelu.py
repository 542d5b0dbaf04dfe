"""The ``jumprelu`` objective: learned per-latent thresholds and an L0 penalty.

Source: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity
with JumpReLU Sparse Autoencoders" (eqs. 9-12). With pre-activations
``pre = (x − b_dec) W_enc + b_enc`` and thresholds ``θ_j = exp(t_j) > 0``:

    ``z_j = pre_j · H(pre_j − θ_j)``,  ``x̂ = z W_dec + b_dec``,
    ``L = mean_token ‖x − x̂‖² + λ · mean_token Σ_j H(pre_j − θ_j)``.

``H`` has no useful derivative, so θ learns through straight-through estimators with
the rectangle kernel ``K`` of bandwidth ε (:func:`losses.jumprelu_ste`,
:func:`losses.step_ste`): ``∂z_j/∂θ_j = −(θ_j/ε) K((pre_j − θ_j)/ε)`` and
``∂H/∂θ_j = −(1/ε) K((pre_j − θ_j)/ε)``; the encoder gets ``∂z/∂pre = H`` only. λ
(``l0_coefficient``) rises linearly over ``sparsity_warmup_fraction`` of the steps and,
with ``target_l0 > 0``, is steered by the target-L0 controller (both from
:mod:`.relu`); dead latents are resampled as there, their thresholds reset. Decoder
rows are kept at unit norm (the L0 penalty does not depend on their norm; the
constraint fixes the scale of the pre-activations the thresholds live in).

The thresholds are the objective's own tensor ``log_threshold [d_sae]`` with their own
Adam (same betas and learning-rate schedule as the loop's, read from the loop's
optimiser each step, times ``jumprelu_threshold_lr_factor``), because the loop's SAE
is built before the objective could add a parameter to it. They are not in the
loop's gradient clipping. The saved SAE is a SAELens ``jumprelu`` SAE with
``threshold = θ``: folding the input normalisation (:func:`init.fold_scale`) leaves
pre-activations unchanged, so θ needs no rescaling.

With ``sparse_kernels``, and once the entries with ``pre > θ − ε/2`` (the active
ones and those whose threshold gets an estimator gradient) are at most 1/16 of the
code, the batch runs on the sparse kernels; the same loss and gradients as the dense
path (``tests/test_objectives_jumprelu_matryoshka.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saehooks import distributed
from saehooks.errors import TrainingDivergedError
from saehooks.sae import SAE
from saehooks.training import losses, sparse
from saehooks.training.objectives.base import ForwardOutput, LoopHandles, StepState
from saehooks.training.objectives.relu import ReLUObjective


class JumpReLUObjective(ReLUObjective):
    """JumpReLU SAE training (Rajamanoharan et al. 2024); saved as ``jumprelu``.

    Attributes:
        log_threshold: ``[d_sae]`` ``log θ`` (a leaf tensor with a gradient; None until
            the first forward pass or a restored checkpoint).
        threshold_optimizer: the Adam over ``log_threshold`` (None before the first
            step).
    """

    name = "jumprelu"
    fields = (ReLUObjective.fields - {"leak"}) | {
        "l0_coefficient",
        "jumprelu_bandwidth",
        "jumprelu_init_threshold",
        "jumprelu_threshold_lr_factor",
    }
    inference_architecture = "jumprelu"
    unit_norm_decoder = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_threshold: Tensor | None = None
        self.threshold_optimizer: torch.optim.Adam | None = None
        self._pending_adam: dict[str, Tensor] | None = None

    @property
    def base_coefficient(self) -> float:
        """λ (``l0_coefficient``)."""
        return self.cfg.l0_coefficient

    def thresholds(self, sae: SAE) -> Tensor:
        """θ ``[d_sae]`` (differentiable in :attr:`log_threshold`), created at
        ``jumprelu_init_threshold`` on ``sae``'s device the first time."""
        if self.log_threshold is None:
            d_sae = sae.W_dec.shape[0]
            init = math.log(self.cfg.jumprelu_init_threshold)
            self.log_threshold = torch.full(
                (d_sae,), init, dtype=torch.float32, device=sae.device, requires_grad=True
            )
        return self.log_threshold.exp()

    # ---- a training step -------------------------------------------------------------
    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: ``mse + λ(step) · L0`` on the sparse kernels or dense.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step (its coefficient).
        """
        coefficient = self.coefficient(state.step)
        theta = self.thresholds(sae)
        eps = self.cfg.jumprelu_bandwidth
        n, d_sae = x.shape[0], sae.W_dec.shape[0]
        if self.cfg.sparse_kernels:
            x_c = x - sae.b_dec
            pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, self.matmul_dtype)
            # the entries with a value or a threshold gradient: pre > θ − ε/2
            mask = pre > (theta.detach() - eps / 2)
            nnz = int(mask.sum())
            if nnz <= n * d_sae * self.sparse_max_density:
                rows, cols = mask.nonzero(as_tuple=True)  # row-major, so sorted by row
                code = sparse.code_from_rows(pre[mask], rows, cols, n)
                bags = sparse.latent_bags(cols, d_sae)
                sel = sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, code, bags)
                theta_sel = theta[cols]
                acts = losses.jumprelu_ste(sel, theta_sel, eps)
                x_hat = sparse.sparse_decode(code._replace(vals=acts), sae.W_dec, bags) + sae.b_dec
                l0 = losses.step_ste(sel.detach(), theta_sel, eps).sum() / n
                active = acts.detach() > 0
                fired = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
                fired[cols[active]] = True
                return self._output(x, x_hat, l0, coefficient, fired, float(active.sum()) / n)
        enabled = self.matmul_dtype == torch.bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        pre = pre.to(x.dtype)
        acts = losses.jumprelu_ste(pre, theta, eps)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
        l0 = losses.l0_penalty(pre.detach(), theta, eps)
        active = acts.detach() > 0
        return self._output(x, x_hat, l0, coefficient, active.any(0), float(active.sum()) / n)

    @staticmethod
    def _output(
        x: Tensor, x_hat: Tensor, l0: Tensor, coefficient: float, fired: Tensor, mean_l0: float
    ) -> ForwardOutput:
        mse = losses.mse(x, x_hat)
        return ForwardOutput(
            mse + coefficient * l0, x_hat.detach(), mse.detach(), l0.detach(), fired, mean_l0
        )

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """Step the thresholds' Adam at the loop's current learning rate, then the L0
        controller and resampling (:class:`ReLUObjective`)."""
        self.step_thresholds(loop.optimizer, getattr(state, "ranks", 1))
        super().after_step(sae, x, out, state, loop)

    def step_thresholds(self, loop_optimizer: torch.optim.Optimizer, ranks: int = 1) -> None:
        """One Adam step of ``log_threshold`` on its gradient (averaged over
        data-parallel ranks), at the loop's learning rate times
        ``jumprelu_threshold_lr_factor``, with its betas; clears the gradient.

        Raises:
            TrainingDivergedError: a threshold became non-finite (too large a factor).
        """
        t = self.log_threshold
        if t is None or t.grad is None:
            return
        group = loop_optimizer.param_groups[0]
        lr = group["lr"] * self.cfg.jumprelu_threshold_lr_factor
        if self.threshold_optimizer is None:
            self.threshold_optimizer = torch.optim.Adam([t], lr=lr, betas=group["betas"])
            if self._pending_adam is not None:
                self.threshold_optimizer.state[t] = self._pending_adam
                self._pending_adam = None
        if ranks > 1:
            distributed.all_reduce_(t.grad)
            t.grad /= ranks
        self.threshold_optimizer.param_groups[0]["lr"] = lr
        self.threshold_optimizer.step()
        t.grad = None
        if not bool(torch.isfinite(t).all()):
            raise TrainingDivergedError(
                "the JumpReLU thresholds became non-finite: their learning rate, lr × "
                f"jumprelu_threshold_lr_factor ({self.cfg.jumprelu_threshold_lr_factor:g}), "
                f"is {lr:g}; start again with a lower jumprelu_threshold_lr_factor"
            )

    def maybe_resample(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> int:
        """As :class:`ReLUObjective`; a resampled latent's threshold goes back to
        ``jumprelu_init_threshold`` and its Adam moments to 0."""
        dead = loop.tracker.dead.clone()
        n = super().maybe_resample(sae, x, out, state, loop)
        if n and self.log_threshold is not None:
            with torch.no_grad():
                self.log_threshold[dead] = math.log(self.cfg.jumprelu_init_threshold)
            if self.threshold_optimizer is not None:
                moments = self.threshold_optimizer.state.get(self.log_threshold, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in moments:
                        moments[key][dead] = 0.0
        return n

    # ---- the saved SAE ---------------------------------------------------------------
    @torch.no_grad()
    def finish_inference_sae(self, sae: SAE) -> None:
        """``threshold = θ`` (pre-activation units; unchanged by the folding)."""
        theta = self.thresholds(sae).detach()
        sae.threshold.copy_(theta.to(sae.threshold.device, sae.threshold.dtype))

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``log_gain``, ``log θ`` and its Adam state."""
        tensors, values = super().state_dict()
        if self.log_threshold is not None:
            tensors["log_threshold"] = self.log_threshold.detach()
        if self.threshold_optimizer is not None:
            moments = self.threshold_optimizer.state.get(self.log_threshold, {})
            for key, value in moments.items():
                tensors[f"threshold_adam.{key}"] = value
        return tensors, values

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore ``log_gain``, ``log θ`` and (at the next step) its Adam state."""
        super().load_state_dict(tensors, values)
        if "log_threshold" in tensors:
            self.log_threshold = tensors["log_threshold"].float().clone().requires_grad_(True)
        moments = {
            k[len("threshold_adam.") :]: v.clone()
            for k, v in tensors.items()
            if k.startswith("threshold_adam.")
        }
        self.threshold_optimizer, self._pending_adam = None, moments or None
