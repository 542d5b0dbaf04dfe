"""Token data for the analysis tools: which positions count, batches, positions,
activation capture and position-masked replacement.

The one implementation of each:

* :func:`bos_token_id`, :func:`position_mask` -- which positions count (every position
  not holding the BOS token, or all of them with ``exclude_bos=False``); every average
  of the package is over these positions;
* :func:`iter_batches` -- rows of a token tensor, batch by batch, moved to a device;
* :func:`capture` -- run the model and read the activation at one or more hooks
  (stopping the forward pass early when no logits are needed); :func:`sae_acts` reads
  an SAE's latents that way;
* :func:`position_selector` / :func:`select_positions` -- the ``positions`` argument of
  the interventions;
* :func:`replace_where` -- a hook replacing an activation at masked positions (the
  ablation baselines of :func:`saehooks.evaluate`).

Token *checks* are :func:`saehooks.checks.check_tokens` and
:func:`saehooks.checks.check_model_tokens`. This module sits beside
:mod:`saehooks.hooks`, below the evaluation, the interventions and the analysis tools:
it imports only :mod:`saehooks.checks`, :mod:`saehooks.errors`, :mod:`saehooks.tl`
(the TransformerLens adapter) and :mod:`saehooks.sae`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn

from saehooks import checks, tl
from saehooks.errors import InputError, InputTypeError
from saehooks.sae import SAE

FeatureSpec = int | Sequence[int] | Tensor | np.ndarray
"""One latent id, a sequence of them, or a 1-d integer tensor / NumPy array."""

Positions = str | int | Sequence[int] | slice | Tensor | None
"""``None``/``"all"``, an index, indices, a slice, or a boolean mask ``[pos]``/``[batch, pos]``."""

HookFn = Callable[..., Any]


# ---- the SAE and feature arguments of the analysis entry points --------------------------
def check_sae(sae: Any, name: str = "sae") -> SAE:
    """``sae`` if it is one :class:`~saehooks.sae.SAE`.

    Raises:
        InputTypeError: a list of SAEs ("call once per SAE"), or anything else.
    """
    if isinstance(sae, SAE):
        return sae
    if isinstance(sae, (list, tuple)):
        raise InputTypeError(
            f"{name} must be one SAE, got a {type(sae).__name__} of "
            f"{len(sae)}; call once per SAE (sh.evaluate takes a list)"
        )
    raise InputTypeError(
        f"{name} must be an SAE, got {type(sae).__name__}; load one with sh.load_sae(...)"
    )


def check_feature(sae: SAE, feature: Any, name: str = "feature") -> int:
    """One latent id of ``sae`` as an int in ``0 … d_sae - 1``.

    Raises:
        InputTypeError: a list of ids ("call once per feature"), a float, a bool or a
            string.
        InputError: out of range.
    """
    if isinstance(feature, (list, tuple)) or (
        isinstance(feature, (Tensor, np.ndarray)) and feature.ndim > 0
    ):
        raise InputTypeError(
            f"{name} must be one latent id (an int), got {len(feature)} ids; call once per feature"
        )
    f, d_sae = checks.check_int(feature, name), sae.cfg.d_sae
    if not 0 <= f < d_sae:
        raise InputError(
            f"{name}={f} is out of range: this SAE has d_sae={d_sae} latents (ids 0 … {d_sae - 1})"
        )
    return f


# ---- which positions count ---------------------------------------------------------------
def bos_token_id(model: nn.Module) -> int | None:
    """The model's BOS token id (None without a tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    return None if tokenizer is None else tokenizer.bos_token_id


def position_mask(model: nn.Module, tokens: Tensor, exclude_bos: bool = True) -> Tensor:
    """The positions that count: ``[batch, pos]`` bool on ``tokens``' device.

    False where the token is the model's BOS token when ``exclude_bos`` (SAEs are
    trained without BOS positions, whose activations are outliers); all True otherwise
    or for a model without a tokenizer. Every per-token average and every firing
    frequency of the package is over these positions.
    """
    bos = bos_token_id(model)
    if not exclude_bos or bos is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return tokens != bos


def broadcast_mask(mask: Tensor, act: Tensor) -> Tensor:
    """``mask [batch, pos]`` shaped to broadcast over ``act [batch, pos, ...]``, on its
    device."""
    return mask.to(act.device).reshape(mask.shape + (1,) * (act.ndim - 2))


