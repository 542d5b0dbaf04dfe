"""Training objectives of sparse autoencoders: pure functions of tensors.

Conventions shared by every function here:

* the squared error is **summed over** ``d_in`` and **averaged over tokens**
  (``mse = mean_token ‖x − x̂‖²``): :func:`mse` is the differentiable form (in the
  tensors' dtype) of ``saehooks.metrics.mse``, whose float64 value training logs, as
  it logs ``saehooks.metrics.fvu`` (the one FVU of the package);
* penalties are summed over latents and averaged over tokens, so that every term is
  "per token" and does not depend on the batch size;
* nothing here has state: the trainer owns coefficients, schedules and dead masks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saehooks import metrics
from saehooks.errors import InputError


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Reconstruction error ``mean_token ‖x − x̂‖²``.

    Args:
        x: inputs ``[batch, d_in]``.
        x_hat: reconstructions ``[batch, d_in]``.

    Returns:
        Scalar: squared L2 error summed over ``d_in``, averaged over the batch
        (:func:`saehooks.metrics.squared_error`, the one implementation, averaged).
    """
    return metrics.squared_error(x, x_hat).mean()


def l1_penalty(acts: Tensor, W_dec: Tensor) -> Tensor:
    """Decoder-norm-weighted L1 penalty ``mean_token Σ_j a_j · ‖W_dec[j]‖``.

    Source: Anthropic, "Circuits Updates – April 2024" (training SAEs, "Update on how
    we train SAEs"): the L1 term is weighted by each latent's decoder norm, so the
    decoder need not be constrained to unit norm (shrinking ``a_j`` while growing
    ``‖W_dec[j]‖`` no longer lowers the penalty).

    Args:
        acts: latent activations ``[batch, d_sae]`` (non-negative).
        W_dec: decoder ``[d_sae, d_in]``.

    Returns:
        Scalar penalty per token (same units as the activations).
    """
    return (acts * W_dec.norm(dim=-1)).sum(-1).mean()


def l1_loss(x: Tensor, x_hat: Tensor, acts: Tensor, W_dec: Tensor, l1_coefficient: float) -> Tensor:
    """``mse(x, x̂) + λ · l1_penalty(acts, W_dec)`` (Anthropic, April 2024 update).

    Args:
        x: inputs ``[batch, d_in]``.
        x_hat: reconstructions ``[batch, d_in]``.
        acts: latent activations ``[batch, d_sae]``.
        W_dec: decoder ``[d_sae, d_in]``.
        l1_coefficient: λ at this step (the trainer warms it up linearly).

    Returns:
        Scalar loss per token.
    """
    return mse(x, x_hat) + l1_coefficient * l1_penalty(acts, W_dec)


def firing_probability(acts: Tensor, scale: float = 1.0) -> Tensor:
    """Per-latent firing probability ``ρ̂_j = mean_token (1 − exp(−a_j / scale))``.

    The KL sparsity penalty of the classic sparse autoencoder (Ng, "Sparse
    autoencoder", CS294A lecture notes, 2011) compares a target ρ with each unit's
    *mean activation over the batch*, a number in (0, 1) there because the units are
    sigmoids. ReLU latents are unbounded, so each activation is first squashed into a
    soft firing indicator ``q = 1 − exp(−a / scale)`` in [0, 1): 0 when the latent is
    silent, ≈ 1 once it fires clearly above ``scale``. The batch mean of ``q`` is then
    the latent's (soft) firing frequency, and tends to the exact fraction of tokens on
    which it fires as ``scale → 0``. (Squashing the mean activation instead would
    measure magnitude, not frequency: a latent could fire on every token with tiny
    activations and satisfy ρ, so L0 would not come down.) ``scale`` is in the units
    of the (normalised) activations.

    Args:
        acts: latent activations ``[batch, d_sae]`` (non-negative).
        scale: activation at which a firing counts as ``1 − 1/e ≈ 0.63``.

    Returns:
        ``ρ̂`` of shape ``[d_sae]``, values in [0, 1).
    """
    return soft_firing(acts, scale).mean(0)


