"""Activation functions of sparse autoencoders: pure functions of tensors.

Every function maps pre-activations ``[..., d_sae]`` to latent activations of the
same shape; none of them has state.
"""

from __future__ import annotations

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
        raise InputError(f"topk needs 1 <= k <= d_sae={pre.shape[-1]}, got k={k}; pass a k "
                         f"between 1 and {pre.shape[-1]}")
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k * n_rows`` largest pre-activations over the whole batch.

    Source: Bussmann et al. 2024, "BatchTopK Sparse Autoencoders". Rows share one
    budget, so the *mean* L0 is ``k``; at inference a BatchTopK SAE runs as a
    JumpReLU with a learned global threshold (see :func:`jumprelu`).

    Args:
        pre: pre-activations ``[..., d_sae]`` (all leading dims form the batch).
        k: mean number of latents kept per row.

    Returns:
        Sparse activations ``[..., d_sae]``.

    Raises:
        InputError: if ``k < 1``.
    """
    if k < 1:
        raise InputError(f"batch_topk needs k >= 1 (mean latents kept per row), got k={k}")
    flat = torch.relu(pre).flatten()
    n_keep = min(k * (pre.numel() // pre.shape[-1]), flat.numel())
    values, indices = flat.topk(n_keep, sorted=False)
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)


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
