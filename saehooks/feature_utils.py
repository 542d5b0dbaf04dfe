"""Shared pieces of the analysis tools: input checks, BOS masks, batching, streaming
sums, positions.

Used by :mod:`saehooks.evaluation`, :mod:`saehooks.interventions`,
:mod:`saehooks.effects` and :mod:`saehooks.features`; nothing here holds state beyond
the running sums of one call. The argument checks build on :mod:`saehooks.checks`, so
one mistake gets one message wherever it is made. Every running sum lives on the CPU in
float64 and takes ``.cpu()`` values, so the model may sit on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saehooks import checks, hooks, metrics
from saehooks.errors import InputError, InputTypeError
from saehooks.hooks import check_compatible
from saehooks.metrics import kl_div, next_token_ce
from saehooks.sae import SAE

FeatureSpec = int | Sequence[int] | Tensor | np.ndarray
"""One latent id, a sequence of them, or a 1-d integer tensor / NumPy array."""

Positions = str | int | Sequence[int] | slice | Tensor | None
"""``None``/``"all"``, an index, indices, a slice, or a boolean mask ``[pos]``/``[batch, pos]``."""


# ---- inputs -----------------------------------------------------------------------------
def check_tokens(tokens: Any, min_positions: int = 1, d_vocab: int | None = None,
                 n_ctx: int | None = None) -> Tensor:
    """:func:`saehooks.checks.check_tokens` (kept here for code that imports it from here).

    Raises:
        InputTypeError, InputError: see :func:`saehooks.checks.check_tokens`.
    """
    return checks.check_tokens(tokens, min_positions=min_positions, d_vocab=d_vocab,
                               n_ctx=n_ctx)


def check_sae(sae: Any, name: str = "sae") -> SAE:
    """``sae`` if it is one :class:`~saehooks.sae.SAE`.

    Raises:
        InputTypeError: a list of SAEs, or anything else.
    """
    if isinstance(sae, SAE):
        return sae
    if isinstance(sae, (list, tuple)):
        raise InputTypeError(f"{name} must be one SAE, got a {type(sae).__name__} of "
                             f"{len(sae)}; call once per SAE (sh.evaluate takes a list)")
    raise InputTypeError(f"{name} must be an SAE, got {type(sae).__name__}; load one with "
                         "sh.load_sae(...)")


def check_saes(model: nn.Module, sae: Any) -> list[SAE]:
    """One SAE or a non-empty list of SAEs at distinct hooks, each checked against the
    model (:func:`saehooks.hooks.check_compatible`).

    Raises:
        InputTypeError: not an SAE or a list of SAEs.
        InputError: an empty list, or two SAEs at one hook.
    """
    if isinstance(sae, SAE):
        saes = [sae]
    elif isinstance(sae, (list, tuple)):
        if not sae:
            raise InputError("no SAEs given; pass an SAE or a non-empty list of SAEs")
        saes = [check_sae(s, "each SAE in the list") for s in sae]
        names = [s.cfg.hook_name for s in saes]
        repeated = sorted({h for h in names if names.count(h) > 1})
        if repeated:
            raise InputError(f"several SAEs at hook {repeated}: SAEs evaluated together are "
                             "spliced in at once, one per hook; evaluate SAEs that share a "
                             "hook in separate calls")
    else:
        saes = [check_sae(sae)]
    for s in saes:
        check_compatible(model, s)
    return saes


def check_features(sae: SAE, features: Any, name: str = "features") -> list[int]:
    """Latent ids as a list of distinct ints in ``0 … d_sae - 1``
    (:func:`saehooks.checks.check_feature_ids`; NumPy and tensor ids welcome).

    Raises:
        InputTypeError: floats, bools, strings or nested sequences.
        InputError: an id out of range, a repeated id, or no ids at all.
    """
    return checks.check_feature_ids(features, sae.cfg.d_sae, name)


def check_feature(sae: SAE, feature: Any, name: str = "feature") -> int:
    """One latent id as an int in ``0 … d_sae - 1``.

    Raises:
        InputTypeError: a list of ids, a float, a bool or a string.
        InputError: out of range.
    """
    if isinstance(feature, (list, tuple)) or (
            isinstance(feature, (Tensor, np.ndarray)) and feature.ndim > 0):
        raise InputTypeError(f"{name} must be one latent id (an int), got {len(feature)} ids; "
                             "call once per feature")
    f, d_sae = checks.check_int(feature, name), sae.cfg.d_sae
    if not 0 <= f < d_sae:
        raise InputError(f"{name}={f} is out of range: this SAE has d_sae={d_sae} latents "
                         f"(ids 0 … {d_sae - 1})")
    return f


def check_flags(**flags: Any) -> None:
    """Each keyword must be True or False (:func:`saehooks.checks.check_bool`)."""
    for name, value in flags.items():
        checks.check_bool(value, name)


def bos_token_id(model: nn.Module) -> int | None:
    """The model's BOS token id (None without a tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    return None if tokenizer is None else tokenizer.bos_token_id


