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
    fired = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
    fired[cols[active]] = True
    residual = aux_recons = None
    aux = x.new_zeros(())
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
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
        pre = ((x - sae.b_dec) @ sae.W_enc).to(x.dtype) + sae.b_enc
    vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
        x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
    residual = aux_recons = None
    aux = x.new_zeros(())
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
    pre-activations of the whole batch, plus AuxK. Arguments as :func:`topk_forward`.

    The selection is :func:`batchtopk_code`: exact, equal to
    ``saehooks.activations.batch_topk`` on the same pre-activations.
    """
    x_c = x - sae.b_dec
    pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, _matmul_dtype(cfg))
    vals, rows, cols = batchtopk_code(pre, cfg.k)
    return _code_step(sae, x, cfg, dead, vals, rows, cols, sparse.row_offsets(rows, pre.shape[0]),
                      x_c, pre)


def batchtopk_code(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The positive entries among the ``k · batch`` largest pre-activations of a batch.

    Source: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders". Exact, and cheaper
    than a top-k over all ``batch · d_sae`` entries: each row first keeps its ``4k``
    largest entries (its candidates) and the batch's top ``k · batch`` is taken among
    those, with cut value ``t``. An entry outside the candidates is at most its row's
    smallest candidate ``c_r``; so it can only be a winner in a row whose candidates
    were all kept (``c_r > 0`` and ``c_r >= t``), whatever the other rows hold.
    Such rows, if any, enter the final top-k in full. With ties at the cut, the kept
    set may differ from another exact implementation; the kept values (as a
    multiset), their number and their minimum do not.

    Args:
        pre: pre-activations ``[batch, d_sae]``.
        k: mean latents kept per row, ``1 <= k <= d_sae``.

    Returns:
        ``(vals, rows, cols)``, each ``[nnz]``, sorted by row (stable): the kept
        pre-activations (all > 0) and their coordinates; ``nnz <= k · batch``.
    """
    n, d_sae = pre.shape
    m = min(k * n, pre.numel())
    per_row = min(d_sae, 4 * k)
    cand_vals, cand_idx = pre.topk(per_row, dim=-1, sorted=False)
    vals, pos = cand_vals.flatten().topk(m, sorted=False)
    rows, cols = pos // per_row, cand_idx.flatten()[pos]
    if per_row < d_sae:
        row_min = cand_vals.min(-1).values
        full = (row_min > 0) & (row_min >= vals.min())
        if bool(full.any()):  # these rows may hold winners beyond their candidates
            part = ~full
            full_rows, part_rows = full.nonzero().squeeze(1), part.nonzero().squeeze(1)
            u_vals = torch.cat([cand_vals[part].flatten(), pre[full_rows].flatten()])
            u_rows = torch.cat([part_rows.repeat_interleave(per_row),
                                full_rows.repeat_interleave(d_sae)])
            u_cols = torch.cat([cand_idx[part].flatten(),
                                torch.arange(d_sae, device=pre.device).repeat(len(full_rows))])
            vals, pos = u_vals.topk(m, sorted=False)
            rows, cols = u_rows[pos], u_cols[pos]
    keep = vals > 0
    vals, rows, cols = vals[keep], rows[keep], cols[keep]
    order = torch.argsort(rows, stable=True)
    return vals[order], rows[order], cols[order]


def relu_forward(sae: SAE, x: Tensor, cfg: TrainConfig, coefficient: float,
                 kl_running: Tensor | None = None, tokens_seen: int = 0) -> ForwardOutput:
    """ReLU SAE step with the ``l1`` or ``kl`` penalty.

    With ``cfg.sparse_kernels`` and a code at most 1/16 dense, the active entries go
    through the sparse kernels (same loss as the dense path, computed on the
    non-zeros); denser codes (early in training) run the dense autograd path under
    bf16 autocast if asked.

    ``kl``: with ``kl_running`` the penalty's value is taken on the running firing
    estimate (:func:`losses.kl_penalty_running`, :func:`losses.running_firing_rate`),
    so it does not depend on the batch size; its gradient is the batch penalty's either
    way. Without it, the batch-only penalty of :func:`losses.kl_loss`.

    Args:
        sae: training-space SAE.
        x: normalised activations ``[batch, d_in]``.
        cfg: the training config (``architecture``, ``kl_rho``, ``kl_scale``).
        coefficient: λ (``l1``, after warm-up) or β (``kl``) at this step.
        kl_running: ``[d_sae]`` running firing estimate of the ``kl`` objective before
            this batch; **updated in place** to include it. Ignored by ``l1``.
        tokens_seen: tokens of the batches before this one (the estimate's warm-up).
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
                aux = _kl_penalty(rho_hat, cfg, kl_running, n, tokens_seen)
            return ForwardOutput(mse + coefficient * aux, x_hat.detach(), mse.detach(),
                                 aux.detach(), bags.counts > 0, nnz / n, 0.0)
    enabled = cfg.matmul_dtype == "bfloat16"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    acts = torch.relu(pre.to(x.dtype))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
        x_hat = (acts @ sae.W_dec).to(x.dtype) + sae.b_dec
    mse = losses.mse(x, x_hat)
    if cfg.architecture == "l1":
        aux = losses.l1_penalty(acts, sae.W_dec)
    else:
        aux = _kl_penalty(losses.firing_probability(acts, cfg.kl_scale), cfg, kl_running, n,
                          tokens_seen)
    active = acts.detach() > 0
    return ForwardOutput(mse + coefficient * aux, x_hat.detach(), mse.detach(), aux.detach(),
                         active.any(0), float(active.sum()) / n, 0.0)


def _kl_penalty(rho_batch: Tensor, cfg: TrainConfig, kl_running: Tensor | None, n: int,
                tokens_seen: int) -> Tensor:
    """``Σ_j KL(ρ ‖ ρ̂_j)`` of the batch's ``rho_batch [d_sae]`` (``n`` tokens), valued on
    the running estimate if given (which is updated in place)."""
    if kl_running is None:
        return losses.kl_sparsity_penalty(rho_batch, cfg.kl_rho)
    with torch.no_grad():
        kl_running.copy_(losses.running_firing_rate(rho_batch, kl_running, n, tokens_seen))
    return losses.kl_penalty_running(rho_batch, kl_running, cfg.kl_rho)