def iter_batches(
    tokens: Tensor, batch_size: int, device: torch.device | str | None = None
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first_row_index, tokens[i : i + batch_size])`` (moved to ``device``).

    Raises:
        InputTypeError, InputError: ``batch_size`` is not an int >= 1.
    """
    batch_size = checks.check_batch_size(batch_size)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        yield start, batch if device is None else batch.to(device)


def token_strings(model: nn.Module, ids: Tensor | Sequence[int]) -> list[str]:
    """Each token id decoded on its own (byte-level pieces may show as ``�``)."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return [model.tokenizer.decode([i]) for i in ids]


# ---- capture -----------------------------------------------------------------------------
def _stop_layer(model: nn.Module, names: Sequence[str]) -> int | None:
    """The block after the last one holding one of ``names`` (None: run to the end)."""
    blocks = [tl.block_index(n) for n in names]
    if any(b is None for b in blocks):
        return None
    last = max(b for b in blocks if b is not None) + 1
    return last if last < tl.n_layers(model) else None


@overload
def capture(
    model: nn.Module, tokens: Tensor, hook_names: str, stop: bool = False
) -> tuple[Tensor | None, Tensor]: ...


@overload
def capture(
    model: nn.Module, tokens: Tensor, hook_names: Sequence[str], stop: bool = False
) -> tuple[Tensor | None, dict[str, Tensor]]: ...


def capture(
    model: nn.Module, tokens: Tensor, hook_names: str | Sequence[str], stop: bool = False
) -> tuple[Tensor | None, Tensor | dict[str, Tensor]]:
    """Run ``model`` on ``tokens`` and read the activations at ``hook_names``.

    The one way the package reads activations from a forward pass: with whatever hooks
    are in force (an :func:`saehooks.attach` block, a steering vector ...), so
    ``"<hook>.hook_sae_acts_post"`` reads an attached SAE's latents. No hook is left
    behind; gradients flow only if the caller enables them.

    Args:
        model: a hooked TransformerLens model.
        tokens: ``[batch, pos]`` token ids on the model's device.
        hook_names: one hook name, or several.
        stop: no logits needed: stop the forward pass after the last block holding one
            of the hooks (a hook outside the blocks, or in the last block, runs the
            whole model).

    Returns:
        ``(logits [batch, pos, d_vocab] or None when stop, activation)`` for one name,
        ``(logits or None, {name: activation})`` for several; activations are
        ``[batch, pos, ...]`` (``[batch, pos, n_heads, d_head]`` for per-head hooks),
        detached, in the stream's dtype, on the model's device.
    """
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    store: dict[str, Tensor] = {}

    def saver(name: str) -> HookFn:
        def save(act: Tensor, hook: Any = None) -> None:
            store[name] = act.detach()

        return save

    layer = _stop_layer(model, names) if stop else None
    kwargs = {} if layer is None else {"stop_at_layer": layer}
    logits = model.run_with_hooks(tokens, fwd_hooks=[(n, saver(n)) for n in names], **kwargs)
    logits = None if stop else logits
    if isinstance(hook_names, str):
        return logits, store[hook_names]
    return logits, {n: store[n] for n in names}


@torch.no_grad()
def sae_acts(model: nn.Module, sae: SAE, tokens: Tensor) -> Tensor:
    """The SAE's latents on ``tokens``: ``[batch, pos] -> [batch, pos, d_sae]``.

    :func:`capture` at ``sae.cfg.hook_name`` (stopped after that block), encoded by the
    SAE in its own dtype; the result is on the SAE's device.
    """
    _, act = capture(model, tokens, sae.cfg.hook_name, stop=True)
    return sae.encode(act.to(sae.device))


# ---- position-masked replacement -----------------------------------------------------------
def replace_where(mask: Tensor, new: Tensor | float) -> HookFn:
    """A hook that replaces the activation by ``new`` where ``mask`` is True.

    Args:
        mask: ``[batch, pos]`` booleans (any device).
        new: broadcastable to the activation ``[batch, pos, ...]``: a number (``0.0``
            for zero ablation), a mean ``[d]`` (or ``[n_heads, d_head]``), or a full
            ``[batch, pos, ...]`` replacement; cast to the activation's dtype.

    Returns:
        ``hook(act, hook=None) -> act`` with ``act[mask] = new`` (a new tensor).
    """

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        value = torch.as_tensor(new, dtype=act.dtype, device=act.device)
        return torch.where(broadcast_mask(mask, act), value, act)

    return hook


# ---- the positions argument of the interventions -------------------------------------------
_POSITIONS_HELP = (
    "pass None or 'all', an int, a list of ints, a slice, or a boolean mask [pos] / [batch, pos]"
)