def soft_firing(acts: Tensor, scale: float = 1.0) -> Tensor:
    """Soft firing indicator ``1 − exp(−a / scale)`` of activations (any shape), in
    [0, 1) (see :func:`firing_probability`)."""
    return -torch.expm1(-acts / scale)


def kl_sparsity_penalty(rho_hat: Tensor, rho: float, eps: float = 1e-6) -> Tensor:
    """``Σ_j KL(ρ ‖ ρ̂_j)`` between Bernoulli distributions (Ng 2011).

    ``KL(ρ ‖ ρ̂) = ρ log(ρ/ρ̂) + (1−ρ) log((1−ρ)/(1−ρ̂))``; ``ρ̂`` is clamped to
    ``[eps, 1 − eps]`` so that silent latents give a finite value.

    Args:
        rho_hat: per-latent firing probabilities ``[d_sae]`` in [0, 1]
            (see :func:`firing_probability`).
        rho: target firing probability, ``0 < rho < 1``.
        eps: clamp for ``ρ̂``.

    Returns:
        Scalar penalty in nats (summed over latents).

    Raises:
        InputError: ``rho`` outside (0, 1).
    """
    if not 0.0 < rho < 1.0:
        raise InputError(
            f"the KL target rho must lie in (0, 1), got {rho}; pass a target "
            "firing probability such as 0.006"
        )
    q = rho_hat.clamp(eps, 1.0 - eps)
    kl = rho * (math.log(rho) - q.log()) + (1.0 - rho) * (math.log1p(-rho) - torch.log1p(-q))
    return kl.sum()


def running_firing_rate(
    rho_batch: Tensor, rho_running: Tensor, n_tokens: int, tokens_seen: int, window: int
) -> Tensor:
    """Running estimate of each latent's firing probability, updated by one batch.

    ``R_t = (1 − a) · R_{t−1} + a · ρ̂_batch`` with ``a = n_tokens / min(window,
    tokens_seen + n_tokens)`` (at most 1): the token-weighted mean of every batch so
    far until ``window`` tokens have been seen, then an exponential moving average
    whose memory is ``window`` tokens whatever the batch size.

    Why: Ng's KL sparsity penalty (CS294A notes, 2011) compares ρ with each unit's
    average activation *over the training set*. Computed on one batch instead, ρ̂ is
    noisy, and because the KL is convex the noise alone costs ``≈ d_sae / (2 · batch)``
    nats (Jensen): with every latent firing at exactly ρ = 0.006, 4096 latents, about
    44 nats at batch 256, 0.54 at 4096 and 0.13 at 16384. An exponentially decaying
    average of the batch estimates, the estimator Hinton recommends for sparsity
    targets ("A Practical Guide to Training Restricted Boltzmann Machines", 2010,
    sec. 11: ``q_new = λ q_old + (1 − λ) q_current``), has the same noise at every
    batch size, ``≈ d_sae / (2 · (2 · window − batch))`` nats. :func:`kl_penalty_running`
    reports the penalty on it.

    Args:
        rho_batch: ``[d_sae]`` this batch's :func:`firing_probability` (detached).
        rho_running: ``[d_sae]`` the estimate before this batch (anything when
            ``tokens_seen`` is 0).
        n_tokens: tokens in this batch.
        tokens_seen: tokens in the batches before this one.
        window: memory of the average, in tokens (``TrainConfig.kl_window_tokens``,
            32768 by default: the estimate's noise then costs about
            ``d_sae / (4 · window)`` nats of KL whatever the batch size, 0.03 nats at
            4096 latents, and it follows the firing rates with a lag of about one
            window, 8 steps of 4096 tokens).

    Returns:
        ``[d_sae]`` the updated estimate ``R_t`` (no gradient).
    """
    a = min(1.0, n_tokens / min(window, tokens_seen + n_tokens))
    return torch.lerp(rho_running.detach().to(rho_batch.dtype), rho_batch.detach(), a)


