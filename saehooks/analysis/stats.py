"""Per-feature statistics from one streaming pass: firing frequency, mean, maximum and
top activating examples.

:func:`feature_stats` is the one pass; every other function here reads its result:

* :func:`scan_features` / :func:`top_activating_examples` -- the tokens where features
  fire most, with context (a running top-k merge, memory flat in the data);
* :func:`feature_density` -- firing frequencies, plotted by
  :func:`feature_density_histogram` on a log10 scale as in Bricken et al. 2023,
  "Towards Monosemanticity" (Anthropic);
* :func:`feature_act_stats` / :func:`mean_feature_acts` -- mean and maximum activations
  (the values of ``ablate_features(mode="mean")`` and of relative steering).

**Firing frequency** (one definition, used by every frequency and density of the
package: these functions, ``EvalReport.feature_density``, and the ``frequency`` columns
of :func:`saehooks.feature_ablation_effects` and :func:`saehooks.feature_attribution`):
the fraction of *counted positions* on which the latent's activation is ``> 0``. The
counted positions are every position of ``tokens`` except those holding the BOS token
(all positions with ``exclude_bos=False``) -- the last position of each row included,
though it predicts no token. Sums are float64 on the CPU
(:class:`saehooks.metrics.FeatureCounts`), so the result does not depend on the batch
size, and the model may sit on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks import checks, hooks
from saehooks.data import (
    FeatureSpec,
    broadcast_mask,
    check_feature,
    check_sae,
    iter_batches,
    position_mask,
    sae_acts,
    token_strings,
)
from saehooks.errors import InputError
from saehooks.metrics import FeatureCounts
from saehooks.sae import SAE
from saehooks.tl import model_device

NEWLINE_MARK = "⏎"
"""Shown in place of a newline in one-line context strings."""

EXAMPLE_COLUMNS = [
    "activation",
    "sequence",
    "position",
    "token",
    "token_id",
    "context",
    "context_tokens",
    "context_acts",
    "context_start",
]
"""The columns of a top-examples table (see :func:`top_activating_examples`)."""


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", NEWLINE_MARK)


class RunningTopK:
    """The ``k`` largest positive activations of one feature seen so far, with windows.

    ``update`` merges one batch; after any split of the rows into batches, ``values``
    and ``items`` equal a stable descending sort of all activations at once (ties: the
    earlier sequence and position first), cut to the ``k`` positive ones.
    """

    def __init__(self, k: int, context: int) -> None:
        self.k, self.context = k, context
        self.values = torch.empty(0)
        self.items: list[tuple[int, int, Tensor]] = []  # (sequence, position, window acts)

    def update(self, start: int, acts: Tensor) -> None:
        """Merge a batch's activations ``[b, pos]`` (zeros where not counted)."""
        flat = acts.flatten()
        idx = (flat > 0).nonzero()[:, 0]
        if idx.numel() == 0:
            return
        merged = torch.cat([self.values, flat[idx]])
        order = torch.sort(-merged, stable=True).indices[: self.k]  # ties: earlier first
        items = []
        for i in order.tolist():
            if i < len(self.items):
                items.append(self.items[i])
                continue
            row, pos = divmod(int(idx[i - len(self.items)]), acts.shape[1])
            lo, hi = max(0, pos - self.context), min(acts.shape[1], pos + self.context + 1)
            items.append((start + row, pos, acts[row, lo:hi].clone()))
        self.items, self.values = items, merged[order]

    def frame(
        self, model: nn.Module, tokens: Tensor, feature: int, frequency: float, n_tokens: int
    ) -> pd.DataFrame:
        rows = []
        for val, (seq, pos, window) in zip(self.values.tolist(), self.items):
            lo = max(0, pos - self.context)
            ids = tokens[seq, lo : lo + window.shape[0]]
            pieces = token_strings(model, ids)
            at = pos - lo
            rows.append(
                {
                    "activation": val,
                    "sequence": seq,
                    "position": pos,
                    "token": pieces[at],
                    "token_id": int(ids[at]),
                    "context": _one_line(
                        "".join(pieces[:at]) + "«" + pieces[at] + "»" + "".join(pieces[at + 1 :])
                    ),
                    "context_tokens": pieces,
                    "context_acts": window.tolist(),
                    "context_start": lo,
                }
            )
        frame = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
        frame.attrs.update(
            feature=feature,
            frequency=frequency,
            n_tokens=n_tokens,
            max_activation=float(self.values[0]) if self.items else 0.0,
        )
        return frame


