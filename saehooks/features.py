"""Look at what a feature is: top activating examples, logit effects, density plots.

* :func:`top_activating_examples` -- the tokens where a feature fires most, with
  context, from one streaming pass (a running top-k merge, memory flat in the data);
  :func:`scan_features` does it for several features and measures every latent's
  density in the same pass;
* :func:`feature_logit_effects` -- the tokens its decoder direction promotes and
  suppresses through the unembedding (the direct path);
* :func:`feature_density` / :func:`feature_density_histogram` -- how often features
  fire, plotted on a log10 scale as in Bricken et al. 2023, "Towards
  Monosemanticity" (Anthropic).

The HTML page for one feature is in :mod:`saehooks.features_html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks import checks, hooks
from saehooks.errors import InputError
from saehooks.feature_utils import (
    FeatureCounts,
    FeatureSpec,
    check_feature,
    check_features,
    check_flags,
    check_sae,
    check_saes,
    decoder_vector,
    iter_batches,
    position_mask,
    sae_acts,
)
from saehooks.models import model_device
from saehooks.sae import SAE

NEWLINE_MARK = "⏎"
"""Shown in place of a newline in one-line context strings."""


def token_strings(model: nn.Module, ids: Tensor | list[int]) -> list[str]:
    """Each token id decoded on its own (byte-level pieces may show as ``�``)."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return [model.tokenizer.decode([i]) for i in ids]


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", NEWLINE_MARK)


class _RunningTopK:
    """The ``k`` largest positive activations of one feature seen so far, with windows."""

    def __init__(self, k: int, context: int) -> None:
        self.k, self.context = k, context
        self.values = torch.empty(0)
        self.items: list[tuple[int, int, Tensor]] = []  # (sequence, position, window acts)
        self.fired = 0

    def update(self, start: int, acts: Tensor) -> None:
        """Merge a batch's activations ``[b, pos]`` (zeros where not counted)."""
        self.fired += int((acts > 0).sum())
        flat = acts.flatten()
        idx = (flat > 0).nonzero()[:, 0]
        if idx.numel() == 0:
            return
        merged = torch.cat([self.values, flat[idx]])
        order = torch.sort(-merged, stable=True).indices[:self.k]  # ties: earlier first
        items = []
        for i in order.tolist():
            if i < len(self.items):
                items.append(self.items[i])
                continue
            row, pos = divmod(int(idx[i - len(self.items)]), acts.shape[1])
            lo, hi = max(0, pos - self.context), min(acts.shape[1], pos + self.context + 1)
            items.append((start + row, pos, acts[row, lo:hi].clone()))
        self.items, self.values = items, merged[order]

    def frame(self, model: nn.Module, tokens: Tensor, feature: int,
              n_tokens: int) -> pd.DataFrame:
        rows = []
        for val, (seq, pos, window) in zip(self.values.tolist(), self.items):
            lo = max(0, pos - self.context)
            ids = tokens[seq, lo:lo + window.shape[0]]
            pieces = token_strings(model, ids)
            at = pos - lo
            rows.append({
                "activation": val, "sequence": seq, "position": pos, "token": pieces[at],
                "token_id": int(ids[at]),
                "context": _one_line("".join(pieces[:at]) + "«" + pieces[at] + "»"
                                     + "".join(pieces[at + 1:])),
                "context_tokens": pieces, "context_acts": window.tolist(), "context_start": lo,
            })
        frame = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
        frame.attrs.update(feature=feature, frequency=self.fired / max(n_tokens, 1),
                           n_tokens=n_tokens,
                           max_activation=float(self.values[0]) if self.items else 0.0)
        return frame


EXAMPLE_COLUMNS = ["activation", "sequence", "position", "token", "token_id", "context",
                   "context_tokens", "context_acts", "context_start"]


