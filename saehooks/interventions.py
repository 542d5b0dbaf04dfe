"""Intervene on SAE features in a live model: ablate, clamp, steer.

Every intervention is a context manager. Inside the ``with`` block the model runs
with the change (forward passes, ``run_with_cache``, ``generate``); on exit --
normally, by exception, or nested in other hook contexts -- the model holds exactly
the hooks it held before.

Feature edits (:func:`ablate_features`, :func:`clamp_features`) run through the SAE
with its error term kept (``out = decode(edited acts) + stopgrad(x - decode(acts))``),
so only the chosen features change: zeroing feature ``k`` moves the hook's output by
exactly ``-a_k · W_dec[k]`` where ``k`` was active and nowhere else. Steering
(:func:`steer`, :func:`steer_direction`) adds a vector to the activation at the hook
point and needs no SAE in the forward pass.

Positions: ``None`` or ``"all"`` means every position of every forward pass; an int,
a sequence of ints, a slice, or a boolean mask ``[pos]`` / ``[batch, pos]`` selects
positions of each forward pass's input (out-of-range indices are ignored). During
``model.generate(..., use_past_kv_cache=True)`` each step after the first is a
forward pass over one new token, so pick positions other than ``"all"`` only for
plain forward passes or uncached generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from saehooks import hooks, models
from saehooks.feature_utils import (
    FeatureSpec,
    Positions,
    check_features,
    check_tokens,
    decoder_vector,
    iter_batches,
    position_mask,
    position_selector,
    sae_acts,
)
from saehooks.sae import SAE


# ---- running hooks on SAE latents -------------------------------------------------------
def set_features_hook(features: list[int], values: Tensor, positions: Positions) -> Callable:
    """Hook on ``hook_sae_acts_post`` setting ``acts[..., features] = values`` at positions."""
    select = position_selector(positions)
    index = torch.tensor(features, dtype=torch.long)

    def hook(acts: Tensor, hook: Any = None) -> Tensor:
        idx = index.to(acts.device)
        new = values.to(device=acts.device, dtype=acts.dtype).expand(*acts.shape[:-1], len(idx))
        mask = select(acts.shape[0], acts.shape[1], acts.device) if acts.ndim == 3 else None
        if mask is not None:
            new = torch.where(mask[..., None], new, acts[..., idx])
        acts = acts.clone()
        acts[..., idx] = new
        return acts

    return hook


def _attached(model: nn.Module, sae: SAE) -> bool:
    registry = models.hook_dict(model)
    return registry.get(f"{sae.cfg.hook_name}.hook_sae_acts_post") is sae.hook_sae_acts_post


@contextmanager
def latent_hooks(model: nn.Module, items: Sequence[tuple[SAE, Callable]],
                 use_error_term: bool | None = None) -> Iterator[nn.Module]:
    """Run hooks on SAE latents (``hook_sae_acts_post``), attaching the SAEs if needed.

    SAEs not yet attached are attached for the block (with the error term unless
    ``use_error_term=False``); SAEs already attached by an enclosing
    :func:`saehooks.attach` keep that attachment, and their error-term setting unless
    ``use_error_term`` is given (then it is set for the block and restored after).

    Args:
        model: a hooked model.
        items: ``(sae, fn)`` pairs; ``fn(acts [batch, pos, d_sae], hook) -> acts``.
        use_error_term: None (default: True, or the enclosing attach's setting), or a bool.

    Yields:
        The model.
    """
    saes: list[SAE] = []
    for sae, _ in items:
        if not any(s is sae for s in saes):
            saes.append(sae)
    with ExitStack() as stack:
        fresh = [s for s in saes if not _attached(model, s)]
        for sae in saes:
            if sae in fresh or use_error_term is None:
                continue
            stack.callback(setattr, sae, "use_error_term", sae.use_error_term)
            sae.use_error_term = use_error_term
        if fresh:
            stack.enter_context(hooks.attach(
                model, *fresh, use_error_term=True if use_error_term is None else use_error_term))
        fwd = [(f"{sae.cfg.hook_name}.hook_sae_acts_post", fn) for sae, fn in items]
        stack.enter_context(model.hooks(fwd_hooks=fwd))
        yield model


# ---- statistics needed by interventions -------------------------------------------------
@torch.no_grad()
def feature_act_stats(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                      exclude_bos: bool = True) -> dict[str, Tensor]:
    """Per-feature mean, maximum and firing frequency of the SAE's latents on ``tokens``.

    Args:
        model: the hooked model.
        sae: the SAE (its ``hook_name`` says where it reads).
        tokens: LongTensor ``[n_seq, pos]``.
        batch_size: rows per forward pass.
        exclude_bos: leave out positions holding the BOS token.

    Returns:
        ``{"mean": [d_sae], "max": [d_sae], "frequency": [d_sae], "n_tokens": []}``;
        means include the zeros of inactive tokens; frequency is a fraction in [0, 1].
    """
    tokens = check_tokens(tokens)
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    peak = torch.zeros(sae.cfg.d_sae)
    n = 0
    for _, batch in iter_batches(tokens, batch_size, models.model_device(model)):
        keep = position_mask(model, batch, exclude_bos).to(sae.device)
        acts = sae_acts(model, sae, batch)[keep].float()  # [n_kept, d_sae]
        total += acts.sum(0).double().cpu()
        fired += (acts > 0).sum(0).double().cpu()
        if acts.shape[0]:
            peak = torch.maximum(peak, acts.max(0).values.cpu())
        n += acts.shape[0]
    if n == 0:
        raise ValueError("no tokens left to measure (all BOS?); pass real text tokens")
    return {"mean": (total / n).float(), "max": peak, "frequency": (fired / n).float(),
            "n_tokens": torch.tensor(n)}


def mean_feature_acts(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                      exclude_bos: bool = True) -> Tensor:
    """Mean activation of every latent over ``tokens`` (zeros included): ``[d_sae]``.

    The replacement values of ``ablate_features(..., mode="mean")``.
    """
    return feature_act_stats(model, sae, tokens, batch_size, exclude_bos)["mean"]


# ---- ablation and clamping --------------------------------------------------------------
@contextmanager
def ablate_features(model: nn.Module, sae: SAE | Sequence[SAE],
                    features: FeatureSpec | Sequence[FeatureSpec],
                    mode: Literal["zero", "mean"] = "zero", positions: Positions = None,
                    mean_acts: Tensor | Sequence[Tensor] | None = None,
                    use_error_term: bool | None = None) -> Iterator[nn.Module]:
    """Zero- or mean-ablate SAE features for the duration of a ``with`` block.

    The SAE runs with its error term, so only the chosen features change: zeroing
    feature ``k`` changes the hook's output by exactly ``-a_k · W_dec[k]`` at the
    positions where ``k`` was active, and by nothing elsewhere.

    Args:
        model: a hooked model (TransformerBridge in compatibility mode or HookedTransformer).
        sae: one SAE, or several at distinct hook points.
        features: for one SAE an index or indices; for several SAEs one entry per SAE.
        mode: ``"zero"`` sets the activations to 0; ``"mean"`` to ``mean_acts``.
        positions: where to ablate (see the module docstring); None = everywhere.
        mean_acts: ``[d_sae]`` replacement values per SAE for ``mode="mean"``, e.g.
            :func:`mean_feature_acts` over held-out tokens.
        use_error_term: None keeps the default (error term on, or the setting of an
            enclosing ``attach``); False ablates inside the plain reconstruction.

    Yields:
        The model.

    Raises:
        IndexError: a feature index outside ``0 … d_sae - 1``.
        ValueError: an unknown mode, ``mode="mean"`` without ``mean_acts``, or a
            features list that does not match the SAEs.

    Example:
        >>> with sh.ablate_features(model, sae, [123]):
        ...     loss = model(tokens, return_type="loss")
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")
    many = not isinstance(sae, SAE)
    sae_list = list(sae) if many else [sae]
    feature_list = list(features) if many else [features]
    if len(feature_list) != len(sae_list):
        raise ValueError(f"got {len(sae_list)} SAEs but {len(feature_list)} feature lists; "
                         "pass one list of feature indices per SAE")
    if mode == "mean":
        if mean_acts is None:
            raise ValueError("mode='mean' needs the mean activations: pass mean_acts="
                             "sh.mean_feature_acts(model, sae, tokens)")
        means = list(mean_acts) if many else [mean_acts]
    items = []
    for i, (s, feats) in enumerate(zip(sae_list, feature_list)):
        idx = check_features(s, feats)
        if mode == "zero":
            values = torch.zeros(len(idx))
        else:
            m = torch.as_tensor(means[i]).flatten()
            if m.shape[0] != s.cfg.d_sae:
                raise ValueError(f"mean_acts has {m.shape[0]} entries but the SAE at "
                                 f"{s.cfg.hook_name!r} has d_sae={s.cfg.d_sae}")
            values = m[idx]
        items.append((s, set_features_hook(idx, values, positions)))
    with latent_hooks(model, items, use_error_term) as m:
        yield m


@contextmanager
def clamp_features(model: nn.Module, sae: SAE, values: Mapping[int, float],
                   positions: Positions = None,
                   use_error_term: bool | None = None) -> Iterator[nn.Module]:
    """Set features to fixed activations wherever they would otherwise differ.

    Feature clamping as in Templeton et al. 2024, "Scaling Monosemanticity" (Anthropic):
    the SAE runs with its error term, and each listed latent is overwritten by its
    value (0 = ablation, a multiple of its maximum activation = strong steering).

    Args:
        model: a hooked model.
        sae: the SAE whose latents are clamped.
        values: ``{feature index: activation}``.
        positions: where to clamp (see the module docstring); None = everywhere.
        use_error_term: as in :func:`ablate_features`.

    Yields:
        The model.

    Raises:
        IndexError: a feature index outside ``0 … d_sae - 1``.
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("clamp_features needs at least one {feature: value} pair")
    idx = check_features(sae, list(values))
    vals = torch.tensor([float(values[f]) for f in values])
    with latent_hooks(model, [(sae, set_features_hook(idx, vals, positions))],
                      use_error_term) as m:
        yield m


# ---- steering ---------------------------------------------------------------------------
def _add_vector_hook(vector: Tensor, positions: Positions) -> Callable:
    select = position_selector(positions)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        add = vector.to(device=act.device, dtype=act.dtype)
        mask = select(act.shape[0], act.shape[1], act.device) if act.ndim == 3 else None
        if mask is None:
            return act + add
        return act + mask[..., None].to(act.dtype) * add

    return hook


@contextmanager
def steer_direction(model: nn.Module, hook_name: str, vector: Tensor, coefficient: float,
                    positions: Positions = "all", normalize: bool = True) -> Iterator[nn.Module]:
    """Add ``coefficient · vector / ‖vector‖`` to the activation at ``hook_name``.

    Activation addition (Turner et al. 2023, "Activation Addition: Steering Language
    Models Without Optimization"); with an SAE decoder row as the vector, feature
    steering as in Templeton et al. 2024, "Scaling Monosemanticity".

    Args:
        model: a hooked model.
        hook_name: e.g. ``"blocks.2.hook_resid_post"``.
        vector: ``[d]``, the width of the hook's activation.
        coefficient: the added vector's norm (if ``normalize``), in the activation's units.
        positions: where to add (see the module docstring); default every position,
            prompt and generated tokens alike.
        normalize: scale ``vector`` to unit norm first (False adds ``coefficient · vector``).

    Yields:
        The model.

    Raises:
        HookNameError: the model has no hook ``hook_name`` (the message names close ones).
        ValueError: ``vector`` is not 1-d, has the wrong width, or is zero with ``normalize``.
    """
    models.check_hook_name(model, hook_name)
    vector = torch.as_tensor(vector).detach()
    width = models.hook_width(model, hook_name)
    if vector.ndim != 1 or (width is not None and vector.shape[0] != width):
        raise ValueError(f"steering vector has shape {tuple(vector.shape)}; {hook_name!r} needs "
                         f"a 1-d vector of width {width}")
    if normalize:
        norm = vector.float().norm()
        if norm == 0:
            raise ValueError("cannot normalize a zero steering vector; pass a nonzero vector "
                             "or normalize=False")
        vector = vector / norm
    with model.hooks(fwd_hooks=[(hook_name, _add_vector_hook(coefficient * vector, positions))]):
        yield model


def steering_vector(model: nn.Module | None, sae: SAE, feature: int, coefficient: float,
                    coefficient_mode: Literal["absolute", "relative"] = "absolute",
                    max_activation: float | None = None,
                    tokens: Tensor | None = None) -> Tensor:
    """The vector :func:`steer` adds: ``[d_in]``.

    ``"absolute"``: ``coefficient · W_dec[f] / ‖W_dec[f]‖``. ``"relative"``:
    ``coefficient · max_activation · W_dec[f]``, i.e. what the feature firing at
    ``coefficient`` times its maximum activation adds to the reconstruction.
    ``max_activation`` is measured on ``tokens`` when not given.

    Raises:
        IndexError: unknown feature. ValueError: unknown mode, or relative mode with
        neither ``max_activation`` nor ``tokens``.
    """
    f = check_features(sae, feature)
    if len(f) != 1:
        raise ValueError(f"steer one feature at a time, got {len(f)}; use steer_direction "
                         "with a sum of decoder rows to steer several")
    row = decoder_vector(sae, f[0])
    if coefficient_mode == "absolute":
        return coefficient * row / row.norm()
    if coefficient_mode != "relative":
        raise ValueError(f"unknown coefficient_mode {coefficient_mode!r}; use 'absolute' or "
                         "'relative'")
    if max_activation is None:
        if tokens is None or model is None:
            raise ValueError("coefficient_mode='relative' needs the feature's typical maximum "
                             "activation: pass max_activation=..., or tokens=... (e.g. "
                             "sh.load_eval_tokens(32)) to measure it")
        max_activation = float(feature_act_stats(model, sae, tokens)["max"][f[0]])
        if max_activation <= 0:
            raise ValueError(f"feature {f[0]} never fires on the given tokens, so it has no "
                             "maximum activation; pass max_activation=... or other tokens")
    return coefficient * max_activation * row


@contextmanager
def steer(model: nn.Module, sae: SAE, feature: int, coefficient: float,
          positions: Positions = "all",
          coefficient_mode: Literal["absolute", "relative"] = "absolute",
          max_activation: float | None = None,
          tokens: Tensor | None = None) -> Iterator[nn.Module]:
    """Steer the model along one SAE feature's decoder direction.

    Adds :func:`steering_vector` at ``sae.cfg.hook_name`` (feature steering as in
    Templeton et al. 2024, "Scaling Monosemanticity"). With the default positions it
    applies to prompt and generated tokens alike, and greedy ``model.generate`` gives
    the same tokens with and without the KV cache. (TransformerLens 4.3's bridge under
    transformers 5 leaves the KV cache empty, so cached generation is wrong there even
    unsteered; :func:`saehooks.load_model` repairs it, otherwise pass
    ``use_past_kv_cache=False``.)

    Args:
        model: a hooked model.
        sae: the SAE that defines the direction (it is not spliced in).
        feature: the feature index.
        coefficient: ``"absolute"``: norm of the added vector (residual-stream units);
            ``"relative"``: multiple of the feature's maximum activation.
        positions: where to add (see the module docstring).
        coefficient_mode: ``"absolute"`` or ``"relative"``.
        max_activation: the feature's typical maximum activation (relative mode).
        tokens: ``[n_seq, pos]`` to measure it on when ``max_activation`` is None.

    Yields:
        The model.

    Raises:
        IndexError: a feature index outside ``0 … d_sae - 1``.
        ValueError: see :func:`steering_vector`.

    Example:
        >>> with sh.steer(model, sae, feature=123, coefficient=8.0):
        ...     print(model.generate("def ", max_new_tokens=20, do_sample=False))
    """
    vector = steering_vector(model, sae, feature, coefficient, coefficient_mode,
                             max_activation, tokens)
    with steer_direction(model, sae.cfg.hook_name, vector, 1.0, positions,
                         normalize=False) as m:
        yield m