class FeatureStats(NamedTuple):
    """What one pass of :func:`feature_stats` over tokens found (tensors on the CPU)."""

    frequency: Tensor
    """``[d_sae]`` float32: fraction of counted positions (not BOS, unless
    ``exclude_bos=False``; last positions included) where the latent's activation is
    ``> 0``."""
    mean: Tensor
    """``[d_sae]`` float32: mean activation over the counted positions, zeros included."""
    max: Tensor
    """``[d_sae]`` float32: largest activation (0 for a latent that never fires)."""
    n_tokens: int
    """Counted positions (for an SAE on per-head activations, positions × heads)."""
    examples: dict[int, pd.DataFrame]
    """Per requested feature, its top activating examples (the table
    :func:`top_activating_examples` returns); empty when no feature was requested."""


@torch.no_grad()
@hooks.uses_model
def feature_stats(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    features: FeatureSpec | None = None,
    k: int = 20,
    context: int = 10,
    batch_size: int = 8,
    exclude_bos: bool = True,
) -> FeatureStats:
    """Every latent's firing frequency, mean and maximum, and the top activating
    examples of ``features``, from one streaming pass over ``tokens``.

    One forward pass per batch, stopped after the SAE's block
    (:func:`saehooks.data.sae_acts`). Each batch's activations are merged into a
    running top-k per requested feature (ties go to the earlier sequence and position),
    so the examples equal sorting all activations at once while memory stays flat in
    the number of tokens; only the requested features' activations
    ``[batch, pos, n_features]`` come to the CPU. Frequencies, means and maxima are
    float64 sums on the CPU (:class:`saehooks.metrics.FeatureCounts`), independent of
    ``batch_size``.

    Args:
        model: a hooked model (with a tokenizer when ``features`` are given), any device.
        sae: the SAE (on the model's device).
        tokens: LongTensor ``[n_seq, pos]``, at most the model's ``n_ctx`` long.
        features: distinct latent ids to collect examples for (ints, a NumPy array or an
            integer tensor), or None for none.
        k: examples per feature (fewer if it fires on fewer positions), >= 1.
        context: tokens shown on each side of an example token, >= 0.
        batch_size: rows per forward pass, >= 1.
        exclude_bos: leave positions holding BOS out of every statistic and example.

    Returns:
        :class:`FeatureStats`. Frequency: the fraction of counted positions (every
        position not holding BOS, last positions included; all with
        ``exclude_bos=False``) where the activation is ``> 0``.

    Raises:
        InputTypeError: ids, ``k``, ``context`` or ``batch_size`` that are not integers;
            malformed ``tokens``; ``sae`` not one SAE; a flag that is not a bool.
        InputError: an id outside ``0 … d_sae - 1`` or repeated, or an empty list;
            ``k < 1``, ``context < 0``, ``batch_size < 1``; ``tokens`` too long or
            outside the vocabulary.
        HookNameError, DeviceError: see :func:`saehooks.hooks.check_compatible`.
    """
    checks.check_bool(exclude_bos, "exclude_bos")
    sae = check_sae(sae)
    hooks.check_compatible(model, sae)
    tokens = checks.check_model_tokens(model, tokens)
    d_sae = sae.cfg.d_sae
    feats = [] if features is None else checks.check_feature_ids(features, d_sae, "features")
    k = checks.check_positive_int(k, "k")
    context = checks.check_int(context, "context", minimum=0)
    batch_size = checks.check_batch_size(batch_size)
    tops = {f: RunningTopK(k, context) for f in feats}
    counts = FeatureCounts(d_sae)
    chosen = torch.tensor(feats, dtype=torch.long, device=sae.device)
    for start, batch in iter_batches(tokens, batch_size, model_device(model)):
        keep = position_mask(model, batch, exclude_bos)
        acts = sae_acts(model, sae, batch)  # [b, pos, d_sae]
        keep = keep.to(acts.device)
        counts.add(acts[keep].reshape(-1, d_sae))
        if tops:
            picked = (acts[..., chosen].float() * broadcast_mask(keep, acts)).cpu()
            for i, top in enumerate(tops.values()):
                top.update(start, picked[..., i])
    frequency = counts.frequency()
    examples = {
        f: top.frame(model, tokens, f, float(frequency[f]), counts.n_tokens)
        for f, top in tops.items()
    }
    return FeatureStats(
        frequency.float(), counts.mean().float(), counts.peak.float(), counts.n_tokens, examples
    )


