"""The ``saehooks`` command line: demo, eval, train, inspect, ablate, steer.

Each command's flags: ``saehooks COMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from saehooks.errors import SAEHooksError

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"


def _tokens_for(model, args) -> torch.Tensor:  # noqa: F821
    """Evaluation tokens: a text file tokenized by the model, or the shipped held-out set."""
    import torch

    import saehooks as sh

    n_ctx = min(int(model.cfg.n_ctx), args.n_ctx)
    if args.text_file:
        ids = model.to_tokens(Path(args.text_file).read_text(), prepend_bos=False)[0]
        body = n_ctx - 1
        n = ids.numel() // body
        if n == 0:
            raise SystemExit(f"{args.text_file}: fewer than {body} tokens; give a longer text")
        bos = torch.full((n, 1), model.tokenizer.bos_token_id, dtype=torch.long)
        tokens = torch.cat([bos, ids[: n * body].view(n, body).cpu()], dim=1)
    else:
        tokens = sh.load_eval_tokens()[:, :n_ctx]
    n_seq = max(1, -(-args.n_tokens // tokens.shape[1])) if args.n_tokens else len(tokens)
    return tokens[:n_seq]


def cmd_eval(args: argparse.Namespace) -> int:
    import saehooks as sh
    from saehooks.evaluation import evaluate

    sae = sh.load_sae(args.sae)  # a bad name fails before the model loads
    model = sh.load_model(args.model)
    tokens = _tokens_for(model, args)
    report = evaluate(model, sae, tokens, batch_size=args.batch_size,
                      exclude_bos=not args.include_bos)
    if args.json:
        out = report.to_dict()
        if not args.density:
            out.pop("feature_density")
        print(json.dumps(out, indent=2))
    else:
        print(f"SAE {args.sae} ({sae.cfg.architecture}, d_sae {sae.cfg.d_sae}) on "
              f"{tokens.shape[0]} x {tokens.shape[1]} tokens")
        print(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: splice a shipped SAE into the reference model and measure the cost."""
    import saehooks as sh
    from saehooks.evaluation import evaluate, loss_increase_per_token
    from saehooks.reference import model_card, pretrained_sae_dir

    t0 = time.time()
    card = model_card()
    print(f"reference model: {card['architecture']['n_layer']} layers, d_model "
          f"{card['architecture']['d_model']}, trained on the CPython "
          f"{card['corpus']['python_version']} standard library; CE on all held-out tokens "
          f"{card['eval']['held_out_ce_nats_per_token']} nats/token "
          f"({card['eval']['held_out_bits_per_byte']} bits/byte; unigram "
          f"{card['eval']['unigram_baseline_nats_per_token']})")
    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.n_seq)
    if not (pretrained_sae_dir() / args.sae).is_dir() and not Path(args.sae).is_dir():
        import torch

        from saehooks.metrics import next_token_ce

        with torch.no_grad():
            ce = next_token_ce(model(tokens), tokens).mean().item()
        print(f"no SAE {args.sae!r} shipped yet; model CE on {tokens.numel():,} held-out "
              f"tokens: {ce:.4f} nats/token")
        return 0
    sae = sh.load_sae(args.sae)
    print(f"SAE {args.sae}: {sae.cfg.architecture} k={sae.cfg.k} d_sae={sae.cfg.d_sae} at "
          f"{sae.cfg.hook_name}\n")
    report = evaluate(model, sae, tokens, batch_size=args.batch_size)
    print(report)
    print(f"(on the first {tokens.shape[0]} held-out rows, {report.n_tokens:,} tokens; "
          "dead_fraction counts latents silent on these alone. All held-out tokens: "
          "pretrained/saes/README.md, or saehooks eval)")
    print(f"\nsplicing costs {report.ce_loss_increase:+.4f} nats/token; the SAE's FVU "
          f"{report.fvu:.4f} at L0 {report.l0:.1f} vs {report.pca_fvu:.4f} for PCA with "
          f"{report.pca_rank} components")
    table = loss_increase_per_token(model, sae, tokens[: args.top_rows],
                                    batch_size=args.batch_size, progress=False)
    top = table.nlargest(10, "delta")
    print("\nten tokens whose loss rises most (nats):")
    print(top.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ndone in {time.time() - t0:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saehooks", description="Sparse autoencoders hooked into TransformerLens models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="evaluate a shipped SAE on the reference model")
    demo.add_argument("--sae", default=DEFAULT_SAE, help="shipped SAE name or folder")
    demo.add_argument("--n-seq", type=int, default=32, help="held-out rows of 256 tokens")
    demo.add_argument("--top-rows", type=int, default=16,
                      help="rows scanned for the per-token table")
    demo.add_argument("--batch-size", type=int, default=16)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="print an SAE's EvalReport")
    ev.add_argument("--sae", required=True, help="SAE folder or shipped name")
    ev.add_argument("--model", default=None,
                    help="model name or local HF dir (default: the reference model)")
    ev.add_argument("--n-tokens", type=int, default=None, help="tokens to evaluate (rounded "
                    "up to whole rows; default: all held-out tokens)")
    ev.add_argument("--n-ctx", type=int, default=256, help="row length")
    ev.add_argument("--text-file", default=None,
                    help="evaluate on this text (tokenized by the model) instead")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--include-bos", action="store_true", help="splice and count BOS too")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--density", action="store_true", help="with --json: feature density too")
    ev.set_defaults(func=cmd_eval)

    from saehooks.cli_features import add_commands
    from saehooks.training.cli import add_train_arguments, run_train

    train = sub.add_parser("train", help="train an SAE on a model's activations",
                           description="Train an SAE; every flag is a TrainConfig field.")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    add_commands(sub)
    return parser


# Errors that mean "the input was wrong", whose messages already say what to do, are
# printed as one line (set SAEHOOKS_DEBUG=1 for the traceback); any other exception is a
# bug and keeps its traceback.
USER_ERRORS = (SAEHooksError,)


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    if os.environ.get("SAEHOOKS_DEBUG"):
        return args.func(args)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        message = str(exc) or type(exc).__name__
        print(f"saehooks {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
