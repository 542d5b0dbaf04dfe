"""Initialisation of a training SAE, input normalisation and its folding.

Training runs on normalised inputs ``x' = s · x`` with ``s`` chosen so that
``E‖x'‖ = sqrt(d_in)`` (Anthropic, April 2024 update; SAELens'
``normalize_activations="expected_average_only_in"``). :func:`fold_scale` turns the
trained weights into an SAE that reads and writes *raw* activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from saehooks.errors import InputError
from saehooks.sae import SAE


def normalisation_scale(x: Tensor) -> float:
    """``s = sqrt(d_in) / mean_token ‖x‖`` so that ``E‖s·x‖ = sqrt(d_in)``.

    Args:
        x: sample of raw activations ``[n, d_in]``.

    Returns:
        The scale ``s`` (dimensionless, > 0).

    Raises:
        InputError: the activations are all zero.
    """
    norm = x.double().norm(dim=-1).mean().item()
    if norm == 0.0:
        raise InputError(
            "all sampled activations are zero: cannot normalise them; check "
            "the hook name, or pass tokens that are not all BOS"
        )
    return math.sqrt(x.shape[-1]) / norm


def geometric_median(x: Tensor, n_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """Geometric median ``argmin_m Σ_i ‖x_i − m‖`` by Weiszfeld's algorithm.

    Source: Weiszfeld 1937; used as the ``b_dec`` initialisation by Bricken et al.
    2023 ("Towards Monosemanticity") and SAELens.

    Args:
        x: points ``[n, d]``.
        n_iter: maximum iterations.
        tol: stop when the estimate moves less than ``tol`` relative to its norm.

    Returns:
        ``[d]`` in ``x``'s dtype.
    """
    pts = x.double()
    median = pts.mean(0)
    for _ in range(n_iter):
        dist = (pts - median).norm(dim=-1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * pts).sum(0) / weights.sum()
        moved = (new - median).norm() / median.norm().clamp_min(1e-12)
        median = new
        if moved < tol:
            break
    return median.to(x.dtype)


@torch.no_grad()
def init_sae(
    sae: SAE,
    x: Tensor,
    *,
    b_dec_init: str,
    decoder_norm: float,
    encoder_as_decoder_transpose: bool,
    generator: torch.Generator,
) -> None:
    """Initialise a training SAE in place.

    Decoder rows are random directions of norm ``decoder_norm``; the encoder is the
    decoder transpose (Conerly et al. 2024 "Circuits Updates – April 2024"; Gao et
    al. 2024) or, if disabled, independent Kaiming-uniform; ``b_enc = 0``; ``b_dec``
    as asked.

    Args:
        sae: the SAE to initialise (training space, i.e. normalised units).
        x: normalised activations ``[n, d_in]`` for the ``b_dec`` initialisation.
        b_dec_init: ``"zeros"``, ``"mean"`` or ``"geometric_median"``.
        decoder_norm: norm of each decoder row.
        encoder_as_decoder_transpose: tie the initial encoder to the decoder.
        generator: random source; the random weights are drawn on its device (so a
            CPU generator gives the same SAE whatever device ``sae`` is on).

    Raises:
        InputError: an unknown ``b_dec_init``.
    """
    d_sae, d_in = sae.W_dec.shape
    w = torch.randn(d_sae, d_in, generator=generator, dtype=torch.float32, device=generator.device)
    w *= decoder_norm / w.norm(dim=-1, keepdim=True)
    sae.W_dec.copy_(w)
    if encoder_as_decoder_transpose:
        sae.W_enc.copy_(w.t())
    else:
        bound = 1.0 / math.sqrt(d_in)
        u = torch.rand(d_in, d_sae, generator=generator, device=generator.device)
        sae.W_enc.copy_(u * 2 * bound - bound)
    sae.b_enc.zero_()
    if b_dec_init == "zeros":
        sae.b_dec.zero_()
    elif b_dec_init == "mean":
        sae.b_dec.copy_(x.mean(0))
    elif b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(x))
    else:
        raise InputError(
            f"unknown b_dec_init {b_dec_init!r}; pass one of 'zeros', 'mean', 'geometric_median'"
        )


@torch.no_grad()
def fold_scale(train_sae: SAE, scale: float, out: SAE) -> SAE:
    """Write into ``out`` the SAE on raw activations equivalent to ``train_sae`` on ``s·x``.

    With ``x' = s·x``: ``pre = (x' − b) W_enc + b_enc = (x − b/s)(s W_enc) + b_enc``
    and ``x̂ = x̂'/s = a (W_dec/s) + b/s``. So ``W_enc ← s W_enc``, ``W_dec ← W_dec/s``,
    ``b_dec ← b_dec/s``; ``b_enc`` and ``threshold`` (pre-activation space) keep.

    Args:
        train_sae: the SAE trained on normalised inputs.
        scale: the normalisation factor ``s``.
        out: an SAE of the target config (architecture may differ, e.g. a
            BatchTopK trained as ``topk`` and saved as ``jumprelu``).

    Returns:
        ``out``, filled.
    """
    out.W_enc.copy_(train_sae.W_enc * scale)
    out.b_enc.copy_(train_sae.b_enc)
    out.W_dec.copy_(train_sae.W_dec / scale)
    out.b_dec.copy_(train_sae.b_dec / scale)
    return out


@torch.no_grad()
def fit_encoder_scale(
    sae: SAE, x: Tensor, activation: Callable[[Tensor], Tensor] = torch.relu
) -> float:
    """Scale ``W_enc`` so that the initial reconstruction has the right size.

    With ``b_enc = 0`` and a positively homogeneous activation (ReLU, top-k) scaling
    the encoder by γ scales every activation, hence ``x̂ − b_dec``, by γ, without
    changing which latents fire. γ is the least-squares fit of ``x − b_dec`` by
    ``x̂ − b_dec`` on the sample. It matters for ReLU SAEs with unit-norm decoder rows:
    with ``W_enc = W_decᵀ`` and ``d_sae ≫ d_in`` half the latents fire and ``x̂`` starts
    out ``≈ d_sae / (2 d_in)`` times too large. (A data-driven variant of the small
    decoder norm of Anthropic's April 2024 initialisation.)

    Args:
        sae: the freshly initialised SAE (modified in place).
        x: normalised activations ``[n, d_in]``.
        activation: the objective's activation ``[n, d_sae] -> [n, d_sae]``
            (``Objective.init_activation``: ReLU, or TopK with the run's ``k``).

    Returns:
        The factor γ applied (not applied unless positive).
    """
    x_c = x - sae.b_dec
    y = activation(x_c @ sae.W_enc + sae.b_enc) @ sae.W_dec
    denom = float((y * y).sum())
    gamma = float((x_c * y).sum()) / denom if denom > 0 else 1.0
    if gamma > 0:
        sae.W_enc.mul_(gamma)
    return gamma
