"""The ``topk`` objective: exactly ``k`` latents per token, plus AuxK on dead latents.

Source: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (TopK
activation, AuxK loss, sec. A.2). The forward pass runs on the sparse kernels of
:mod:`saehooks.training.sparse` (``sparse_kernels=True``) or on dense autograd
matmuls, the textbook implementation kept as the reference the sparse one must match
and as the throughput benchmark's baseline. :meth:`TopKObjective.code_step`, the
sparse decode + AuxK + loss, is shared with :mod:`.batchtopk`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saehooks import activation_fns
from saehooks.sae import SAE
from saehooks.training import losses, sparse
from saehooks.training.objectives.base import ForwardOutput, Objective, StepState


def default_aux_k(d_in: int) -> int:
    """Dead latents per token of AuxK when ``aux_k`` is 0: the power of two nearest
    ``d_in / 2`` (Gao et al. 2024)."""
    return 1 << max(0, round(math.log2(d_in / 2.0)))


class TopKObjective(Objective):
    """TopK SAE training (Gao et al. 2024); saved as a ``topk`` SAE with the same ``k``.

    Loss: ``mse(x, x̂) + aux_coefficient · Var(x) · L_aux`` (:func:`losses.topk_loss`),
    AuxK over the ``aux_k`` largest pre-activations of the dead latents while any is
    dead (and ``auxk``).
    """

    name = "topk"
    fields = frozenset({"k", "auxk", "aux_k", "aux_coefficient", "sparse_kernels"})
    inference_architecture = "topk"
    unit_norm_decoder = True

    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: ``sparse_forward`` or ``dense_forward`` as ``sparse_kernels`` says.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step; its ``dead [d_sae]`` mask selects AuxK's latents.
        """
        if self.cfg.sparse_kernels:
            return self.sparse_forward(sae, x, state.dead)
        return self.dense_forward(sae, x, state.dead)

    def sparse_forward(self, sae: SAE, x: Tensor, dead: Tensor) -> ForwardOutput:
        """The forward pass on the sparse kernels: only the encoder matmul is dense."""
        x_c = x - sae.b_dec
        pre = self.encoder_pre(sae, x_c)
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return self.code_step(sae, x, x_c, pre, sparse.code_from_topk(vals, idx), dead)

    def encoder_pre(self, sae: SAE, x_c: Tensor) -> Tensor:
        """Dense pre-activations ``[batch, d_sae]`` (no autograd) of the encoder inputs
        ``x_c [batch, d_in]`` (:func:`sparse.encoder_pre` in this run's matmul dtype),
        written into a buffer reused from step to step (spares a step ~16k page faults:
        64 MB at batch 4096, d_sae 4096); valid until the next step's call.
        """
        shape = (x_c.shape[0], sae.W_enc.shape[1])
        return sparse.encoder_pre(
            x_c.detach(),
            sae.W_enc,
            sae.b_enc,
            self.matmul_dtype,
            out=self._buffer("pre", shape, sae.W_enc),
        )

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A scratch tensor with ``like``'s dtype and device, reused from step to step and
        reallocated only when the shape, dtype or device change."""
        buffers: dict[str, Tensor] = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(name)
        if (
            buf is None
            or buf.shape != shape
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def dense_forward(self, sae: SAE, x: Tensor, dead: Tensor) -> ForwardOutput:
        """The forward pass with dense autograd matmuls (``[batch, d_sae] @ [d_sae,
        d_in]``), under bf16 autocast if the matmul dtype is bf16."""
        enabled = self.matmul_dtype == torch.bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            pre = ((x - sae.b_dec) @ sae.W_enc).to(x.dtype) + sae.b_enc
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
        residual = aux_recons = None
        aux = x.new_zeros(())
        n_dead = int(dead.sum())
        if self.cfg.auxk and n_dead:
            masked = pre.masked_fill(~dead, float("-inf"))
            a_vals, a_idx = masked.topk(self.aux_k(x.shape[1], n_dead), dim=-1, sorted=False)
            aux_recons = torch.zeros_like(pre).scatter(-1, a_idx, a_vals) @ sae.W_dec
            residual = (x - x_hat).detach()
            aux = losses.auxk_loss(residual, aux_recons)
        loss = losses.topk_loss(x, x_hat, residual, aux_recons, self.cfg.aux_coefficient)
        active = acts.detach() > 0
        return ForwardOutput(
            loss,
            x_hat.detach(),
            losses.mse(x, x_hat.detach()),
            aux.detach(),
            active.any(0),
            float(active.sum()) / x.shape[0],
        )

    def aux_k(self, d_in: int, n_dead: int) -> int:
        """AuxK's latents per token: ``aux_k`` (or :func:`default_aux_k`), at most the
        number of dead latents."""
        return min(self.cfg.aux_k or default_aux_k(d_in), n_dead)

    def code_step(
        self, sae: SAE, x: Tensor, x_c: Tensor, pre: Tensor, code: sparse.SparseCode, dead: Tensor
    ) -> ForwardOutput:
        """Sparse decode, AuxK and loss of a selected code.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            x_c: ``x − b_dec`` ``[batch, d_in]`` (differentiable).
            pre: dense pre-activations ``[batch, d_sae]`` (no gradient).
            code: the selected entries, ``code.vals`` their pre-activations.
            dead: ``[d_sae]`` bool mask of dead latents (for AuxK).
        """
        d_sae = sae.W_dec.shape[0]
        bags = sparse.latent_bags(code.cols, d_sae)
        acts = torch.relu(sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, code, bags))
        x_hat = sparse.sparse_decode(code._replace(vals=acts), sae.W_dec, bags) + sae.b_dec
        active = acts.detach() > 0
        fired = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
        fired[code.cols[active]] = True
        residual = aux_recons = None
        aux = x.new_zeros(())
        n_dead = int(dead.sum())
        if self.cfg.auxk and n_dead:
            dead_ids = dead.nonzero().squeeze(1)
            scratch = self._buffer("dead_pre", (pre.numel(),), pre)  # sized for n_dead = d_sae
            dead_pre = scratch[: len(pre) * n_dead].view(len(pre), n_dead)
            torch.index_select(pre, 1, dead_ids, out=dead_pre)
            a_vals, a_pos = dead_pre.topk(self.aux_k(x.shape[1], n_dead), dim=-1, sorted=False)
            a_code = sparse.code_from_topk(a_vals, dead_ids[a_pos])
            a_bags = sparse.latent_bags(a_code.cols, d_sae)
            # Pre-ReLU values: dead latents mostly sit below zero, where a ReLU would
            # pass no gradient and AuxK would never revive them.
            a_acts = sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, a_code, a_bags)
            aux_recons = sparse.sparse_decode(a_code._replace(vals=a_acts), sae.W_dec, a_bags)
            residual = (x - x_hat).detach()
            aux = losses.auxk_loss(residual, aux_recons)
        loss = losses.topk_loss(x, x_hat, residual, aux_recons, self.cfg.aux_coefficient)
        mse = losses.mse(x, x_hat.detach())
        min_active = float(acts.detach()[active].min()) if active.any() else 0.0
        return ForwardOutput(
            loss,
            x_hat.detach(),
            mse,
            aux.detach(),
            fired,
            float(active.sum()) / x.shape[0],
            min_active,
        )

    def init_activation(self, pre: Tensor) -> Tensor:
        """TopK with this run's ``k`` (:func:`saehooks.activation_fns.topk`)."""
        return activation_fns.topk(pre, self.cfg.k)

    def inference_config(self) -> dict[str, Any]:
        """A ``topk`` SAE with the trained ``k``."""
        return {"architecture": "topk", "k": self.cfg.k}
