"""``saehooks inspect``: a feature's top activating examples and logit effects."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from saehooks.cli.common import ModelOptions, held_out_rows, load, set_threads

NAME = "inspect"
HELP = "top activating examples and logit effects of a feature"


@dataclass(kw_only=True)
class Options(ModelOptions):
    feature: int
    """feature index"""
    k: int = 20
    """number of examples"""
    context: int = 10
    """tokens of context either side"""
    html: str | None = None
    """also write a self-contained HTML page here"""
    n_seq: int = 32
    """held-out rows of 256 tokens, spread over the held-out set"""


def print_examples(examples: pd.DataFrame) -> None:
    """Print top activating examples, one line each."""
    a = examples.attrs
    print(
        f"feature {a.get('feature')}: fires on {100 * a.get('frequency', 0):.3f}% of "
        f"{a.get('n_tokens', 0):,} tokens, max activation {a.get('max_activation', 0):.3f}"
    )
    if examples.empty:
        print("  (never fires on these tokens)")
    for ex in examples.itertuples():
        print(f"  {ex.activation:8.3f}  seq {ex.sequence:4d} pos {ex.position:3d}  {ex.context}")


def print_logit_effects(effects: pd.DataFrame) -> None:
    """Print promoted and suppressed tokens side by side."""
    print(f"  {'promoted':>20} {'logit':>7}   {'suppressed':>20} {'logit':>7}")
    for r in effects.itertuples():
        print(
            f"  {r.promoted!r:>20} {r.promoted_effect:+7.3f}   "
            f"{r.suppressed!r:>20} {r.suppressed_effect:+7.3f}"
        )


def run(options: Options, model=None) -> int:
    import saehooks as sh
    from saehooks.analysis.html import feature_html

    set_threads(options.threads)
    model, sae = load(options, model)
    tokens = held_out_rows(options.n_seq)
    scan = sh.scan_features(
        model,
        sae,
        tokens,
        [options.feature],
        k=options.k,
        context=options.context,
        batch_size=options.batch_size,
    )
    examples = scan.examples[options.feature]
    print(f"SAE {options.sae} at {sae.cfg.hook_name}")
    print_examples(examples)
    if sae.linear_decoder:
        print("logit effects (direct path):")
        print_logit_effects(sh.feature_logit_effects(model, sae, options.feature, k=10))
    else:
        print(f"logit effects: none (an {sae.cfg.architecture} SAE's decoder has no directions)")
    if options.html:
        path = feature_html(
            model,
            sae,
            tokens,
            options.feature,
            options.html,
            density=scan.density,
            examples=examples,
        )
        print(f"wrote {path}")
    return 0
