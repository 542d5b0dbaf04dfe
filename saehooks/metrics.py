"""Metrics of SAE reconstructions and of the models they are spliced into.

Pure functions of tensors. Conventions (DESIGN.md, SAELens where it defines them):

* losses are natural-log cross-entropies in nats per token;
* ``fvu`` divides the squared error by the variance *about the per-dimension mean*
  (not by ``E[x²]``), so a reconstruction that only predicts the mean has ``fvu = 1``;
* ``ce_loss_score`` is SAELens' "CE loss recovered":
  ``(ce_zero − ce_spliced) / (ce_zero − ce_clean)``.

Streaming versions (sums that add over batches) live in :mod:`saehooks.evaluation`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def next_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-token next-token cross-entropy.

    Args:
        logits: ``[batch, pos, d_vocab]``.
        tokens: ``[batch, pos]``.

    Returns:
        ``[batch, pos - 1]`` in nats; entry ``p`` is the loss of predicting
        ``tokens[:, p + 1]`` from position ``p``.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)


def kl_div(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-position ``KL(p ‖ q) = Σ_v p·(log p − log q)`` of two next-token distributions.

    Args:
        logits_p: reference logits (the clean model) ``[..., d_vocab]``.
        logits_q: logits of the changed model ``[..., d_vocab]``.

    Logits of ``-inf`` (a masked vocabulary) are allowed: tokens with ``p = 0`` add
    nothing (``0 · log 0 = 0``), so the result stays finite whenever ``q > 0`` wherever
    ``p > 0``; it is ``+inf`` where ``q`` rules out a token that ``p`` allows.

    Returns:
        ``[...]`` in nats, ``>= 0``; exactly 0 for identical inputs.
    """
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)


def ce_loss_score(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """Fraction of the loss gap to an ablation that the SAE recovers.

    ``(ce_ablated − ce_spliced) / (ce_ablated − ce_clean)``: 1 when splicing costs
    nothing, 0 when it is as bad as the ablation. With zero ablation this is
    SAELens' ``ce_loss_score``; with mean ablation, a stricter baseline.

    Returns:
        The score (a fraction; can leave [0, 1]); NaN when the ablation does not
        change the loss.
    """
    gap = ce_ablated - ce_clean
    return float("nan") if gap == 0 else (ce_ablated - ce_spliced) / gap


def sum_squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """``Σ_tokens ‖x − x̂‖²`` (float64 scalar) for ``x, x_hat [..., d]``."""
    return (x.double() - x_hat.double()).pow(2).sum()


def total_variance(x: Tensor) -> Tensor:
    """``Σ_tokens ‖x − mean(x)‖²`` about the per-dimension mean (float64 scalar)."""
    flat = x.double().reshape(-1, x.shape[-1])
    return (flat - flat.mean(0)).pow(2).sum()


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²``.

    Args:
        x: activations ``[..., d]``; every leading index is a token.
        x_hat: reconstructions, same shape.

    Returns:
        A fraction (0 for a perfect reconstruction, 1 for predicting the mean).
    """
    return (sum_squared_error(x, x_hat) / total_variance(x)).item()


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """``1 − fvu(x, x_hat)``."""
    return 1.0 - fvu(x, x_hat)


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of ``‖x − x̂‖²`` (summed over the last dimension)."""
    n_tokens = x.numel() // x.shape[-1]
    return (sum_squared_error(x, x_hat) / n_tokens).item()


def l0(acts: Tensor) -> Tensor:
    """Number of non-zero latents per token: ``[..., d_sae] -> [...]``."""
    return (acts != 0).sum(-1)


def l1(acts: Tensor) -> Tensor:
    """Sum of absolute latent activations per token: ``[..., d_sae] -> [...]``."""
    return acts.abs().sum(-1)


def pca_fvu_from_moments(second_moment: Tensor, mean: Tensor, n: int, rank: int) -> float:
    """FVU of the best rank-``rank`` affine reconstruction (PCA), from data moments.

    The best rank-r reconstruction about the mean leaves the variance in the
    ``d − r`` smallest principal directions unexplained (Eckart–Young), so
    ``fvu_pca = Σ_{i>r} λ_i / Σ_i λ_i`` for the eigenvalues of the covariance.

    Args:
        second_moment: ``Σ x xᵀ`` over tokens, ``[d, d]`` (float64 preferred).
        mean: per-dimension mean ``[d]``.
        n: number of tokens.
        rank: number of principal components kept (clipped to ``[0, d]``).

    Returns:
        The fraction of variance the rank-r PCA reconstruction leaves unexplained.
    """
    cov = second_moment.double() - n * torch.outer(mean.double(), mean.double())
    eig = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)
    rank = max(0, min(int(rank), eig.numel()))
    return (eig[rank:].sum() / eig.sum()).item()


def pca_fvu(x: Tensor, rank: int) -> float:
    """FVU of the best rank-``rank`` PCA reconstruction of ``x [..., d]``."""
    flat = x.double().reshape(-1, x.shape[-1])
    return pca_fvu_from_moments(flat.T @ flat, flat.mean(0), flat.shape[0], rank)