@torch.no_grad()
@hooks.uses_model
def feature_act_stats(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                      exclude_bos: bool = True) -> dict[str, Tensor]:
    """Per-feature mean, maximum and firing frequency of the SAE's latents on ``tokens``.

    The statistics behind :func:`feature_density`, ``ablate_features(mode="mean")``
    (via :func:`saehooks.mean_feature_acts`) and relative steering.

    Sums in float64 on the CPU (:class:`saehooks.feature_utils.FeatureCounts`), so the
    result does not depend on ``batch_size`` and the model may be on any device.

    Args:
        model: the hooked model.
        sae: the SAE (its ``hook_name`` says where it reads).
        tokens: LongTensor ``[n_seq, pos]``, at most the model's ``n_ctx`` long.
        batch_size: rows per forward pass.
        exclude_bos: leave out positions holding the BOS token.

    Returns:
        ``{"mean": [d_sae], "max": [d_sae], "frequency": [d_sae], "n_tokens": []}`` on
        the CPU; means include the zeros of inactive tokens; frequency is a fraction in
        [0, 1].

    Raises:
        InputTypeError, InputError: a malformed argument (see :mod:`saehooks.checks`),
            or every position holds BOS.
    """
    check_flags(exclude_bos=exclude_bos)
    (sae,) = check_saes(model, check_sae(sae))
    tokens = checks.check_model_tokens(model, tokens)
    counts = FeatureCounts(sae.cfg.d_sae)
    for _, batch in iter_batches(tokens, batch_size, model_device(model)):
        keep = position_mask(model, batch, exclude_bos).to(sae.device)
        counts.add(sae_acts(model, sae, batch)[keep].reshape(-1, sae.cfg.d_sae))
    n = counts.n_tokens
    if n == 0:
        raise InputError("every position holds the BOS token, so there are no activations "
                         "to measure; pass real text tokens or exclude_bos=False")
    return {"mean": (counts.total / n).float(), "max": counts.peak.float(),
            "frequency": counts.frequency().float(), "n_tokens": torch.tensor(n)}


class FeatureScan(NamedTuple):
    """What one streaming pass over tokens found (see :func:`scan_features`)."""

    examples: dict[int, pd.DataFrame]
    """Per requested feature, its top activating examples (as
    :func:`top_activating_examples` returns them)."""
    density: Tensor
    """``[d_sae]``: fraction of counted tokens on which each latent fires."""
    n_tokens: int
    """Tokens counted (BOS positions excluded by default)."""


@torch.no_grad()
@hooks.uses_model
def scan_features(model: nn.Module, sae: SAE, tokens: Tensor, features: FeatureSpec,
                  k: int = 20, context: int = 10, batch_size: int = 8,
                  exclude_bos: bool = True) -> FeatureScan:
    """Top activating examples of several features and every latent's density, in one pass.

    Each batch's activations are merged into a running top-k per feature (ties go to
    the earlier sequence and position), so the result equals sorting all activations
    at once while memory stays flat in the number of tokens.

    The model may be on any device: only the chosen features' activations
    ``[batch, pos, n_features]`` come to the CPU, and the densities are float64 sums
    there (:class:`saehooks.feature_utils.FeatureCounts`).

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
        :class:`FeatureScan`.

    Raises:
        InputTypeError: ids, ``k``, ``context`` or ``batch_size`` that are not integers;
            malformed ``tokens``; ``sae`` not an SAE.
        InputError: an id outside ``0 … d_sae - 1`` or repeated; ``k < 1``,
            ``context < 0``, ``batch_size < 1``; ``tokens`` too long or outside the
            vocabulary.
    """
    check_flags(exclude_bos=exclude_bos)
    (sae,) = check_saes(model, check_sae(sae))
    tokens = checks.check_model_tokens(model, tokens)
    feats = check_features(sae, features)
    k = checks.check_positive_int(k, "k")
    context = checks.check_int(context, "context", minimum=0)
    tops = {f: _RunningTopK(k, context) for f in feats}
    counts = FeatureCounts(sae.cfg.d_sae)
    chosen = torch.tensor(feats, device=sae.device)
    for start, batch in iter_batches(tokens, batch_size, model_device(model)):
        keep = position_mask(model, batch, exclude_bos).to(sae.device)
        acts = sae_acts(model, sae, batch)  # [b, pos, d_sae]
        counts.add(acts[keep].reshape(-1, sae.cfg.d_sae))
        picked = (acts[..., chosen].float() * keep[..., None]).cpu()  # [b, pos, n_features]
        for i, top in enumerate(tops.values()):
            top.update(start, picked[..., i])
    examples = {f: top.frame(model, tokens, f, counts.n_tokens) for f, top in tops.items()}
    return FeatureScan(examples, counts.frequency().float(), counts.n_tokens)


def top_activating_examples(model: nn.Module, sae: SAE, tokens: Tensor, feature: int,
                            k: int = 20, context: int = 10, batch_size: int = 8,
                            exclude_bos: bool = True) -> pd.DataFrame:
    """The ``k`` tokens where ``feature`` fires most, with their context.

    One streaming pass over ``tokens`` with a running top-k merge (see
    :func:`scan_features`, which does several features at once).

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
        ``frequency`` (fraction of tokens where it fires), ``n_tokens`` and
        ``max_activation``.

    Raises:
        InputTypeError, InputError: as :func:`scan_features`; also a list of ids.
    """
    f = check_feature(check_sae(sae), feature)
    scan = scan_features(model, sae, tokens, [f], k, context, batch_size, exclude_bos)
    return scan.examples[f]


