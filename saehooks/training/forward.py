"""One training forward pass per objective, on normalised activations.

Each function takes the training-space SAE and a batch ``x [batch, d_in]`` and
returns a :class:`ForwardOutput`; the loss terms come from :mod:`.losses`.
TopK and BatchTopK use the sparse kernels of :mod:`.sparse`; ``l1`` and ``kl`` run
dense (their codes are not sparse early in training) under bf16 autocast if asked.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saehooks.sae import SAE
from saehooks.training import losses, sparse
from saehooks.training.config import TrainConfig


class ForwardOutput(NamedTuple):
    """What a training step needs from the forward pass."""

    loss: Tensor
    """Scalar loss to minimise (per token)."""
    x_hat: Tensor
    """``[batch, d_in]`` reconstruction (normalised units)."""
    mse: Tensor
    """Scalar ``mean_token ‖x − x̂‖²`` (normalised units)."""
    aux: Tensor
    """Scalar auxiliary term before its coefficient: AuxK loss (the fraction of the
    residual the dead latents leave), L1 penalty, or KL sum."""
    fired: Tensor
    """``[d_sae]`` bool: latents active on at least one token of the batch."""
    l0: float
    """Mean active latents per token."""
    min_active: float
    """Smallest positive activation kept (BatchTopK threshold estimate); else 0."""


def _code_step(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor, vals: Tensor,
               rows: Tensor, cols: Tensor, offsets: Tensor, x_c: Tensor,
               pre: Tensor) -> ForwardOutput:
    """Shared tail of TopK / BatchTopK: sparse decode, AuxK, loss."""
    d_sae = sae.W_dec.shape[0]
    bags = sparse.latent_bags(cols, d_sae)
    acts = torch.relu(sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, vals, rows, cols,
                                          offsets, bags))
    x_hat = sparse.sparse_decode(acts, rows, cols, offsets, sae.W_dec, bags) + sae.b_dec
    active = acts.detach() > 0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    fired[cols[active]] = True
    residual = aux_recons = None
    aux = torch.zeros(())
    n_dead = int(dead.sum())
    if cfg.auxk and n_dead:
        k_aux = min(cfg.aux_k or _default_aux_k(x.shape[1]), n_dead)
        dead_ids = dead.nonzero().squeeze(1)
        a_vals, a_pos = pre[:, dead_ids].topk(k_aux, dim=-1, sorted=False)
        a_vals, a_rows, a_cols, a_offs = sparse.code_from_topk(a_vals, dead_ids[a_pos])
        a_bags = sparse.latent_bags(a_cols, d_sae)
        # Pre-ReLU values: dead latents mostly sit below zero, where a ReLU would
        # pass no gradient and AuxK would never revive them.
        a_acts = sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, a_vals, a_rows, a_cols,
                                     a_offs, a_bags)
        aux_recons = sparse.sparse_decode(a_acts, a_rows, a_cols, a_offs, sae.W_dec, a_bags)
        residual = (x - x_hat).detach()
        aux = losses.auxk_loss(residual, aux_recons)
    loss = losses.topk_loss(x, x_hat, residual, aux_recons, cfg.aux_coefficient)
    mse = losses.mse(x, x_hat.detach())
    min_active = float(acts.detach()[active].min()) if active.any() else 0.0
    return ForwardOutput(loss, x_hat.detach(), mse, aux.detach(), fired,
                         float(active.sum()) / x.shape[0], min_active)


def _default_aux_k(d_in: int) -> int:
    """Power of two nearest ``d_in / 2`` (Gao et al. 2024)."""
    return 1 << max(0, round(torch.log2(torch.tensor(d_in / 2.0)).item()))


def _matmul_dtype(cfg: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.matmul_dtype == "bfloat16" else torch.float32


def topk_forward(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor) -> ForwardOutput:
    """TopK SAE step (Gao et al. 2024): exactly ``k`` latents per token, plus AuxK.

    Args:
        sae: training-space SAE.
        x: normalised activations ``[batch, d_in]``.
        cfg: the training config (``k``, ``auxk``, ``aux_k``, ``aux_coefficient``).
        dead: ``[d_sae]`` bool mask of dead latents (for AuxK).
    """
    x_c = x - sae.b_dec
    pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, _matmul_dtype(cfg))
    vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
    vals, rows, cols, offsets = sparse.code_from_topk(vals, idx)
    return _code_step(sae, x, cfg, dead, vals, rows, cols, offsets, x_c, pre)


def topk_dense_forward(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor) -> ForwardOutput:
    """TopK step with dense autograd matmuls (``[batch, d_sae] @ [d_sae, d_in]``), under
    bf16 autocast if asked: the textbook implementation, kept as the reference that
    :func:`topk_forward` must match and as the baseline of the throughput benchmark.
    Arguments as :func:`topk_forward`."""
    enabled = cfg.matmul_dtype == "bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        pre = ((x - sae.b_dec) @ sae.W_enc).to(x.dtype) + sae.b_enc
    vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
    residual = aux_recons = None
    aux = torch.zeros(())
    n_dead = int(dead.sum())
    if cfg.auxk and n_dead:
        k_aux = min(cfg.aux_k or _default_aux_k(x.shape[1]), n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        a_vals, a_idx = masked.topk(k_aux, dim=-1, sorted=False)
        a_acts = torch.zeros_like(pre).scatter(-1, a_idx, a_vals)
        aux_recons = a_acts @ sae.W_dec
        residual = (x - x_hat).detach()
        aux = losses.auxk_loss(residual, aux_recons)
    loss = losses.topk_loss(x, x_hat, residual, aux_recons, cfg.aux_coefficient)
    active = acts.detach() > 0
    return ForwardOutput(loss, x_hat.detach(), losses.mse(x, x_hat.detach()), aux.detach(),
                         active.any(0), float(active.sum()) / x.shape[0], 0.0)


def batchtopk_forward(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor) -> ForwardOutput:
    """BatchTopK step (Bussmann et al. 2024): the ``k · batch`` largest positive
    pre-activations of the whole batch, plus AuxK. Arguments as :func:`topk_forward`."""
    x_c = x - sae.b_dec
    pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, _matmul_dtype(cfg))
    n, d_sae = pre.shape
    # candidates: each row's top (4k) -- exact unless one row holds more than 4k winners
    per_row = min(d_sae, 4 * cfg.k)
    cand_vals, cand_idx = pre.topk(per_row, dim=-1, sorted=False)
    flat_vals, flat_pos = cand_vals.flatten().topk(min(cfg.k * n, cand_vals.numel()),
                                                   sorted=False)
    if bool((flat_vals > 0).all()) and per_row < d_sae:
        counts = torch.bincount(flat_pos // per_row, minlength=n)
        if int(counts.max()) == per_row:  # a row may hold more winners: do it exactly
            return _batchtopk_exact(sae, x, cfg, dead, x_c, pre)
    keep = flat_vals > 0
    flat_vals, flat_pos = flat_vals[keep], flat_pos[keep]
    rows = flat_pos // per_row
    cols = cand_idx.flatten()[flat_pos]
    order = torch.argsort(rows, stable=True)
    rows, cols, vals = rows[order], cols[order], flat_vals[order]
    return _code_step(sae, x, cfg, dead, vals, rows, cols, sparse.row_offsets(rows, n), x_c, pre)


def _batchtopk_exact(sae, x, cfg, dead, x_c, pre) -> ForwardOutput:
    n, d_sae = pre.shape
    vals, pos = pre.flatten().topk(cfg.k * n, sorted=False)
    keep = vals > 0
    vals, pos = vals[keep], pos[keep]
    rows, cols = pos // d_sae, pos % d_sae
    order = torch.argsort(rows, stable=True)
    rows, cols, vals = rows[order], cols[order], vals[order]
    return _code_step(sae, x, cfg, dead, vals, rows, cols, sparse.row_offsets(rows, n), x_c, pre)


def relu_forward(sae: SAE, x: Tensor, cfg: TrainConfig, coefficient: float) -> ForwardOutput:
    """ReLU SAE step with the ``l1`` or ``kl`` penalty.

    With ``cfg.sparse_kernels`` and a code at most 1/16 dense, the active entries go
    through the sparse kernels (same loss as :func:`losses.l1_loss` /
    :func:`losses.kl_loss`, computed on the non-zeros); denser codes (early in
    training) run the dense autograd path under bf16 autocast if asked.

    Args:
        sae: training-space SAE.
        x: normalised activations ``[batch, d_in]``.
        cfg: the training config (``architecture``, ``kl_rho``, ``kl_scale``).
        coefficient: λ (``l1``, after warm-up) or β (``kl``) at this step.
    """
    n, d_sae = x.shape[0], sae.W_dec.shape[0]
    if cfg.sparse_kernels:
        x_c = x - sae.b_dec
        pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, _matmul_dtype(cfg))
        mask = pre > 0
        nnz = int(mask.sum())
        if nnz <= n * d_sae // 16:
            rows, cols = mask.nonzero(as_tuple=True)  # row-major, so sorted by row
            offsets, bags = sparse.row_offsets(rows, n), sparse.latent_bags(cols, d_sae)
            acts = torch.relu(sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, pre[mask], rows,
                                                  cols, offsets, bags))
            x_hat = sparse.sparse_decode(acts, rows, cols, offsets, sae.W_dec, bags) + sae.b_dec
            mse = losses.mse(x, x_hat)
            if cfg.architecture == "l1":  # = losses.l1_penalty on the dense code
                aux = (acts * sae.W_dec.norm(dim=-1)[cols]).sum() / n
            else:  # = losses.firing_probability on the dense code
                fired = losses.soft_firing(acts, cfg.kl_scale)
                rho_hat = x.new_zeros(d_sae).index_add(0, cols, fired) / n
                aux = losses.kl_sparsity_penalty(rho_hat, cfg.kl_rho)
            return ForwardOutput(mse + coefficient * aux, x_hat.detach(), mse.detach(),
                                 aux.detach(), bags.counts > 0, nnz / n, 0.0)
    enabled = cfg.matmul_dtype == "bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    acts = torch.relu(pre.to(x.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
    mse = losses.mse(x, x_hat)
    if cfg.architecture == "l1":
        aux = losses.l1_penalty(acts, sae.W_dec)
    else:
        aux = losses.kl_sparsity_penalty(losses.firing_probability(acts, cfg.kl_scale),
                                         cfg.kl_rho)
    active = acts.detach() > 0
    return ForwardOutput(mse + coefficient * aux, x_hat.detach(), mse.detach(), aux.detach(),
                         active.any(0), float(active.sum()) / n, 0.0)
