"""Metrics of SAE reconstructions and of the models they are spliced into.

Pure functions of tensors. Conventions (DESIGN.md, SAELens where it defines them):

* losses are natural-log cross-entropies in nats per token;
* ``fvu`` divides the squared error by the variance *about the per-dimension mean*
  (not by ``E[x²]``), so a reconstruction that only predicts the mean has ``fvu = 1``;
* ``ce_loss_score`` is SAELens' "CE loss recovered":
  ``(ce_zero − ce_spliced) / (ce_zero − ce_clean)``;
* a latent *fires* on a token when its activation is ``> 0`` (every activation
  function of the package is non-negative, so this is also ``!= 0``).

The streaming versions -- :class:`TokenSums`, :class:`ReconstructionSums`,
:class:`FeatureCounts` -- add batch by batch in float64 on the CPU and equal the
one-shot values on all the data whatever the batch split; the evaluation and the
feature statistics use them. The one FVU, MSE and firing count of the package.
This module imports only torch (the core imports without TransformerLens).
"""

from __future__ import annotations

from typing import Any

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


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-token ``‖x − x̂‖²``: ``[..., d] -> [...]``, differentiable, in the inputs'
    dtype (the training loss averages it; every metric below sums it in float64)."""
    return (x_hat - x).pow(2).sum(-1)


def sum_squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """``Σ_tokens ‖x − x̂‖²`` (float64 scalar) for ``x, x_hat [..., d]``."""
    return squared_error(x.double(), x_hat.double()).sum()


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


# ---- streaming sums ---------------------------------------------------------------------
class TokenSums:
    """Float64 running sums of per-token values on the CPU, averaged at the end.

    ``add`` takes the values of one batch's counted tokens (any device); ``means``
    equals the mean over all tokens at once whatever the batch split.
    """

    def __init__(self, *names: str) -> None:
        self.sums = {name: torch.zeros((), dtype=torch.float64) for name in names}
        self.count = 0

    def add(self, **values: Tensor) -> None:
        """Add one batch: each value ``[n]`` (the same ``n`` for all names).

        Raises:
            ValueError: names other than the constructor's, or unequal lengths (a bug
                in the caller, not a user mistake).
        """
        lengths = {int(v.numel()) for v in values.values()}
        if len(lengths) != 1 or set(values) != set(self.sums):
            raise ValueError(f"expected equal-length values for {sorted(self.sums)}")
        for name, v in values.items():
            self.sums[name] += v.detach().sum(dtype=torch.float64).cpu()
        self.count += lengths.pop()

    def means(self) -> dict[str, float]:
        """``{name: Σ values / count}``; NaN when no token was added."""
        n = self.count
        return {k: (s / n).item() if n else float("nan") for k, s in self.sums.items()}


class FeatureCounts:
    """Per-latent running statistics over tokens, in float64 on the CPU.

    ``add`` takes one batch's counted tokens ``[n, d_sae]`` on any device; the sums equal
    those over all tokens at once whatever the batch split. The one firing count of
    the package: a latent fires on a token when its activation is ``> 0``.
    """

    def __init__(self, d_sae: int) -> None:
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` sum of activations."""
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` number of tokens with activation > 0."""
        self.peak = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` largest activation (0 for a latent that never fired)."""
        self.n_tokens = 0
        """Tokens added."""

    def add(self, acts: Tensor) -> None:
        """Add one batch of latents ``[n, d_sae]`` (any device and float dtype)."""
        acts = acts.detach()
        if acts.shape[0] == 0:
            return
        self.total += acts.sum(0, dtype=torch.float64).cpu()
        self.fired += (acts > 0).sum(0, dtype=torch.float64).cpu()
        self.peak = torch.maximum(self.peak, acts.max(0).values.double().cpu())
        self.n_tokens += acts.shape[0]

    def frequency(self) -> Tensor:
        """``[d_sae]`` float64: fraction of the added tokens on which each latent fired
        (0 with no tokens)."""
        return self.fired / max(self.n_tokens, 1)

    def mean(self) -> Tensor:
        """``[d_sae]`` float64: mean activation over the added tokens, zeros included
        (0 with no tokens)."""
        return self.total / max(self.n_tokens, 1)


class ReconstructionSums:
    """Streaming reconstruction statistics of one SAE, in float64 on the CPU.

    Keeps the token count, the mean and the centred co-moment ``Σ (x − x̄)(x − x̄)ᵀ``
    merged batch by batch with Chan et al.'s pairwise update (1979, "Updating formulae
    and a pairwise algorithm for computing sample variances"), so the variance of
    activations with a large mean loses no precision; plus ``Σ‖x − x̂‖²``, ``Σ l0``,
    ``Σ l1`` and the per-latent :class:`FeatureCounts`.
    """

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.comoment = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.sse = torch.zeros((), dtype=torch.float64)
        self.l0 = torch.zeros((), dtype=torch.float64)
        self.l1 = torch.zeros((), dtype=torch.float64)
        self.counts = FeatureCounts(d_sae)
        """Per-latent firing counts (the feature density)."""

    def add(self, x: Tensor, x_hat: Tensor, feature_acts: Tensor) -> None:
        """Add one batch of counted tokens.

        Args:
            x: activations ``[n, d_in]`` (any device and float dtype).
            x_hat: reconstructions ``[n, d_in]``.
            feature_acts: latents ``[n, d_sae]``.
        """
        n_b = x.shape[0]
        if n_b == 0:
            return
        xd = x.detach().double()
        mean_b = xd.mean(0)
        centred = xd - mean_b
        comoment_b = (centred.T @ centred).cpu()
        mean_b = mean_b.cpu()
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.comoment += comoment_b + torch.outer(delta, delta) * (self.n * n_b / total)
        self.n = total
        self.sse += sum_squared_error(xd, x_hat.detach()).cpu()
        feats = feature_acts.detach()
        self.l0 += l0(feats).sum(dtype=torch.float64).cpu()
        self.l1 += l1(feats).sum(dtype=torch.float64).cpu()
        self.counts.add(feats)

    def result(self) -> dict[str, Any]:
        """The :class:`~saehooks.evaluation.EvalReport` reconstruction fields: ``fvu``,
        ``explained_variance`` (fractions), ``mse`` (squared units/token), ``l0``,
        ``l1`` (per token), ``dead_fraction``, ``pca_rank``, ``pca_fvu``, ``n_tokens``
        and ``feature_density`` (``[d_sae]`` float32, :meth:`FeatureCounts.frequency`).
        """
        n = self.n
        fvu_value = (self.sse / self.comoment.trace()).item()
        l0_value = (self.l0 / n).item()
        rank = round(l0_value)
        return {
            "fvu": fvu_value,
            "explained_variance": 1.0 - fvu_value,
            "mse": (self.sse / n).item(),
            "l0": l0_value,
            "l1": (self.l1 / n).item(),
            "dead_fraction": (self.counts.fired == 0).double().mean().item(),
            "pca_rank": rank,
            # the co-moment is already centred: a zero mean makes it the covariance sum
            "pca_fvu": pca_fvu_from_moments(self.comoment, torch.zeros_like(self.mean), n, rank),
            "n_tokens": n,
            "feature_density": self.counts.frequency().float(),
        }
