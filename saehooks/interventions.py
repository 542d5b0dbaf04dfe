"""Intervene on SAE features in a live model: ablate, clamp, steer.

Every intervention is a context manager. Inside the ``with`` block the model runs
with the change (forward passes, ``run_with_cache``, ``generate``); on exit --
normally, by exception, or nested in other hook contexts -- the model holds exactly
the hooks it held before.

Feature edits (:func:`ablate_features`, :func:`clamp_features`) run through the SAE
with its error term kept (``out = decode(edited acts) + stopgrad(x - decode(acts))``),
so only the chosen features change: zeroing feature ``k`` moves the hook's output by
exactly ``-a_k · W_dec[k]`` where ``k`` was active and nowhere else. (For an ``mlp``
SAE, whose decoder is non-linear, it moves by ``decode(edited acts) - decode(acts)``,
which is again zero wherever ``k`` was not active.) Steering (:func:`steer`,
:func:`steer_direction`) adds a vector to the activation at the hook point and needs no
SAE in the forward pass; steering along a feature needs an SAE whose decoder is a
dictionary of directions (:func:`check_linear_decoder`), so an ``mlp`` SAE is refused.

Positions: ``None`` or ``"all"`` means every position of every forward pass; an int,
a sequence of ints, a slice, or a boolean mask ``[pos]`` / ``[batch, pos]`` selects
positions of each forward pass's input (out-of-range indices are ignored; per-head
activations ``[batch, pos, n_heads, d]`` are selected by position across all heads).
Float indices, empty lists, and a ``[batch, pos]`` mask whose batch differs from the
forward pass's are refused (:class:`~saehooks.errors.InputTypeError` /
:class:`~saehooks.errors.InputError`). During
``model.generate(..., use_past_kv_cache=True)`` each step after the first is a
forward pass over one new token, so pick positions other than ``"all"`` only for
plain forward passes or uncached generation.

Only context managers live here (and the hooks and vectors they add); the statistics
they may need come from :mod:`saehooks.analysis.stats`, the one statistics pass
(relative steering measures a feature's maximum activation there; the values of
``mode="mean"`` come from :func:`saehooks.mean_feature_acts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from saehooks import checks, hooks, tl
from saehooks.analysis.stats import feature_act_stats
from saehooks.data import (
    FeatureSpec,
    Positions,
    check_feature,
    check_sae,
    position_selector,
    select_positions,
)
from saehooks.errors import InputError, InputTypeError
from saehooks.hooks import latent_hooks
from saehooks.sae import SAE


# ---- hooks on SAE latents ----------------------------------------------------------------
def set_features_hook(features: list[int], values: Tensor, positions: Positions) -> Callable:
    """Hook on ``hook_sae_acts_post`` setting ``acts[..., features] = values`` at positions.

    ``acts`` is ``[batch, pos, d_sae]`` or, for an SAE on per-head activations,
    ``[batch, pos, n_heads, d_sae]`` (positions then apply to every head).

    Raises:
        InputTypeError, InputError: malformed ``positions`` (see
            :func:`saehooks.data.position_selector`), raised here, before any
            forward pass.
    """
    select = position_selector(positions)
    index = torch.tensor(features, dtype=torch.long)

    def hook(acts: Tensor, hook: Any = None) -> Tensor:
        idx = index.to(acts.device)
        new = values.to(device=acts.device, dtype=acts.dtype).expand(*acts.shape[:-1], len(idx))
        mask = select_positions(select, acts)
        if mask is not None:
            new = torch.where(mask, new, acts[..., idx])
        acts = acts.clone()
        acts[..., idx] = new
        return acts

    return hook


# ---- ablation and clamping --------------------------------------------------------------
def _float_vector(value: Any, name: str) -> Tensor:
    """``value`` (a tensor, array or list of numbers) as a finite float tensor."""
    if isinstance(value, (str, bytes)):
        raise InputTypeError(f"{name} must be a float tensor, got a string")
    try:
        tensor = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise InputTypeError(
            f"{name} must be a float tensor, got a {type(value).__name__}"
        ) from None
    if (
        tensor.dtype != torch.bool
        and not tensor.dtype.is_floating_point
        and not tensor.dtype.is_complex
    ):
        tensor = tensor.float()
    return checks.check_finite_tensor(tensor, name)


def _mean_values(mean_acts: Any, sae: SAE, idx: list[int]) -> Tensor:
    m = _float_vector(mean_acts, "mean_acts").flatten()
    if m.shape[0] != sae.cfg.d_sae:
        raise InputError(
            f"mean_acts has {m.shape[0]} entries but the SAE at "
            f"{sae.cfg.hook_name!r} has d_sae={sae.cfg.d_sae}; pass one mean per "
            "latent, e.g. saehooks.mean_feature_acts(model, sae, "
            "tokens)"
        )
    return m.float().cpu()[idx]


@contextmanager
def ablate_features(
    model: nn.Module,
    sae: SAE | Sequence[SAE],
    features: FeatureSpec | Sequence[FeatureSpec],
    mode: Literal["zero", "mean"] = "zero",
    positions: Positions = None,
    mean_acts: Tensor | Sequence[Tensor] | None = None,
    use_error_term: bool | None = None,
) -> Iterator[nn.Module]:
    """Zero- or mean-ablate SAE features for the duration of a ``with`` block.

    The SAE runs with its error term, so only the chosen features change: zeroing
    feature ``k`` changes the hook's output by exactly ``-a_k · W_dec[k]`` at the
    positions where ``k`` was active, and by nothing elsewhere (an ``mlp`` SAE: by
    ``decode(acts with a_k = 0) - decode(acts)`` there, through its non-linear decoder).

    Args:
        model: a hooked model (TransformerBridge in compatibility mode or HookedTransformer).
        sae: one SAE, or several at distinct hook points.
        features: for one SAE a latent id or distinct ids (ints, a NumPy array or an
            integer tensor); for several SAEs a list with one such entry per SAE.
        mode: ``"zero"`` sets the activations to 0; ``"mean"`` to ``mean_acts``.
        positions: where to ablate (see the module docstring); None = everywhere.
        mean_acts: ``[d_sae]`` finite replacement values per SAE for ``mode="mean"``,
            e.g. :func:`saehooks.mean_feature_acts` over held-out tokens.
        use_error_term: None keeps the default (error term on, or the setting of an
            enclosing ``attach``); False ablates inside the plain reconstruction.

    Yields:
        The model.

    Raises:
        InputTypeError: ``sae`` is not an SAE or list of SAEs; ids that are not
            integers; malformed ``positions``.
        InputError: an id outside ``0 … d_sae - 1`` or repeated; an unknown mode;
            ``mode="mean"`` without ``mean_acts`` or with non-finite / wrongly sized
            ones; a features list that does not match the SAEs.

    Example:
        >>> with sh.ablate_features(model, sae, [123]):
        ...     loss = model(tokens, return_type="loss")
    """
    checks.check_choice(mode, "mode", ("zero", "mean"))
    many = not isinstance(sae, SAE)
    sae_list = (
        [check_sae(s, "each SAE in the list") for s in sae]
        if isinstance(sae, (list, tuple))
        else [check_sae(sae)]
    )
    if many:
        if not isinstance(features, (list, tuple)) or len(features) != len(sae_list):
            raise InputError(
                f"got {len(sae_list)} SAEs, so features must be a list of "
                f"{len(sae_list)} feature lists, one per SAE (e.g. [[1, 2], [3]])"
                f", got a {type(features).__name__}"
            )
        feature_list = list(features)
    else:
        feature_list = [features]
    if mode == "mean":
        if mean_acts is None:
            raise InputError(
                "mode='mean' needs the mean activations: pass mean_acts="
                "saehooks.mean_feature_acts(model, sae, tokens)"
            )
        means = list(mean_acts) if many else [mean_acts]
        if len(means) != len(sae_list):
            raise InputError(
                f"got {len(sae_list)} SAEs but {len(means)} mean_acts; pass one "
                "[d_sae] tensor per SAE"
            )
    items = []
    for i, (s, feats) in enumerate(zip(sae_list, feature_list)):
        idx = checks.check_feature_ids(feats, s.cfg.d_sae, "features")
        values = torch.zeros(len(idx)) if mode == "zero" else _mean_values(means[i], s, idx)
        items.append((s, set_features_hook(idx, values, positions)))
    with latent_hooks(model, items, use_error_term) as m:
        yield m


@contextmanager
def clamp_features(
    model: nn.Module,
    sae: SAE,
    values: Mapping[int, float],
    positions: Positions = None,
    use_error_term: bool | None = None,
) -> Iterator[nn.Module]:
    """Set features to fixed activations wherever they would otherwise differ.

    Feature clamping as in Templeton et al. 2024, "Scaling Monosemanticity" (Anthropic):
    the SAE runs with its error term, and each listed latent is overwritten by its
    value (0 = ablation, a multiple of its maximum activation = strong steering).

    Args:
        model: a hooked model.
        sae: the SAE whose latents are clamped.
        values: ``{latent id: activation}``, finite numbers.
        positions: where to clamp (see the module docstring); None = everywhere.
        use_error_term: as in :func:`ablate_features`.

    Yields:
        The model.

    Raises:
        InputTypeError: ``values`` is not a mapping, or a value is not a number
            (e.g. ``None``).
        InputError: ``values`` is empty, an id is out of range, or a value is NaN or
            infinite.
    """
    sae = check_sae(sae)
    if not isinstance(values, Mapping):
        raise InputTypeError(
            f"values must be a dict {{latent id: activation}}, got a "
            f"{type(values).__name__}; e.g. {{123: 5.0}}"
        )
    if not values:
        raise InputError(
            "clamp_features needs at least one {latent id: activation} pair, e.g. {123: 5.0}"
        )
    idx = checks.check_feature_ids(list(values), sae.cfg.d_sae, "values' latent ids")
    vals = torch.tensor(
        [
            checks.check_float(v, f"values[{k!r}] (the activation of latent {k})")
            for k, v in values.items()
        ]
    )
    with latent_hooks(model, [(sae, set_features_hook(idx, vals, positions))], use_error_term) as m:
        yield m


# ---- steering ---------------------------------------------------------------------------
def _add_vector_hook(vector: Tensor, positions: Positions) -> Callable:
    select = position_selector(positions)

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        add = vector.to(device=act.device, dtype=act.dtype)
        mask = select_positions(select, act)
        if mask is None:
            return act + add
        return act + mask.to(act.dtype) * add

    return hook


@contextmanager
def steer_direction(
    model: nn.Module,
    hook_name: str,
    vector: Tensor,
    coefficient: float,
    positions: Positions = "all",
    normalize: bool = True,
) -> Iterator[nn.Module]:
    """Add ``coefficient · vector / ‖vector‖`` to the activation at ``hook_name``.

    Activation addition (Turner et al. 2023, "Activation Addition: Steering Language
    Models Without Optimization"); with an SAE decoder row as the vector, feature
    steering as in Templeton et al. 2024, "Scaling Monosemanticity".

    Args:
        model: a hooked model.
        hook_name: e.g. ``"blocks.2.hook_resid_post"``; per-head hooks
            (``attn.hook_z`` ...) take a ``[d_head]`` vector added to every head.
        vector: ``[d]``, the width of the hook's activation; finite.
        coefficient: the added vector's norm (if ``normalize``), in the activation's
            units; finite.
        positions: where to add (see the module docstring); default every position,
            prompt and generated tokens alike.
        normalize: scale ``vector`` to unit norm first (False adds ``coefficient · vector``).

    Yields:
        The model.

    Raises:
        HookNameError: the model has no hook ``hook_name`` (the message names close ones).
        InputTypeError: ``vector`` is not numeric, ``coefficient`` not a number,
            ``normalize`` not a bool, malformed ``positions``.
        InputError: ``vector`` is not 1-d, has the wrong width, holds NaN or infinities,
            or is zero with ``normalize``; ``coefficient`` is NaN or infinite.
    """
    if not isinstance(hook_name, str):
        raise InputTypeError(
            f"hook_name must be a string such as 'blocks.2.hook_resid_post', "
            f"got a {type(hook_name).__name__}"
        )
    tl.check_hook_name(model, hook_name)
    vector = _float_vector(vector, "vector")
    coefficient = checks.check_float(coefficient, "coefficient")
    checks.check_bool(normalize, "normalize")
    width = tl.hook_width(model, hook_name)
    if vector.ndim != 1 or (width is not None and vector.shape[0] != width):
        raise InputError(
            f"steering vector has shape {tuple(vector.shape)}; {hook_name!r} needs "
            f"a 1-d vector of width {width}"
        )
    if normalize:
        norm = vector.float().norm()
        if norm == 0:
            raise InputError(
                "cannot normalize a zero steering vector; pass a nonzero vector or normalize=False"
            )
        vector = vector / norm
    with (
        hooks.exclusive_use(model),
        model.hooks(fwd_hooks=[(hook_name, _add_vector_hook(coefficient * vector, positions))]),
    ):
        yield model


def check_linear_decoder(sae: SAE, what: str) -> SAE:
    """``sae`` if its decoder is a dictionary of directions (``acts @ W_dec + b_dec``).

    Args:
        sae: the SAE.
        what: the operation, for the message (e.g. ``"steer"``).

    Raises:
        InputError: an ``mlp`` SAE: a hidden layer and a ReLU follow its ``W_dec``, so
            what one latent adds to the output depends on the others and there is no
            direction per latent; the message suggests editing the latent through the
            SAE instead (:func:`ablate_features`, :func:`clamp_features`).
    """
    if not sae.linear_decoder:
        raise InputError(
            f"{what} needs an SAE whose decoder is a dictionary of directions "
            f"(latent j adds a_j * W_dec[j]); this {sae.cfg.architecture} SAE at "
            f"{sae.cfg.hook_name!r}: its decoder is not a dictionary of directions (a "
            "hidden layer and a ReLU follow W_dec, so what a latent adds depends on the "
            "other latents); edit the latent through the SAE instead: "
            "saehooks.clamp_features(model, sae, {latent: value}) to steer it, "
            "saehooks.ablate_features(model, sae, [latent]) to remove it"
        )
    return sae


def decoder_vector(sae: SAE, feature: int) -> Tensor:
    """What one unit of ``feature``'s activation adds to the reconstruction: ``[d_in]``.

    ``W_dec[feature]`` (detached, on the SAE's device), or its unit-norm version for
    SAEs that divide activations by the decoder norm before decoding
    (``rescale_acts_by_decoder_norm``). The direction :func:`steer` adds and
    :func:`saehooks.feature_logit_effects` reads.

    Raises:
        InputError: the row is zero and must be normalised (it has no direction); an
            ``mlp`` SAE (:func:`check_linear_decoder`).
    """
    check_linear_decoder(sae, "a feature's decoder direction")
    row = sae.W_dec[feature].detach()
    if sae.cfg.rescale_acts_by_decoder_norm:
        norm = row.norm()
        if norm == 0:
            raise InputError(
                f"latent {feature} has a zero decoder row, so it has no "
                "direction; pick a latent that is not dead"
            )
        row = row / norm
    return row


def steering_vector(
    model: nn.Module | None,
    sae: SAE,
    feature: int,
    coefficient: float,
    coefficient_mode: Literal["absolute", "relative"] = "absolute",
    max_activation: float | None = None,
    tokens: Tensor | None = None,
) -> Tensor:
    """The vector :func:`steer` adds: ``[d_in]`` on the SAE's device.

    ``"absolute"``: ``coefficient · W_dec[f] / ‖W_dec[f]‖``. ``"relative"``:
    ``coefficient · max_activation · W_dec[f]``, i.e. what the feature firing at
    ``coefficient`` times its maximum activation adds to the reconstruction.
    ``max_activation`` is measured on ``tokens`` when not given.

    Raises:
        InputTypeError: ``feature`` is not one integer id; a non-numeric coefficient.
        InputError: an id out of range; a NaN or infinite coefficient; an unknown
            mode; an ``mlp`` SAE (no decoder direction, :func:`check_linear_decoder`);
            a latent whose decoder row is zero (no direction to steer along);
            relative mode with neither ``max_activation`` nor ``tokens``, with a
            ``max_activation <= 0``, or with a feature that never fires on ``tokens``.
    """
    sae = check_linear_decoder(check_sae(sae), "steering along a feature")
    f = check_feature(sae, feature)
    coefficient = checks.check_float(coefficient, "coefficient")
    checks.check_choice(coefficient_mode, "coefficient_mode", ("absolute", "relative"))
    row = decoder_vector(sae, f)
    norm = row.norm()
    if norm == 0:
        raise InputError(
            f"latent {f} has a zero decoder row, so it has no direction to steer "
            "along; pick another latent, or pass a vector to steer_direction"
        )
    if coefficient_mode == "absolute":
        return coefficient * row / norm
    if max_activation is None:
        if tokens is None or model is None:
            raise InputError(
                "coefficient_mode='relative' needs the feature's typical maximum "
                "activation: pass max_activation=..., or tokens=... (e.g. "
                "sh.load_eval_tokens(32)) to measure it"
            )
        max_activation = float(feature_act_stats(model, sae, tokens)["max"][f])
        if max_activation <= 0:
            raise InputError(
                f"feature {f} never fires on the given tokens, so it has no "
                "maximum activation; pass max_activation=... or other tokens"
            )
    max_activation = checks.check_float(
        max_activation, "max_activation", minimum=0.0, exclusive_minimum=True
    )
    return coefficient * max_activation * row


@contextmanager
def steer(
    model: nn.Module,
    sae: SAE,
    feature: int | Mapping[int, float],
    coefficient: float | None = None,
    positions: Positions = "all",
    coefficient_mode: Literal["absolute", "relative"] = "absolute",
    max_activation: float | None = None,
    tokens: Tensor | None = None,
) -> Iterator[nn.Module]:
    """Steer the model along SAE features' decoder directions.

    Adds :func:`steering_vector` at ``sae.cfg.hook_name`` (feature steering as in
    Templeton et al. 2024, "Scaling Monosemanticity"); several features at once add
    the sum of their vectors. With the default positions it applies to prompt and
    generated tokens alike, and greedy ``model.generate`` gives the same tokens with
    and without the KV cache (:func:`saehooks.load_model` repairs TransformerLens 4.3's
    cache under transformers 5).

    Args:
        model: a hooked model.
        sae: the SAE that defines the directions (it is not spliced in).
        feature: the latent id (one int), or ``{latent id: coefficient}`` to steer
            several features at once (then leave ``coefficient`` out).
        coefficient: ``"absolute"``: norm of the added vector (residual-stream units);
            ``"relative"``: multiple of the feature's maximum activation. Finite.
        positions: where to add (see the module docstring).
        coefficient_mode: ``"absolute"`` or ``"relative"``.
        max_activation: the feature's typical maximum activation (relative mode, one
            feature), > 0.
        tokens: ``[n_seq, pos]`` to measure maximum activations on when
            ``max_activation`` is None.

    Yields:
        The model.

    Raises:
        InputTypeError, InputError: a dict with a ``coefficient`` too, an int without
            one, an empty dict; and see :func:`steering_vector` and
            :func:`steer_direction`.
        InputError: an ``mlp`` SAE, whose decoder has no direction per latent
            (:func:`check_linear_decoder`; clamp the latent instead).

    Example:
        >>> with sh.steer(model, sae, feature=123, coefficient=8.0):
        ...     print(model.generate("def ", max_new_tokens=20, do_sample=False))
        >>> with sh.steer(model, sae, {123: 8.0, 456: -4.0}):
        ...     logits = model(tokens)
    """
    check_linear_decoder(check_sae(sae), "steer")
    if isinstance(feature, Mapping):
        if coefficient is not None:
            raise InputError(
                "steer got {feature: coefficient} and a coefficient; give the coefficients "
                "in the dict only"
            )
        if not feature:
            raise InputError("steer got an empty dict; pass {latent id: coefficient, ...}")
        if max_activation is not None and len(feature) > 1:
            raise InputError(
                "max_activation is one feature's; with several features pass tokens= so "
                "each feature's maximum is measured"
            )
        checks.check_feature_ids(list(feature), sae.cfg.d_sae)
        items = list(feature.items())
    else:
        if coefficient is None:
            raise InputTypeError(
                "steer needs a coefficient: steer(model, sae, feature, coefficient) or "
                "steer(model, sae, {feature: coefficient, ...})"
            )
        items = [(feature, coefficient)]
    vector = sum(
        steering_vector(model, sae, f, c, coefficient_mode, max_activation, tokens)
        for f, c in items
    )
    with steer_direction(model, sae.cfg.hook_name, vector, 1.0, positions, normalize=False) as m:
        yield m