def _counted(result: FeatureStats) -> FeatureStats:
    if result.n_tokens == 0:
        raise InputError(
            "every position holds the BOS token, so there are no activations "
            "to measure; pass real text tokens or exclude_bos=False"
        )
    return result


def feature_act_stats(
    model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8, exclude_bos: bool = True
) -> dict[str, Tensor]:
    """Per-feature mean, maximum and firing frequency of the SAE's latents on ``tokens``.

    :func:`feature_stats` without examples, as a dict (the statistics behind
    :func:`feature_density`, :func:`mean_feature_acts` and relative steering).

    Args:
        model: the hooked model (any device).
        sae: the SAE (its ``hook_name`` says where it reads).
        tokens: LongTensor ``[n_seq, pos]``, at most the model's ``n_ctx`` long.
        batch_size: rows per forward pass.
        exclude_bos: leave out positions holding the BOS token.

    Returns:
        ``{"mean": [d_sae], "max": [d_sae], "frequency": [d_sae], "n_tokens": []}``,
        float32 on the CPU; means include the zeros of inactive positions; frequency is
        the fraction of counted positions (every position not holding BOS, last
        positions included; all with ``exclude_bos=False``) where the activation is
        ``> 0``.

    Raises:
        InputTypeError, InputError: a malformed argument (see :func:`feature_stats`),
            or every position holds BOS.
    """
    result = _counted(
        feature_stats(model, sae, tokens, batch_size=batch_size, exclude_bos=exclude_bos)
    )
    return {
        "mean": result.mean,
        "max": result.max,
        "frequency": result.frequency,
        "n_tokens": torch.tensor(result.n_tokens),
    }


def mean_feature_acts(
    model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8, exclude_bos: bool = True
) -> Tensor:
    """Mean activation of every latent over the counted positions of ``tokens`` (zeros
    included): ``[d_sae]`` float32 on the CPU.

    The replacement values of ``ablate_features(..., mode="mean")``. Arguments and
    errors as in :func:`feature_act_stats`.
    """
    return _counted(
        feature_stats(model, sae, tokens, batch_size=batch_size, exclude_bos=exclude_bos)
    ).mean


def feature_density(
    model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8, exclude_bos: bool = True
) -> Tensor:
    """Firing frequency of every latent: ``[d_sae]`` float32 in [0, 1], on the CPU.

    The fraction of counted positions (every position not holding BOS, last positions
    included; all with ``exclude_bos=False``) where the latent's activation is ``> 0``:
    the same numbers as ``evaluate(...).feature_density`` on the same tokens, from one
    forward pass per batch instead of the evaluation's four.

    Args:
        model, sae: the hooked model and the SAE.
        tokens: LongTensor ``[n_seq, pos]``.
        batch_size: rows per forward pass.
        exclude_bos: leave out BOS positions.

    Raises:
        As :func:`feature_act_stats`.
    """
    return _counted(
        feature_stats(model, sae, tokens, batch_size=batch_size, exclude_bos=exclude_bos)
    ).frequency


class FeatureScan(NamedTuple):
    """What one streaming pass over tokens found (see :func:`scan_features`)."""

    examples: dict[int, pd.DataFrame]
    """Per requested feature, its top activating examples (as
    :func:`top_activating_examples` returns them)."""
    density: Tensor
    """``[d_sae]`` float32: fraction of counted positions (not BOS by default, last
    positions included) on which each latent fires (activation ``> 0``)."""
    n_tokens: int
    """Positions counted (BOS positions excluded by default)."""


