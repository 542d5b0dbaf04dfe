"""Splice a shipped SAE into the reference model and measure what it costs.

    python demos/measure_loss_increase.py [--sae NAME] [--n-seq 32]

Prints the EvalReport (clean vs spliced next-token loss, CE score against zero and
mean ablation, KL to the clean logits, FVU beside a PCA baseline, L0, dead latents)
and the tokens whose loss rises most when the SAE replaces the residual stream.
"""

from __future__ import annotations

import argparse

import saehooks as sh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", default="topk-k32-blocks.2.hook_resid_post")
    parser.add_argument("--n-seq", type=int, default=32)
    args = parser.parse_args(argv)

    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.n_seq)
    sae = sh.load_sae(args.sae)

    report = sh.evaluate(model, sae, tokens, batch_size=16)
    print(report)
    print(
        f"\nsplicing {args.sae} costs {report.ce_loss_increase:+.4f} nats/token "
        f"and recovers {report.ce_loss_score:.1%} of the zero-ablation gap "
        f"({report.ce_loss_score_mean_ablation:.1%} of the mean-ablation gap)"
    )

    table = sh.loss_increase_per_token(model, sae, tokens[:8], progress=False)
    worst = table.nlargest(8, "delta")
    print("\ntokens whose loss rises most:")
    for row in worst.itertuples():
        context = model.to_string(tokens[row.sequence, max(1, row.position - 12) : row.position])
        print(f"  {row.delta:+.3f} nats  {context!r} -> {row.token!r}")


if __name__ == "__main__":
    main()
