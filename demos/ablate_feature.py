"""Zero-ablate one SAE feature in the reference model and measure what it did.

    python demos/ablate_feature.py [--feature N] [--sae NAME] [--n-seq 16]

The SAE runs with its error term, so only the chosen feature changes. Prints the
change in next-token loss (over all tokens and where the feature fires), the KL from
the clean predictions, the tokens whose loss rises most, and how well the cheap
attribution estimate (activation x gradient, one backward pass) ranks features
against exact ablation.
"""

from __future__ import annotations

import argparse

import saehooks as sh
from saehooks.analysis.attribution import (
    attribution_check,
    feature_ablation_effects,
    feature_attribution,
)

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
DEFAULT_FEATURE = 2121  # block-opening colon; see pretrained/saes/FEATURES.md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", type=int, default=DEFAULT_FEATURE)
    parser.add_argument("--sae", default=DEFAULT_SAE)
    parser.add_argument(
        "--n-seq", type=int, default=8, help="held-out rows, spread over the held-out files"
    )
    args = parser.parse_args(argv)

    model = sh.load_model()
    rows = sh.load_eval_tokens()
    tokens = rows[:: len(rows) // args.n_seq][: args.n_seq]
    sae = sh.load_sae(args.sae)
    f = args.feature

    table = feature_ablation_effects(model, sae, tokens, [f], n_top=5)
    row = table.loc[f]
    print(
        f"zero-ablating feature {f} of {args.sae} (error term kept), "
        f"{int((tokens != 0).sum()):,} held-out tokens:"
    )
    print(
        f"  fires on {row.frequency:.2%} of tokens "
        f"(mean activation {row.mean_act_when_firing:.2f} where it fires)"
    )
    print(
        f"  loss change: {row.loss_change:+.5f} nats/token over all tokens, "
        f"{row.loss_change_when_firing:+.4f} where it fires"
    )
    print(f"  mean KL(clean || ablated): {row.kl:.5f} nats")
    print("  largest single-token effects (loss change of the next-token prediction):")
    for seq, pos, delta in row.top_token_effects:
        before = model.to_string(tokens[seq, max(1, pos - 12) : pos + 1])
        after = model.to_string(tokens[seq, pos + 1 : pos + 2])
        print(f"    {delta:+.3f} nats  {before!r} -> {after!r}")

    few = tokens[:2]
    attribution = feature_attribution(model, sae, few)
    check = attribution_check(model, sae, few, top=6, attribution=attribution)
    print(
        "\nattribution (activation x gradient) vs exact zero-ablation, top 6 features "
        f"on {int((few != 0).sum()):,} tokens (nats/token):"
    )
    print(check.table.to_string(float_format=lambda x: f"{x:+.5f}"))
    print(
        f"rank agreement (Spearman): {check.spearman:+.2f}; same sign: {check.sign_agreement:.0%}"
    )
    print(
        f"feature {f} ranks #{list(attribution.index).index(f) + 1} of {sae.cfg.d_sae} by "
        f"|attribution| on these tokens"
    )


if __name__ == "__main__":
    main()