def kl_penalty_running(
    rho_batch: Tensor, rho_running: Tensor, rho: float, eps: float = 1e-6
) -> Tensor:
    """``Σ_j KL(ρ ‖ R_j)`` on the running estimate, with the batch penalty's gradient.

    The value is :func:`kl_sparsity_penalty` of the running estimate ``R`` (from
    :func:`running_firing_rate`, which already includes this batch): an estimate of
    Ng's training-set penalty whose scale does not depend on the batch size (~0 when
    every latent fires at ρ, at any batch size). The gradient is that of the batch
    penalty ``Σ_j KL(ρ ‖ ρ̂_j)``, unchanged: per firing token its ``−ρ / ρ̂_j`` pull is
    ``−ρ · q'/Σ_tokens q``, a self-normalised estimate whose size does not grow as the
    batch shrinks, so the same β gives the same L0 at every batch size (measured: L0
    8.4 / 8.0 / 7.8 at batch 256 / 1024 / 4096 on Gaussian data, 64 latents). Taking
    the gradient at the lagging ``R`` instead (Hinton 2010, sec. 11) made the sparsity
    pressure a delayed feedback loop: on the same data L0 oscillated and ended at
    4.6 / 9.0 / 7.4.

    Args:
        rho_batch: ``[d_sae]`` this batch's :func:`firing_probability` (differentiable).
        rho_running: ``[d_sae]`` the running estimate including this batch.
        rho: target firing probability, ``0 < rho < 1``.
        eps: clamp for the estimates (see :func:`kl_sparsity_penalty`).

    Returns:
        Scalar penalty in nats (summed over latents): value ``Σ KL(ρ ‖ R)``, gradient
        ``∇ Σ KL(ρ ‖ ρ̂_batch)``.

    Raises:
        InputError: ``rho`` outside (0, 1).
    """
    batch = kl_sparsity_penalty(rho_batch, rho, eps)
    value = kl_sparsity_penalty(rho_running.detach().to(rho_batch.dtype), rho, eps)
    return value + (batch - batch.detach())


def kl_loss(
    x: Tensor, x_hat: Tensor, acts: Tensor, rho: float, beta: float, scale: float = 1.0
) -> Tensor:
    """``mse(x, x̂) + β · Σ_j KL(ρ ‖ ρ̂_j)`` with ``ρ̂`` from :func:`firing_probability`.

    Source: the average-activation (KL) sparsity penalty of Ng 2011 ("Sparse
    autoencoder", CS294A notes), applied to ReLU latents with unit-norm decoder rows
    (without the constraint the penalty could be evaded by shrinking activations).

    Args:
        x: inputs ``[batch, d_in]``.
        x_hat: reconstructions ``[batch, d_in]``.
        acts: latent activations ``[batch, d_sae]``.
        rho: target firing probability per latent.
        beta: weight β of the penalty.
        scale: squashing scale of :func:`firing_probability`.

    Returns:
        Scalar loss per token.
    """
    return mse(x, x_hat) + beta * kl_sparsity_penalty(firing_probability(acts, scale), rho)


def auxk_loss(residual: Tensor, aux_recons: Tensor) -> Tensor:
    """AuxK loss: the fraction of the main model's error that the dead latents leave.

    Source: Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. A.2:
    the ``k_aux`` largest pre-activations *among dead latents* decode (through
    ``W_dec``, **without** ``b_dec``) an estimate ``ê`` of the residual ``e = x − x̂``.
    Like their losses it is normalised by the target's energy (here over the whole
    batch), ``L_aux = Σ‖e − ê‖² / Σ‖e‖²``, so its pull does not fade as the main error
    shrinks. ``b_dec`` is already inside ``x̂``, so a perfect dead-latent
    reconstruction of ``e`` gives exactly 0 whatever ``b_dec`` is. The residual must be
    detached by the caller: AuxK trains the dead latents, not the live ones. The caller
    also passes the dead latents' *pre-ReLU* values as their activations: dead latents
    sit below zero, where a ReLU would pass no gradient.

    Args:
        residual: ``e = x − x̂`` ``[batch, d_in]`` (detached).
        aux_recons: ``ê = Σ_{j∈aux} a_j W_dec[j]`` ``[batch, d_in]``.

    Returns:
        Scalar fraction (0 when ``ê = e``; 1 when ``ê = 0``); 0 if ``e`` is all zeros.
    """
    energy = residual.pow(2).sum().clamp_min(torch.finfo(residual.dtype).tiny)
    return (aux_recons - residual).pow(2).sum() / energy


