"""A self-contained HTML page for one feature: examples, logit effects, density.

The page has no scripts and no external resources (styles inline, the density plot
embedded as a base64 PNG), so it opens offline in any browser. The layout follows
the feature dashboards of Bricken et al. 2023, "Towards Monosemanticity" (Anthropic).
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks.analysis.logits import feature_logit_effects
from saehooks.analysis.stats import (
    NEWLINE_MARK,
    feature_density_histogram,
    top_activating_examples,
)
from saehooks.data import check_feature, check_sae
from saehooks.sae import SAE

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eee; }
.ex { font-family: ui-monospace, monospace; white-space: pre; }
.tok { border-radius: 2px; }
.hit { outline: 2px solid #c0392b; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #888; }
"""


def _token_span(piece: str, act: float, peak: float, hit: bool) -> str:
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, act / peak))
    text = html.escape(piece.replace("\n", NEWLINE_MARK))
    cls = "tok hit" if hit else "tok"
    return (
        f'<span class="{cls}" style="background: rgba(255, 140, 0, {alpha:.2f})" '
        f'title="activation {act:.3f}">{text}</span>'
    )


def _examples_html(examples: pd.DataFrame) -> str:
    if examples.empty:
        return '<p class="muted">The feature never fires on these tokens.</p>'
    peak = float(examples["activation"].max())
    rows = []
    for ex in examples.itertuples():
        at = ex.position - ex.context_start
        spans = "".join(
            _token_span(p, a, peak, i == at)
            for i, (p, a) in enumerate(zip(ex.context_tokens, ex.context_acts))
        )
        rows.append(
            f'<tr><td class="num">{ex.activation:.3f}</td>'
            f'<td class="muted">{ex.sequence}:{ex.position}</td>'
            f'<td class="ex">{spans}</td></tr>'
        )
    return (
        "<table><tr><th>activation</th><th>seq:pos</th><th>context</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _logits_html(effects: pd.DataFrame) -> str:
    rows = "".join(
        f'<tr><td class="ex">{html.escape(repr(r.promoted))}</td>'
        f'<td class="num">{r.promoted_effect:+.3f}</td>'
        f'<td class="ex">{html.escape(repr(r.suppressed))}</td>'
        f'<td class="num">{r.suppressed_effect:+.3f}</td></tr>'
        for r in effects.itertuples()
    )
    return (
        "<table><tr><th>promoted</th><th>logit</th><th>suppressed</th><th>logit</th></tr>"
        + rows
        + "</table>"
    )


def _density_html(density: Tensor | None, feature: int) -> str:
    if density is None:
        return ""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            png = feature_density_histogram(density, Path(tmp) / "density.png", highlight=feature)
            data = base64.b64encode(png.read_bytes()).decode("ascii")
    except ImportError:
        return '<p class="muted">(install matplotlib for the density plot)</p>'
    return (
        f'<img alt="feature density histogram" src="data:image/png;base64,{data}">'
        '<p class="muted">Density of all features (log10 fraction of tokens); the red '
        "line marks this one.</p>"
    )


def feature_html(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    feature: int,
    path: str | Path,
    k: int = 20,
    context: int = 10,
    n_logits: int = 10,
    density: Tensor | None = None,
    batch_size: int = 8,
    title: str | None = None,
    examples: pd.DataFrame | None = None,
) -> Path:
    """Write an offline HTML page describing one feature.

    Args:
        model: a hooked model with a tokenizer.
        sae: the SAE.
        tokens: LongTensor ``[n_seq, pos]`` to find examples in.
        feature: the latent id (one int).
        path: the ``.html`` file to write (parent folders are created).
        k: number of top activating examples.
        context: tokens of context either side of each example.
        n_logits: promoted / suppressed tokens listed.
        density: ``[d_sae]`` densities of all features (e.g. :func:`feature_density`)
            for the histogram; None leaves the plot out.
        batch_size: rows per forward pass.
        title: page heading (default names the feature and the SAE's hook).
        examples: precomputed :func:`top_activating_examples` (or
            :func:`scan_features`) for this feature; None computes them from ``tokens``.

    Returns:
        The path written.

    Raises:
        InputTypeError: ``feature`` is not one integer id; see also
            :func:`~saehooks.analysis.stats.top_activating_examples`.
        InputError: an id outside ``0 … d_sae - 1``; see also
            :func:`~saehooks.analysis.stats.top_activating_examples` and
            :func:`~saehooks.analysis.logits.feature_logit_effects`.
    """
    feature = check_feature(check_sae(sae), feature)
    if examples is None:
        examples = top_activating_examples(
            model, sae, tokens, feature, k=k, context=context, batch_size=batch_size
        )
    if sae.linear_decoder:
        logits_part = _logits_html(feature_logit_effects(model, sae, feature, k=n_logits))
    else:  # a non-linear decoder has no direction to read logit effects from
        logits_part = (
            '<p class="muted">none: this SAE\'s decoder is not a dictionary of directions '
            f"({html.escape(sae.cfg.architecture)})</p>"
        )
    freq = examples.attrs["frequency"]
    heading = title or f"Feature {feature} of the SAE at {sae.cfg.hook_name}"
    if density is not None:
        density = torch.as_tensor(density)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(heading)}</h1>
<p>{html.escape(repr(sae))}<br>
fires on {100 * freq:.3f}% of {examples.attrs["n_tokens"]:,} tokens; maximum activation
{examples.attrs["max_activation"]:.3f}</p>
<h2>Top activating examples</h2>
<p class="muted">Each token shaded by this feature's activation (hover for the value); the
example token is outlined; {NEWLINE_MARK} is a newline.</p>
{_examples_html(examples)}
<h2>Logit effects (direct path through the unembedding)</h2>
{logits_part}
<h2>Density</h2>
{_density_html(density, feature)}
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
