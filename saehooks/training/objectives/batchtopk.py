"""The ``batchtopk`` objective: ``k · batch`` latents per batch, saved as a JumpReLU.

Source: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders": the batch shares one
budget of ``k · batch`` latents (the positive entries among its largest
pre-activations, :func:`saehooks.activation_fns.batch_topk_code`, the one
implementation of the selection), so the mean L0 is at most ``k``; AuxK as in
:mod:`.topk`. At inference the SAE runs as a JumpReLU whose global threshold θ is an
exponential moving average of the smallest activation kept in each batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saehooks import activation_fns, distributed
from saehooks.sae import SAE
from saehooks.training import sparse
from saehooks.training.objectives.base import ForwardOutput, LoopHandles, StepState
from saehooks.training.objectives.topk import TopKObjective


class BatchTopKObjective(TopKObjective):
    """BatchTopK SAE training; saved as a ``jumprelu`` SAE with threshold θ on every
    latent.

    Attributes:
        threshold: θ, the running threshold estimate (pre-activation units); 0 before
            the first step.
    """

    name = "batchtopk"
    # always on the sparse kernels: sparse_kernels is not read
    fields = TopKObjective.fields - {"sparse_kernels"}
    inference_architecture = "jumprelu"
    threshold_rate = 0.01
    """Weight of each batch's smallest kept activation in θ's moving average."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threshold = 0.0

    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: the batch's top ``k · batch`` positive pre-activations, sparse
        decode, AuxK on ``state.dead``. ``min_active`` is the smallest kept activation.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step; its ``dead [d_sae]`` mask selects AuxK's latents.
        """
        x_c = x - sae.b_dec
        pre = self.encoder_pre(sae, x_c)
        vals, rows, cols = activation_fns.batch_topk_code(pre, self.cfg.k)
        code = sparse.code_from_rows(vals, rows, cols, pre.shape[0])
        return self.code_step(sae, x, x_c, pre, code, state.dead)

    def sync(self, out: ForwardOutput, ranks: int) -> ForwardOutput:
        """As :meth:`Objective.sync`, and θ's sample ``min_active`` is the mean over
        ranks of each rank's smallest kept activation.

        Under data parallelism each rank selects the top ``k · batch / ranks`` entries
        of its own slice (a per-rank BatchTopK), not the top ``k · batch`` of the whole
        batch: a global selection would need every rank's candidate values each step
        (an all-gather inside the forward pass). So a data-parallel BatchTopK run is
        not step-for-step the single-process run at the same global batch; its ranks
        still agree exactly (the gradients are averaged and θ is reduced here).
        """
        out = super().sync(out, ranks)
        if ranks <= 1:
            return out
        sample = torch.tensor([out.min_active], dtype=torch.float64, device=out.fired.device)
        distributed.all_reduce_(sample)
        return out._replace(min_active=float(sample) / ranks)

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """θ ← the first batch's smallest kept activation, then ``(1 − r) θ + r · m``
        with ``r = threshold_rate``."""
        r = self.threshold_rate
        self.threshold = (
            out.min_active if state.step == 0 else (1.0 - r) * self.threshold + r * out.min_active
        )

    def inference_config(self) -> dict[str, Any]:
        """A ``jumprelu`` SAE (its threshold is set by :meth:`finish_inference_sae`)."""
        return {"architecture": "jumprelu"}

    @torch.no_grad()
    def finish_inference_sae(self, sae: SAE) -> None:
        """Every latent's threshold is θ."""
        sae.threshold.fill_(self.threshold)

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """θ."""
        return {}, {"threshold": self.threshold}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore θ."""
        self.threshold = float(values["threshold"])
