"""Look at SAE features of the reference model: top examples and logit effects.

    python demos/inspect_feature.py [--feature N ...] [--sae NAME] [--html-dir DIR]

For each feature (by default the ones documented in pretrained/saes/FEATURES.md)
prints the held-out tokens where it fires most, with context (the token marked
«like this», newlines as ⏎), and the tokens its decoder direction promotes and
suppresses through the unembedding. With --html-dir, also writes one offline HTML
page per feature and the density histogram of all features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import saehooks as sh
from saehooks.cli_features import print_examples, print_logit_effects
from saehooks.features import (
    feature_density,
    feature_density_histogram,
    feature_logit_effects,
    top_activating_examples,
)
from saehooks.features_html import feature_html

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
DEFAULT_FEATURES = {0: "?"}  # see pretrained/saes/FEATURES.md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", type=int, nargs="+", default=list(DEFAULT_FEATURES))
    parser.add_argument("--sae", default=DEFAULT_SAE)
    parser.add_argument("--n-seq", type=int, default=48)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--html-dir", default=None)
    args = parser.parse_args(argv)

    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.n_seq)
    sae = sh.load_sae(args.sae)
    for f in args.feature:
        label = DEFAULT_FEATURES.get(f)
        print(f"\n=== feature {f}" + (f": {label}" if label else "") + " ===")
        print_examples(top_activating_examples(model, sae, tokens, f, k=args.k, context=12,
                                               batch_size=16))
        print("logit effects (direct path):")
        print_logit_effects(feature_logit_effects(model, sae, f, k=6))
    if args.html_dir:
        out = Path(args.html_dir)
        density = feature_density(model, sae, tokens, batch_size=16)
        print(f"\n{int((density == 0).sum())} of {sae.cfg.d_sae} features never fire on these "
              f"tokens; histogram: {feature_density_histogram(density, out / 'density.png')}")
        for f in args.feature:
            page = feature_html(model, sae, tokens, f, out / f"feature_{f}.html", k=12,
                                density=density, batch_size=16)
            print(f"wrote {page}")


if __name__ == "__main__":
    main()