def scan_features(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    features: FeatureSpec,
    k: int = 20,
    context: int = 10,
    batch_size: int = 8,
    exclude_bos: bool = True,
) -> FeatureScan:
    """Top activating examples of several features and every latent's density, in one pass.

    :func:`feature_stats` with ``features``; see there for the streaming merge.

    Args:
        model: a hooked model with a tokenizer.
        sae: the SAE (on the model's device).
        tokens: LongTensor ``[n_seq, pos]``, at most the model's ``n_ctx`` long.
        features: distinct latent ids to collect examples for (ints, a NumPy array or
            an integer tensor).
        k: examples per feature (fewer if it fires on fewer tokens), >= 1.
        context: tokens shown on each side of an example token, >= 0.
        batch_size: rows per forward pass, >= 1.
        exclude_bos: never pick, nor count, BOS positions.

    Returns:
        :class:`FeatureScan`; ``density`` is the firing frequency of
        :func:`feature_density`.

    Raises:
        As :func:`feature_stats`; also no ids at all.
    """
    if features is None:
        features = []  # refused below: pass at least one latent id
    result = feature_stats(model, sae, tokens, features, k, context, batch_size, exclude_bos)
    return FeatureScan(result.examples, result.frequency, result.n_tokens)


def top_activating_examples(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    feature: int,
    k: int = 20,
    context: int = 10,
    batch_size: int = 8,
    exclude_bos: bool = True,
) -> pd.DataFrame:
    """The ``k`` tokens where ``feature`` fires most, with their context.

    One streaming pass over ``tokens`` with a running top-k merge (see
    :func:`feature_stats`; :func:`scan_features` does several features at once).

    Args:
        model: a hooked model with a tokenizer.
        sae: the SAE.
        tokens: LongTensor ``[n_seq, pos]``.
        feature: the latent id (one int).
        k: number of examples (fewer if the feature fires on fewer tokens).
        context: tokens shown on each side of the example token.
        batch_size: rows per forward pass.
        exclude_bos: never pick BOS positions.

    Returns:
        DataFrame, one row per example, highest activation first: ``activation``,
        ``sequence``, ``position``, ``token``, ``token_id``, ``context`` (one line, the
        token marked ``«…»``, newlines shown as ``⏎``), ``context_tokens`` and
        ``context_acts`` (lists over the window, for highlighting), ``context_start``
        (position of the window's first token). ``.attrs`` holds ``feature``,
        ``frequency`` (fraction of counted positions -- not BOS by default, last
        positions included -- where it fires, as :func:`feature_density`),
        ``n_tokens`` and ``max_activation``.

    Raises:
        InputTypeError, InputError: as :func:`scan_features`; also a list of ids.
    """
    f = check_feature(check_sae(sae), feature)
    return scan_features(model, sae, tokens, [f], k, context, batch_size, exclude_bos).examples[f]


def feature_density_histogram(
    density: Tensor | Sequence[float],
    path: str | Path,
    bins: int = 50,
    highlight: int | None = None,
    title: str | None = None,
) -> Path:
    """Write a histogram of ``log10(feature density)`` as a PNG.

    The plot of the SAE literature (Bricken et al. 2023, "Towards Monosemanticity"):
    dead latents (density 0) cannot be placed on a log scale and are counted in the
    title instead.

    Args:
        density: ``[d_sae]`` firing frequencies in [0, 1] (see :func:`feature_density`).
        path: where to write the PNG (parent folders are created).
        bins: histogram bins.
        highlight: a feature index to mark with a vertical line.
        title: plot title (default: the counts).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'saehooks[plots]'``).
        InputTypeError, InputError: ``density`` not finite numbers, ``bins`` not an
            int >= 1, ``highlight`` not an int.
    """
    density = checks.check_finite_tensor(
        torch.as_tensor(density).detach().float().cpu().flatten(), "density"
    )
    bins = checks.check_positive_int(bins, "bins")
    if highlight is not None:
        highlight = checks.check_int(highlight, "highlight")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "feature_density_histogram needs matplotlib: pip install 'saehooks[plots]'"
        ) from exc
    alive = density[density > 0]
    dead = int((density <= 0).sum())
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if alive.numel():
        ax.hist(alive.log10().numpy(), bins=bins, color="#4878a8")
    if highlight is not None and 0 <= highlight < density.shape[0] and density[highlight] > 0:
        ax.axvline(
            float(density[highlight].log10()),
            color="#c0392b",
            linewidth=2,
            label=f"feature {highlight}",
        )
        ax.legend()
    ax.set_xlabel("log10(feature density)")
    ax.set_ylabel("features")
    ax.set_title(title or f"{density.shape[0]} features; {dead} never fire (not shown)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
