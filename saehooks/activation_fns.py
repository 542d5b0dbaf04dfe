"""Activation functions of sparse autoencoders: pure functions of tensors.

Every function maps pre-activations ``[..., d_sae]`` to latent activations of the
same shape (:func:`batch_topk_code` returns the kept entries as coordinates); none of
them has state. The one implementation of each: the SAE's forward pass and the trainer
both call these.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from saehooks.errors import InputError


def relu(pre: Tensor) -> Tensor:
    """ReLU latents (Bricken et al. 2023, "Towards Monosemanticity").

    Args:
        pre: pre-activations ``[..., d_sae]``.

    Returns:
        ``max(pre, 0)``, shape ``[..., d_sae]``.
    """
    return torch.relu(pre)


def topk(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest pre-activations of each row, ReLU them, zero the rest.

    Source: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (the
    SAELens and sparsify TopK SAEs apply the same rule). A row has exactly ``k``
    non-zeros whenever its ``k`` largest pre-activations are positive.

    Args:
        pre: pre-activations ``[..., d_sae]``.
        k: latents kept per row, ``1 <= k <= d_sae``.

    Returns:
        Sparse activations ``[..., d_sae]``.

    Raises:
        InputError: if ``k`` is outside ``[1, d_sae]``.
    """
    if not 1 <= k <= pre.shape[-1]:
        raise InputError(
            f"topk needs 1 <= k <= d_sae={pre.shape[-1]}, got k={k}; pass a k "
            f"between 1 and {pre.shape[-1]}"
        )
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))


def batch_topk_code(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The positive entries among the ``k · n_rows`` largest pre-activations of a batch.

    Source: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders": rows share one
    budget of ``k · n_rows`` latents, so the *mean* L0 is at most ``k``. Exact, and
    cheaper than a top-k over all ``n_rows · d_sae`` entries: each row first keeps its
    ``4k`` largest entries (its candidates) and the batch's top ``k · n_rows`` is taken
    among those, with cut value ``t``. An entry outside the candidates is at most its
    row's smallest candidate ``c_r``; so it can only be a winner in a row whose
    candidates were all kept (``c_r > 0`` and ``c_r >= t``), whatever the other rows
    hold. Such rows, if any, enter the final top-k in full. With ties at the cut, the
    kept set may differ from another exact implementation; the kept values (as a
    multiset), their number and their minimum do not.

    Args:
        pre: pre-activations ``[n_rows, d_sae]``.
        k: mean latents kept per row, ``k >= 1`` (``k >= d_sae`` keeps every positive
            entry).

    Returns:
        ``(vals, rows, cols)``, each ``[nnz]``, sorted by row (stable): the kept
        pre-activations (all > 0) and their coordinates; ``nnz <= k · n_rows``.

    Raises:
        InputError: ``k < 1`` or ``pre`` not 2-D.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise InputError(f"batch_topk needs k >= 1 (mean latents kept per row), got k={k!r}")
    if pre.ndim != 2:
        raise InputError(
            f"batch_topk_code needs pre-activations [n_rows, d_sae], got shape "
            f"{tuple(pre.shape)}; flatten the leading dimensions first"
        )
    n, d_sae = pre.shape
    k = int(k)
    m = min(k * n, pre.numel())
    if m == 0:  # no rows (or no latents): nothing to keep
        empty = torch.zeros(0, dtype=torch.long, device=pre.device)
        return pre.new_zeros(0), empty, empty.clone()
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
            u_rows = torch.cat(
                [part_rows.repeat_interleave(per_row), full_rows.repeat_interleave(d_sae)]
            )
            u_cols = torch.cat(
                [
                    cand_idx[part].flatten(),
                    torch.arange(d_sae, device=pre.device).repeat(len(full_rows)),
                ]
            )
            vals, pos = u_vals.topk(m, sorted=False)
            rows, cols = u_rows[pos], u_cols[pos]
    keep = vals > 0
    vals, rows, cols = vals[keep], rows[keep], cols[keep]
    order = torch.argsort(rows, stable=True)
    return vals[order], rows[order], cols[order]


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """Keep the positive entries among the ``k · n_rows`` largest pre-activations of the
    whole batch; zero the rest.

    Source: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders". Rows share one
    budget, so the *mean* L0 is at most ``k``; at inference a BatchTopK SAE runs as a
    JumpReLU with a learned global threshold (see :func:`jumprelu`). The selection is
    :func:`batch_topk_code`, the one the trainer uses.

    Args:
        pre: pre-activations ``[..., d_sae]`` (all leading dims form the batch).
        k: mean number of latents kept per row, ``k >= 1``.

    Returns:
        Sparse activations ``[..., d_sae]``.

    Raises:
        InputError: if ``k < 1``.
    """
    flat = pre.reshape(-1, pre.shape[-1])
    vals, rows, cols = batch_topk_code(flat, k)
    out = torch.zeros_like(flat)
    out[rows, cols] = vals
    return out.view_as(pre)


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """``pre * (pre > threshold)`` after a ReLU (Rajamanoharan et al. 2024,
    "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU SAEs").

    Args:
        pre: pre-activations ``[..., d_sae]``.
        threshold: per-latent thresholds ``[d_sae]`` (broadcast over rows).

    Returns:
        Activations ``[..., d_sae]``: 0 where ``pre <= threshold``.
    """
    return torch.relu(pre) * (pre > threshold)


def gated(pre_gate: Tensor, pre_mag: Tensor) -> Tensor:
    """Gated latents (Rajamanoharan et al. 2024, "Improving Dictionary Learning with
    Gated Sparse Autoencoders"): ``1[pre_gate > 0] * relu(pre_mag)``.

    A latent whose gate is closed is 0 even when its magnitude path is positive.

    Args:
        pre_gate: gate pre-activations ``[..., d_sae]``.
        pre_mag: magnitude pre-activations ``[..., d_sae]``.

    Returns:
        Activations ``[..., d_sae]``.
    """
    return (pre_gate > 0).to(pre_mag.dtype) * torch.relu(pre_mag)
