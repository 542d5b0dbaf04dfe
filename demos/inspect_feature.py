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
from saehooks.analysis.html import feature_html
from saehooks.analysis.logits import feature_logit_effects
from saehooks.analysis.stats import feature_density_histogram, scan_features
from saehooks.cli.cmd_inspect import print_examples, print_logit_effects

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
DEFAULT_FEATURES = {  # see pretrained/saes/FEATURES.md (found by pretrained/saes/find_features.py)
    3516: "the words of a # comment",
    3955: "inside a string literal (messages)",
    2121: "a block-opening ':' at indentation 12 (predicts the deeper indent)",
    3511: "the '__' of a dunder method name after def",
    916: "the module name on an import line",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", type=int, nargs="+", default=list(DEFAULT_FEATURES))
    parser.add_argument("--sae", default=DEFAULT_SAE)
    parser.add_argument(
        "--stride",
        type=int,
        default=32,
        help="use every STRIDE-th held-out row (rows span all 49 held-out files)",
    )
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--html-dir", default=None)
    args = parser.parse_args(argv)

    model = sh.load_model()
    tokens = sh.load_eval_tokens()[:: args.stride]
    sae = sh.load_sae(args.sae)
    scan = scan_features(
        model, sae, tokens, args.feature, k=args.k, context=12, batch_size=16
    )  # one pass: examples of every feature + densities
    for f in args.feature:
        label = DEFAULT_FEATURES.get(f)
        print(f"\n=== feature {f}" + (f": {label}" if label else "") + " ===")
        print_examples(scan.examples[f])
        print("logit effects (direct path):")
        print_logit_effects(feature_logit_effects(model, sae, f, k=6))
    if args.html_dir:
        out = Path(args.html_dir)
        dead = int((scan.density == 0).sum())
        png = feature_density_histogram(scan.density, out / "density.png")
        print(
            f"\n{dead} of {sae.cfg.d_sae} features never fire on these tokens; "
            f"density histogram: {png}"
        )
        for f in args.feature:
            page = feature_html(
                model,
                sae,
                tokens,
                f,
                out / f"feature_{f}.html",
                density=scan.density,
                examples=scan.examples[f],
            )
            print(f"wrote {page}")


if __name__ == "__main__":
    main()
