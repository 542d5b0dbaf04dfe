"""Small shared pieces of the feature tools: index checks, batching, token masks, losses.

Used by :mod:`saehooks.interventions`, :mod:`saehooks.effects` and
:mod:`saehooks.features`; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from saehooks import hooks
from saehooks.evaluation import bos_token_id
from saehooks.evaluation import check_tokens as check_tokens  # one token checker
from saehooks.evaluation import position_mask as position_mask  # shared BOS mask
from saehooks.metrics import kl_div, next_token_ce
from saehooks.sae import SAE

FeatureSpec = int | Sequence[int] | Tensor
"""One feature index, a sequence of them, or a 1-d integer tensor."""

Positions = str | int | Sequence[int] | slice | Tensor | None
"""``None``/``"all"``, an index, indices, a slice, or a boolean mask ``[pos]``/``[batch, pos]``."""


def check_features(sae: SAE, features: FeatureSpec) -> list[int]:
    """Feature indices as a list of ints, each checked against ``sae.cfg.d_sae``.

    Raises:
        IndexError: an index outside ``0 … d_sae - 1`` (the message gives the range).
        TypeError: something that is not an integer index.
    """
    if isinstance(features, Tensor):
        features = features.flatten().tolist()
    elif isinstance(features, int) or hasattr(features, "__index__"):
        features = [features]
    out: list[int] = []
    for f in features:
        if isinstance(f, bool) or not hasattr(f, "__index__"):
            raise TypeError(f"feature indices must be integers, got {f!r} "
                            f"({type(f).__name__})")
        f = int(f)
        if not 0 <= f < sae.cfg.d_sae:
            raise IndexError(f"feature {f} is out of range: the SAE at {sae.cfg.hook_name!r} "
                             f"has {sae.cfg.d_sae} features, 0 … {sae.cfg.d_sae - 1}")
        out.append(f)
    return out


def iter_batches(tokens: Tensor, batch_size: int,
                 device: torch.device | str | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first_row_index, tokens[i : i + batch_size])`` (moved to ``device``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        yield start, batch if device is None else batch.to(device)


# one definition of each, shared with the evaluation
bos_id = bos_token_id
"""The model's BOS token id (also the document separator of the reference data)."""
token_losses = next_token_ce
"""Next-token cross-entropy ``[batch, pos, vocab] -> [batch, pos - 1]`` nats (metrics)."""
kl_per_token = kl_div
"""``KL(p || q)`` of next-token distributions, ``[..., vocab] -> [...]`` nats (metrics)."""


@torch.no_grad()
def sae_acts(model: nn.Module, sae: SAE, tokens: Tensor) -> Tensor:
    """The SAE's latent activations on ``tokens``: ``[batch, pos] -> [batch, pos, d_sae]``.

    Runs the model only up to the SAE's block and encodes the activation there
    (no hooks are left behind).
    """
    _, act = hooks.capture(model, tokens, sae.cfg.hook_name, stop=True)
    return sae.encode(act.to(sae.device))


def decoder_vector(sae: SAE, feature: int) -> Tensor:
    """What one unit of ``feature``'s activation adds to the reconstruction: ``[d_in]``.

    ``W_dec[feature]``, or its unit-norm version for SAEs that divide activations by
    the decoder norm before decoding (``rescale_acts_by_decoder_norm``).
    """
    row = sae.W_dec[feature].detach()
    if sae.cfg.rescale_acts_by_decoder_norm:
        row = row / row.norm()
    return row


# ---- positions (see saehooks.interventions) ---------------------------------------------
def position_selector(positions: Positions) -> Callable[[int, int, torch.device], Tensor | None]:
    """A function ``(batch, n_pos, device) -> [batch, n_pos] bool mask`` (None: all)."""
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return lambda batch, n_pos, device: None
    if isinstance(positions, str):
        raise ValueError(f"unknown positions {positions!r}; use 'all', an index, a list of "
                         "indices, a slice, or a boolean mask [pos] / [batch, pos]")
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        mask = positions

        def from_mask(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = mask.to(device)
            if m.ndim == 1:
                m = m[None].expand(batch, -1)
            if m.shape[-1] < n_pos:  # positions past the mask are not selected
                m = torch.cat([m, m.new_zeros(m.shape[0], n_pos - m.shape[-1])], dim=-1)
            return m[:, :n_pos].expand(batch, n_pos)

        return from_mask
    if isinstance(positions, slice):
        sl = positions

        def from_slice(batch: int, n_pos: int, device: torch.device) -> Tensor:
            m = torch.zeros(n_pos, dtype=torch.bool, device=device)
            m[sl] = True
            return m[None].expand(batch, n_pos)

        return from_slice
    if isinstance(positions, Tensor):
        positions = positions.flatten().tolist()
    index = [int(positions)] if hasattr(positions, "__index__") else [int(p) for p in positions]

    def from_index(batch: int, n_pos: int, device: torch.device) -> Tensor:
        m = torch.zeros(n_pos, dtype=torch.bool, device=device)
        keep = [p for p in index if -n_pos <= p < n_pos]
        if keep:
            m[torch.tensor(keep, device=device)] = True
        return m[None].expand(batch, n_pos)

    return from_index
