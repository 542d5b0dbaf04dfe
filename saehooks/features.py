"""Look at what a feature is: top activating examples, logit effects, density plots.

* :func:`top_activating_examples` -- the tokens where a feature fires most, with
  context, from one streaming pass (a running top-k merge, memory flat in the data);
* :func:`feature_logit_effects` -- the tokens its decoder direction promotes and
  suppresses through the unembedding (the direct path);
* :func:`feature_density` / :func:`feature_density_histogram` -- how often features
  fire, plotted on a log10 scale as in Bricken et al. 2023, "Towards
  Monosemanticity" (Anthropic).

The HTML page for one feature is in :mod:`saehooks.features_html`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks.feature_utils import (
    check_features,
    check_tokens,
    decoder_vector,
    iter_batches,
    position_mask,
    sae_acts,
)
from saehooks.interventions import feature_act_stats
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


@torch.no_grad()
def top_activating_examples(model: nn.Module, sae: SAE, tokens: Tensor, feature: int,
                            k: int = 20, context: int = 10, batch_size: int = 8,
                            exclude_bos: bool = True) -> pd.DataFrame:
    """The ``k`` tokens where ``feature`` fires most, with their context.

    One streaming pass over ``tokens``: each batch's activations are merged into a
    running top-k (ties go to the earlier sequence and position), so the result
    equals sorting all activations at once while memory stays flat.

    Args:
        model: a hooked model with a tokenizer.
        sae: the SAE.
        tokens: LongTensor ``[n_seq, pos]``.
        feature: the feature index.
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
        IndexError: a feature index outside ``0 … d_sae - 1``.
    """
    tokens = check_tokens(tokens)
    (f,) = check_features(sae, [feature])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    best_vals = torch.empty(0)
    best: list[tuple[int, int, Tensor]] = []  # (sequence, position, window activations)
    fired = n_tokens = 0
    for start, batch in iter_batches(tokens, batch_size, model_device(model)):
        keep = position_mask(model, batch, exclude_bos).cpu()
        acts = sae_acts(model, sae, batch)[..., f].float().cpu()  # [b, pos]
        acts = torch.where(keep, acts, torch.zeros_like(acts))
        fired += int((acts > 0).sum())
        n_tokens += int(keep.sum())
        flat = acts.flatten()
        idx = (flat > 0).nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        vals = flat[idx]
        merged = torch.cat([best_vals, vals])
        order = torch.sort(-merged, stable=True).indices[:k]
        new_best = []
        for i in order.tolist():
            if i < len(best):
                new_best.append(best[i])
                continue
            j = int(idx[i - len(best)])
            row, pos = divmod(j, acts.shape[1])
            lo, hi = max(0, pos - context), min(acts.shape[1], pos + context + 1)
            new_best.append((start + row, pos, acts[row, lo:hi].clone()))
        best, best_vals = new_best, merged[order]
    rows = []
    for val, (seq, pos, window) in zip(best_vals.tolist(), best):
        lo = max(0, pos - context)
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
    columns = ["activation", "sequence", "position", "token", "token_id", "context",
               "context_tokens", "context_acts", "context_start"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs.update(feature=f, frequency=fired / max(n_tokens, 1), n_tokens=n_tokens,
                       max_activation=float(best_vals[0]) if len(best) else 0.0)
    return frame


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
        feature: the feature index.
        k: tokens per side.

    Returns:
        DataFrame with ``k`` rows (rank 1 = strongest): ``promoted``,
        ``promoted_effect``, ``promoted_id``, ``suppressed``, ``suppressed_effect``,
        ``suppressed_id``; effects are logit changes per unit of activation.

    Raises:
        IndexError: a feature index outside ``0 … d_sae - 1``.
        ValueError: the SAE's width is not the model's ``d_model``.
    """
    (f,) = check_features(sae, [feature])
    W_U = model.W_U
    if sae.cfg.d_in != W_U.shape[0]:
        raise ValueError(f"logit effects need an SAE on the residual stream (d_in = d_model = "
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

    Args:
        model, sae: the hooked model and the SAE.
        tokens: LongTensor ``[n_seq, pos]``.
        batch_size: rows per forward pass.
        exclude_bos: leave out BOS positions.
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
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("feature_density_histogram needs matplotlib: "
                          "pip install 'saehooks[plots]'") from exc
    density = torch.as_tensor(density).detach().float().cpu().flatten()
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