def _index_list(positions: Any) -> list[int]:
    if isinstance(positions, np.ndarray):
        positions = torch.from_numpy(positions)
    if isinstance(positions, Tensor):
        if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.ndim > 1:
            raise InputTypeError(
                f"positions must be integer indices, got a {positions.dtype} "
                f"tensor of shape {tuple(positions.shape)}; {_POSITIONS_HELP}"
            )
        positions = positions.reshape(-1).tolist()
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence):
        return [checks.check_int(positions, "positions")]
    index = [checks.check_int(p, "each of positions") for p in positions]
    if not index:
        raise InputError(f"positions is empty; {_POSITIONS_HELP} (None = every position)")
    return index


def position_selector(positions: Positions) -> Callable[[int, int, torch.device], Tensor | None]:
    """A function ``(batch, n_pos, device) -> [batch, n_pos] bool mask`` (None: all).

    Checked when called, so a malformed ``positions`` fails before any forward pass;
    a ``[batch, pos]`` mask whose batch differs from the forward pass's fails there.
    Out-of-range indices and mask entries past ``n_pos`` select nothing.

    Raises:
        InputTypeError: float indices (e.g. ``[1.5, 2.7]``), bools, other types.
        InputError: an unknown string, an empty list, a mask of more than 2 dimensions,
            a slice with a step < 1; at run time a mask with another batch size.
    """
    if positions is None or (isinstance(positions, str) and positions == "all"):

        def every(batch: int, n_pos: int, device: torch.device) -> None:
            return None

        every.selects_all = True  # type: ignore[attr-defined]
        return every
    if isinstance(positions, str):
        raise InputError(f"unknown positions {positions!r}; {_POSITIONS_HELP}")
    if isinstance(positions, np.ndarray) and positions.dtype == np.bool_:
        positions = torch.from_numpy(positions)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.ndim not in (1, 2):
            raise InputError(
                f"a positions mask must be [pos] or [batch, pos], got shape "
                f"{tuple(positions.shape)}"
            )
        mask = positions

        def from_mask(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = mask.to(device)
            if m.ndim == 1:
                m = m[None]
            if m.shape[0] not in (1, batch):
                raise InputError(
                    f"the positions mask has {m.shape[0]} rows but the forward "
                    f"pass has a batch of {batch}; pass a [pos] mask (the same "
                    "positions in every row) or one row per sequence"
                )
            if m.shape[-1] < n_pos:  # positions past the mask are not selected
                m = torch.cat([m, m.new_zeros(m.shape[0], n_pos - m.shape[-1])], dim=-1)
            return m[:, :n_pos].expand(batch, n_pos)

        return from_mask
    if isinstance(positions, slice):
        parts = [
            None if v is None else checks.check_int(v, f"positions slice {part}")
            for part, v in (
                ("start", positions.start),
                ("stop", positions.stop),
                ("step", positions.step),
            )
        ]
        if parts[2] is not None and parts[2] < 1:
            raise InputError(f"a positions slice needs a step >= 1, got {parts[2]}")
        sl = slice(*parts)

        def from_slice(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = torch.zeros(n_pos, dtype=torch.bool, device=device)
            m[sl] = True
            return m[None].expand(batch, n_pos)

        return from_slice
    if isinstance(positions, bool):
        raise InputTypeError(
            f"positions must be indices or a mask, got {positions!r}; {_POSITIONS_HELP}"
        )
    index = _index_list(positions)

    def from_index(batch: int, n_pos: int, device: torch.device) -> Tensor:
        m = torch.zeros(n_pos, dtype=torch.bool, device=device)
        keep = [p for p in index if -n_pos <= p < n_pos]
        if keep:
            m[torch.tensor(keep, device=device)] = True
        return m[None].expand(batch, n_pos)

    return from_index


def select_positions(select: Callable, act: Tensor) -> Tensor | None:
    """The mask of ``select`` (from :func:`position_selector`) for an activation
    ``[batch, pos, ...]`` (also per-head ``[batch, pos, n_heads, d]``), shaped to
    broadcast over it; None for every position.

    Raises:
        InputError: positions were given but the activation has no position axis.
    """
    if getattr(select, "selects_all", False):
        return None
    if act.ndim < 3:
        raise InputError(
            f"positions need activations [batch, pos, ...], but this hook gives "
            f"shape {tuple(act.shape)}; pass positions=None"
        )
    return broadcast_mask(select(act.shape[0], act.shape[1], act.device), act)