@torch.no_grad()
def feature_logit_effects(model: nn.Module, sae: SAE, feature: int, k: int = 10) -> pd.DataFrame:
    """Tokens whose logits the feature's decoder direction raises and lowers most.

    The direct path: ``(d - mean(d)) @ W_U`` with ``d`` the feature's decoder row (the
    centring is what the final LayerNorm does to any added vector; its scale and, in
    models loaded with ``fold_ln``, its weights are folded away). Later layers are
    ignored, so this is most telling for SAEs near the end of the model.

    Args:
        model: a hooked model with ``W_U [d_model, d_vocab]`` and a tokenizer.
        sae: the SAE (``d_in`` must be ``d_model``).
        feature: the latent id (one int).
        k: tokens per side, >= 1 (at most ``d_vocab`` are listed).

    Returns:
        DataFrame with ``k`` rows (rank 1 = strongest): ``promoted``,
        ``promoted_effect``, ``promoted_id``, ``suppressed``, ``suppressed_effect``,
        ``suppressed_id``; effects are logit changes per unit of activation.

    Raises:
        InputTypeError: ``feature`` is not one integer id, ``k`` not an integer.
        InputError: an id outside ``0 … d_sae - 1``; ``k < 1``; the SAE's width is not
            the model's ``d_model``.
    """
    f = check_feature(check_sae(sae), feature)
    k = checks.check_positive_int(k, "k")
    W_U = model.W_U
    if sae.cfg.d_in != W_U.shape[0]:
        raise InputError(f"logit effects need an SAE on the residual stream (d_in = d_model = "
                         f"{W_U.shape[0]}); this SAE has d_in={sae.cfg.d_in}")
    direction = decoder_vector(sae, f).to(device=W_U.device, dtype=W_U.dtype)
    effects = (direction - direction.mean()) @ W_U  # [d_vocab]
    k = min(k, effects.shape[0])
    up = effects.topk(k)
    down = (-effects).topk(k)
    return pd.DataFrame({
        "promoted": token_strings(model, up.indices), "promoted_effect": up.values.tolist(),
        "promoted_id": up.indices.tolist(),
        "suppressed": token_strings(model, down.indices),
        "suppressed_effect": (-down.values).tolist(), "suppressed_id": down.indices.tolist(),
    }, index=pd.RangeIndex(1, k + 1, name="rank"))


def feature_density(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                    exclude_bos: bool = True) -> Tensor:
    """Fraction of tokens on which each latent fires: ``[d_sae]`` in [0, 1].

    The same quantity as ``evaluate(...).feature_density``, without the four forward
    passes per batch that the evaluation needs (one forward here).

    Args:
        model, sae: the hooked model and the SAE.
        tokens: LongTensor ``[n_seq, pos]``.
        batch_size: rows per forward pass.
        exclude_bos: leave out BOS positions.

    Returns:
        ``[d_sae]`` float32 on the CPU.

    Raises:
        As :func:`feature_act_stats`.
    """
    return feature_act_stats(model, sae, tokens, batch_size, exclude_bos)["frequency"]


def feature_density_histogram(density: Tensor, path: str | Path, bins: int = 50,
                              highlight: int | None = None, title: str | None = None) -> Path:
    """Write a histogram of ``log10(feature density)`` as a PNG.

    The plot of the SAE literature (Bricken et al. 2023, "Towards Monosemanticity"):
    dead latents (density 0) cannot be placed on a log scale and are counted in the
    title instead.

    Args:
        density: ``[d_sae]`` firing fractions in [0, 1] (see :func:`feature_density`).
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
        torch.as_tensor(density).detach().float().cpu().flatten(), "density")
    bins = checks.check_positive_int(bins, "bins")
    if highlight is not None:
        highlight = checks.check_int(highlight, "highlight")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("feature_density_histogram needs matplotlib: "
                          "pip install 'saehooks[plots]'") from exc
    alive = density[density > 0]
    dead = int((density <= 0).sum())
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if alive.numel():
        ax.hist(alive.log10().numpy(), bins=bins, color="#4878a8")
    if highlight is not None and 0 <= highlight < density.shape[0] and density[highlight] > 0:
        ax.axvline(float(density[highlight].log10()), color="#c0392b", linewidth=2,
                   label=f"feature {highlight}")
        ax.legend()
    ax.set_xlabel("log10(feature density)")
    ax.set_ylabel("features")
    ax.set_title(title or f"{density.shape[0]} features; {dead} never fire (not shown)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