def position_mask(model: nn.Module, tokens: Tensor, exclude_bos: bool = True) -> Tensor:
    """``[batch, pos]`` on ``tokens``' device: False at BOS-token positions when
    ``exclude_bos``."""
    bos = bos_token_id(model)
    if not exclude_bos or bos is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return tokens != bos


def broadcast_mask(mask: Tensor, act: Tensor) -> Tensor:
    """``mask [batch, pos]`` shaped to broadcast over ``act [batch, pos, ...]``."""
    return mask.to(act.device).reshape(mask.shape + (1,) * (act.ndim - 2))




def iter_batches(tokens: Tensor, batch_size: int,
                 device: torch.device | str | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first_row_index, tokens[i : i + batch_size])`` (moved to ``device``).

    Raises:
        InputTypeError, InputError: ``batch_size`` is not an int >= 1.
    """
    batch_size = checks.check_batch_size(batch_size)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        yield start, batch if device is None else batch.to(device)


# one definition of each, shared with the evaluation
token_losses = next_token_ce
"""Next-token cross-entropy ``[batch, pos, vocab] -> [batch, pos - 1]`` nats (metrics)."""
kl_per_token = kl_div
"""``KL(p || q)`` of next-token distributions, ``[..., vocab] -> [...]`` nats (metrics)."""


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
        """Add one batch: each value ``[n]`` (the same ``n`` for all names)."""
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


class ReconstructionSums:
    """Streaming reconstruction statistics of one SAE, in float64 on the CPU.

    Keeps the token count, the mean and the centred co-moment ``Σ (x − x̄)(x − x̄)ᵀ``
    merged batch by batch with Chan et al.'s pairwise update (1979, "Updating formulae
    and a pairwise algorithm for computing sample variances"), so the variance of
    activations with a large mean loses no precision; plus ``Σ‖x − x̂‖²``, ``Σ l0``,
    ``Σ l1`` and per-latent firing counts.
    """

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.comoment = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.sse = torch.zeros((), dtype=torch.float64)
        self.l0 = torch.zeros((), dtype=torch.float64)
        self.l1 = torch.zeros((), dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.float64)

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
        self.sse += metrics.sum_squared_error(xd, x_hat.detach()).cpu()
        feats = feature_acts.detach()
        self.l0 += metrics.l0(feats).sum(dtype=torch.float64).cpu()
        self.l1 += metrics.l1(feats).sum(dtype=torch.float64).cpu()
        self.fired += (feats != 0).sum(0, dtype=torch.float64).cpu()

    def result(self) -> dict[str, Any]:
        """The :class:`EvalReport` reconstruction fields (``fvu``, ``explained_variance``,
        ``mse``, ``l0``, ``l1``, ``dead_fraction``, ``pca_rank``, ``pca_fvu``,
        ``n_tokens``, ``feature_density``)."""
        n = self.n
        fvu = (self.sse / self.comoment.trace()).item()
        l0 = (self.l0 / n).item()
        rank = round(l0)
        return {
            "fvu": fvu, "explained_variance": 1.0 - fvu, "mse": (self.sse / n).item(),
            "l0": l0, "l1": (self.l1 / n).item(),
            "dead_fraction": (self.fired == 0).double().mean().item(), "pca_rank": rank,
            # the co-moment is already centred: a zero mean makes it the covariance sum
            "pca_fvu": metrics.pca_fvu_from_moments(
                self.comoment, torch.zeros_like(self.mean), n, rank),
            "n_tokens": n, "feature_density": (self.fired / n).float(),
        }


class FeatureCounts:
    """Per-latent running statistics over tokens, in float64 on the CPU.

    ``add`` takes one batch's counted tokens ``[n, d_sae]`` on any device; the sums equal
    those over all tokens at once whatever the batch split.
    """

    def __init__(self, d_sae: int) -> None:
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` sum of activations."""
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` number of tokens with activation > 0."""
        self.peak = torch.zeros(d_sae, dtype=torch.float64)
        """``[d_sae]`` largest activation (0 for a latent that never fired)."""
        self.n_tokens = 0

    def add(self, acts: Tensor) -> None:
        """Add one batch of latents ``[n, d_sae]``."""
        acts = acts.detach()
        if acts.shape[0] == 0:
            return
        self.total += acts.sum(0, dtype=torch.float64).cpu()
        self.fired += (acts > 0).sum(0, dtype=torch.float64).cpu()
        self.peak = torch.maximum(self.peak, acts.max(0).values.double().cpu())
        self.n_tokens += acts.shape[0]

    def frequency(self) -> Tensor:
        """``[d_sae]`` fraction of tokens on which each latent fired (0 with no tokens)."""
        return self.fired / max(self.n_tokens, 1)


# ---- SAE latents ------------------------------------------------------------------------
@torch.no_grad()
def sae_acts(model: nn.Module, sae: SAE, tokens: Tensor) -> Tensor:
    """The SAE's latent activations on ``tokens``: ``[batch, pos] -> [batch, pos, d_sae]``.

    Runs the model only up to the SAE's block and encodes the activation there
    (no hooks are left behind); the result is on the SAE's device.
    """
    _, act = hooks.capture(model, tokens, sae.cfg.hook_name, stop=True)
    return sae.encode(act.to(sae.device))


def decoder_vector(sae: SAE, feature: int) -> Tensor:
    """What one unit of ``feature``'s activation adds to the reconstruction: ``[d_in]``.

    ``W_dec[feature]``, or its unit-norm version for SAEs that divide activations by
    the decoder norm before decoding (``rescale_acts_by_decoder_norm``).

    Raises:
        InputError: the row is zero and must be normalised (it has no direction).
    """
    row = sae.W_dec[feature].detach()
    if sae.cfg.rescale_acts_by_decoder_norm:
        norm = row.norm()
        if norm == 0:
            raise InputError(f"latent {feature} has a zero decoder row, so it has no "
                             "direction; pick a latent that is not dead")
        row = row / norm
    return row


# ---- positions (see saehooks.interventions) ---------------------------------------------
_POSITIONS_HELP = ("pass None or 'all', an int, a list of ints, a slice, or a boolean mask "
                   "[pos] / [batch, pos]")


def _index_list(positions: Any) -> list[int]:
    if isinstance(positions, np.ndarray):
        positions = torch.from_numpy(positions)
    if isinstance(positions, Tensor):
        if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.ndim > 1:
            raise InputTypeError(f"positions must be integer indices, got a {positions.dtype} "
                                 f"tensor of shape {tuple(positions.shape)}; {_POSITIONS_HELP}")
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
            raise InputError(f"a positions mask must be [pos] or [batch, pos], got shape "
                             f"{tuple(positions.shape)}")
        mask = positions

        def from_mask(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = mask.to(device)
            if m.ndim == 1:
                m = m[None]
            if m.shape[0] not in (1, batch):
                raise InputError(f"the positions mask has {m.shape[0]} rows but the forward "
                                 f"pass has a batch of {batch}; pass a [pos] mask (the same "
                                 "positions in every row) or one row per sequence")
            if m.shape[-1] < n_pos:  # positions past the mask are not selected
                m = torch.cat([m, m.new_zeros(m.shape[0], n_pos - m.shape[-1])], dim=-1)
            return m[:, :n_pos].expand(batch, n_pos)

        return from_mask
    if isinstance(positions, slice):
        parts = [None if v is None else checks.check_int(v, f"positions slice {part}")
                 for part, v in (("start", positions.start), ("stop", positions.stop),
                                 ("step", positions.step))]
        if parts[2] is not None and parts[2] < 1:
            raise InputError(f"a positions slice needs a step >= 1, got {parts[2]}")
        sl = slice(*parts)

        def from_slice(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = torch.zeros(n_pos, dtype=torch.bool, device=device)
            m[sl] = True
            return m[None].expand(batch, n_pos)

        return from_slice
    if isinstance(positions, bool):
        raise InputTypeError(f"positions must be indices or a mask, got {positions!r}; "
                             f"{_POSITIONS_HELP}")
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
        raise InputError(f"positions need activations [batch, pos, ...], but this hook gives "
                         f"shape {tuple(act.shape)}; pass positions=None")
    mask = select(act.shape[0], act.shape[1], act.device)
    return mask.reshape(mask.shape + (1,) * (act.ndim - 2))