def topk_loss(
    x: Tensor,
    x_hat: Tensor,
    residual: Tensor | None = None,
    aux_recons: Tensor | None = None,
    aux_coefficient: float = 1 / 32,
) -> Tensor:
    """``mse(x, x̂) + α · Var(x) · auxk_loss(e, ê)`` for TopK / BatchTopK SAEs.

    Gao et al. 2024 minimise ``NMSE(x, x̂) + α · L_aux`` with the main term normalised
    by the data's variance; this is the same objective times the (detached) batch
    variance ``Var(x) = mse(x, mean(x))``, so the main term stays in the units of
    :func:`mse` used by every objective here.

    Args:
        x: inputs ``[batch, d_in]``.
        x_hat: reconstructions ``[batch, d_in]``.
        residual: detached ``x − x̂`` ``[batch, d_in]``, or None when no latent is dead.
        aux_recons: dead-latent reconstruction ``[batch, d_in]`` (see :func:`auxk_loss`).
        aux_coefficient: α (Gao et al. use 1/32).

    Returns:
        Scalar loss per token.
    """
    loss = mse(x, x_hat)
    if residual is not None and aux_recons is not None:
        variance = mse(x, x.mean(0, keepdim=True)).detach()
        loss = loss + aux_coefficient * variance * auxk_loss(residual, aux_recons)
    return loss


# ---- JumpReLU: straight-through estimators (Rajamanoharan et al. 2024) ----------------


def rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel ``K(u) = 1 if −1/2 < u < 1/2 else 0`` (in ``u``'s dtype).

    Source: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction
    Fidelity with JumpReLU Sparse Autoencoders", eq. 11 (the kernel of the
    straight-through estimators of the thresholds' gradients). The edges ``u = ±1/2``
    count as outside.
    """
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient over the dimensions ``like`` was broadcast along."""
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


class _JumpReLU(torch.autograd.Function):
    """``z = pre · H(pre − θ)``; ``∂z/∂pre = H(pre − θ)``, ``∂z/∂θ = −(θ/ε) K((pre − θ)/ε)``."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = g_theta = None
        if ctx.needs_input_grad[0]:
            g_pre = (grad * (pre > theta).to(grad.dtype)).to(pre.dtype)
        if ctx.needs_input_grad[1]:
            g = -(theta / eps) * rectangle((pre - theta) / eps) * grad
            g_theta = _reduce_to(g, theta).to(theta.dtype)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """``H(pre − θ)``; no gradient to ``pre``, ``∂H/∂θ = −(1/ε) K((pre − θ)/ε)``."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = None
        if ctx.needs_input_grad[1]:
            g = -(1.0 / eps) * rectangle((pre - theta) / eps) * grad
            g_theta = _reduce_to(g, theta).to(theta.dtype)
        return None, g_theta, None


def jumprelu_ste(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU ``z = pre · H(pre − θ)`` whose threshold gets a straight-through gradient.

    Source: Rajamanoharan et al. 2024 ("Jumping Ahead"), eqs. 10-11: the pseudo-
    derivative ``∂z/∂θ = −(θ/ε) · K((pre − θ)/ε)`` (:func:`rectangle` kernel of bandwidth
    ε); ``∂z/∂pre = H(pre − θ)`` (no estimator into the encoder, as in the paper). With
    ``θ > 0`` the forward is the inference activation ``relu(pre) · (pre > θ)``.

    Args:
        pre: pre-activations ``[..., d_sae]`` (or ``[nnz]`` entries).
        theta: thresholds broadcastable to ``pre`` (``[d_sae]``, or ``[nnz]`` gathered).
        bandwidth: ε, in pre-activation units.

    Returns:
        ``z``, shaped like ``pre``.
    """
    return _JumpReLU.apply(pre, theta, bandwidth)


def step_ste(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """Heaviside ``H(pre − θ)`` (1 where ``pre > θ``) with the straight-through gradient
    ``∂H/∂θ = −(1/ε) · K((pre − θ)/ε)`` and none to ``pre`` (Rajamanoharan et al. 2024,
    eq. 12: the L0 penalty's estimator). Shapes as :func:`jumprelu_ste`."""
    return _Step.apply(pre, theta, bandwidth)


def l0_penalty(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``mean_token Σ_j H(pre_j − θ_j)``: the batch L0, differentiable in θ through
    :func:`step_ste`.

    Args:
        pre: pre-activations ``[batch, d_sae]``.
        theta: thresholds ``[d_sae]``.
        bandwidth: ε.

    Returns:
        Scalar (active latents per token).
    """
    return step_ste(pre, theta, bandwidth).sum(-1).mean()


def jumprelu_loss(
    x: Tensor,
    pre: Tensor,
    theta: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    l0_coefficient: float,
    bandwidth: float,
) -> Tensor:
    """``mse(x, x̂) + λ · mean_token Σ_j H(pre_j − θ_j)`` with ``x̂ = z W_dec + b_dec``,
    ``z = pre · H(pre − θ)`` (Rajamanoharan et al. 2024, eq. 9), dense.

    Args:
        x: inputs ``[batch, d_in]``.
        pre: pre-activations ``[batch, d_sae]``.
        theta: thresholds ``[d_sae]`` (> 0).
        W_dec: decoder ``[d_sae, d_in]``; b_dec: ``[d_in]``.
        l0_coefficient: λ at this step.
        bandwidth: ε of the estimators.

    Returns:
        Scalar loss per token.
    """
    z = jumprelu_ste(pre, theta, bandwidth)
    return mse(x, z @ W_dec + b_dec) + l0_coefficient * l0_penalty(pre, theta, bandwidth)


# ---- Leaky ReLU (training-time gradient only) -------------------------------------------


class _LeakyGradReLU(torch.autograd.Function):
    """Forward ``relu(pre)``; backward slope 1 where ``pre > 0`` and ``leak`` elsewhere."""

    @staticmethod
    def forward(ctx, pre: Tensor, leak: float) -> Tensor:
        ctx.save_for_backward(pre)
        ctx.leak = leak
        return torch.relu(pre)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (pre,) = ctx.saved_tensors
        slope = torch.where(pre > 0, 1.0, ctx.leak).to(grad.dtype)
        return grad * slope, None


def relu_leaky_grad(pre: Tensor, leak: float) -> Tensor:
    """``relu(pre)`` whose gradient leaks through negative pre-activations.

    The forward values are those of a plain ReLU, so the trained loss is the loss of
    the saved (ReLU) SAE; the backward pass uses the slope of a leaky ReLU
    ``max(pre, leak · pre)`` (Maas et al. 2013): 1 where ``pre > 0``, ``leak`` where
    ``pre <= 0``. A latent that is silent on every token (a dead latent) then still
    learns, along the gradient it would have if it fired, whether firing would lower
    the loss. With ``leak = 0`` it is ``torch.relu`` exactly.

    Args:
        pre: pre-activations (any shape).
        leak: slope of the gradient below zero, ``0 <= leak < 1``.

    Returns:
        ``relu(pre)``, shaped like ``pre``.
    """
    if leak == 0.0:
        return torch.relu(pre)
    return _LeakyGradReLU.apply(pre, leak)
