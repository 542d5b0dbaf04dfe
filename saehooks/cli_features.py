"""Command-line commands for features: ``inspect``, ``ablate``, ``steer``.

``add_commands(subparsers)`` registers them on the ``saehooks`` argparse parser; each
sets ``func`` to its handler, which takes the parsed arguments (and, for tests and
scripts, an already loaded model) and returns an exit code.

    saehooks inspect --feature 123 [--sae NAME] [--html out.html]
    saehooks ablate --feature 123 [--sae NAME]
    saehooks steer --feature 123 --coefficient 8 --prompt "def " [--sae NAME]
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd
from torch import nn

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
"""The shipped SAE the commands use unless ``--sae`` names another (or a folder)."""


def _common(parser: argparse.ArgumentParser, n_seq: int) -> None:
    parser.add_argument("--sae", default=DEFAULT_SAE,
                        help=f"shipped SAE name or SAE folder (default: {DEFAULT_SAE})")
    parser.add_argument("--model", default=None,
                        help="model directory or name (default: the shipped reference LM)")
    parser.add_argument("--n-seq", type=int, default=n_seq,
                        help=f"held-out rows of 256 tokens, spread over the held-out files "
                        f"(default: {n_seq})")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")


def add_commands(subparsers: Any) -> None:
    """Register ``inspect``, ``ablate`` and ``steer`` on an argparse subparsers object."""
    p = subparsers.add_parser("inspect", help="top activating examples and logit effects of a "
                              "feature", description="Print a feature's top activating "
                              "examples and logit effects; --html writes an offline page.")
    p.add_argument("--feature", type=int, required=True, help="feature index")
    p.add_argument("--k", type=int, default=20, help="number of examples (default: 20)")
    p.add_argument("--context", type=int, default=10, help="tokens of context either side")
    p.add_argument("--html", default=None, help="also write a self-contained HTML page here")
    _common(p, n_seq=32)
    p.set_defaults(func=inspect_command)

    p = subparsers.add_parser("ablate", help="loss change from zero-ablating features",
                              description="Zero-ablate each feature (error term kept) and "
                              "print the change in next-token loss and the KL (nats).")
    p.add_argument("--feature", type=int, nargs="+", required=True, help="feature index(es)")
    _common(p, n_seq=16)
    p.set_defaults(func=ablate_command)

    p = subparsers.add_parser("steer", help="generate with and without steering along a "
                              "feature", description="Greedy continuations of a prompt, "
                              "clean and steered along the feature's decoder direction.")
    p.add_argument("--feature", type=int, required=True, help="feature index")
    p.add_argument("--coefficient", type=float, required=True,
                   help="norm of the added vector (or a multiple of the feature's maximum "
                   "activation with --relative)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--relative", action="store_true",
                   help="coefficient relative to the feature's maximum activation")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate")
    _common(p, n_seq=16)
    p.set_defaults(func=steer_command)


def _load(args: argparse.Namespace, model: nn.Module | None):
    import saehooks as sh
    from saehooks.reference import load_eval_tokens

    model = sh.load_model(args.model) if model is None else model
    sae = sh.load_sae(args.sae).to(str(next(model.parameters()).device))
    rows = load_eval_tokens()
    tokens = rows[::max(1, len(rows) // args.n_seq)][:args.n_seq] if args.n_seq > 0 else None
    return model, sae, tokens


def print_examples(examples: pd.DataFrame) -> None:
    """Print top activating examples, one line each."""
    a = examples.attrs
    print(f"feature {a.get('feature')}: fires on {100 * a.get('frequency', 0):.3f}% of "
          f"{a.get('n_tokens', 0):,} tokens, max activation {a.get('max_activation', 0):.3f}")
    if examples.empty:
        print("  (never fires on these tokens)")
    for ex in examples.itertuples():
        print(f"  {ex.activation:8.3f}  seq {ex.sequence:4d} pos {ex.position:3d}  {ex.context}")


def print_logit_effects(effects: pd.DataFrame) -> None:
    """Print promoted and suppressed tokens side by side."""
    print(f"  {'promoted':>20} {'logit':>7}   {'suppressed':>20} {'logit':>7}")
    for r in effects.itertuples():
        print(f"  {r.promoted!r:>20} {r.promoted_effect:+7.3f}   "
              f"{r.suppressed!r:>20} {r.suppressed_effect:+7.3f}")


def inspect_command(args: argparse.Namespace, model: nn.Module | None = None) -> int:
    """``saehooks inspect``: print examples and logit effects; optionally write HTML."""
    from saehooks.features import feature_logit_effects, scan_features
    from saehooks.features_html import feature_html

    model, sae, tokens = _load(args, model)
    scan = scan_features(model, sae, tokens, [args.feature], k=args.k, context=args.context,
                         batch_size=args.batch_size)
    examples = scan.examples[args.feature]
    print(f"SAE {args.sae} at {sae.cfg.hook_name}")
    print_examples(examples)
    print("logit effects (direct path):")
    print_logit_effects(feature_logit_effects(model, sae, args.feature, k=10))
    if args.html:
        path = feature_html(model, sae, tokens, args.feature, args.html,
                            density=scan.density, examples=examples)
        print(f"wrote {path}")
    return 0


def ablate_command(args: argparse.Namespace, model: nn.Module | None = None) -> int:
    """``saehooks ablate``: print the loss change and KL of zero-ablating each feature."""
    from saehooks.effects import feature_ablation_effects

    model, sae, tokens = _load(args, model)
    table = feature_ablation_effects(model, sae, tokens, args.feature,
                                     batch_size=args.batch_size)
    print(f"SAE {args.sae} at {sae.cfg.hook_name}; zero ablation with the error term kept, "
          f"{args.n_seq} held-out rows; losses in nats/token")
    with pd.option_context("display.width", 120, "display.max_colwidth", 60):
        print(table.to_string(float_format=lambda x: f"{x:.5f}"))
    return 0


def steer_command(args: argparse.Namespace, model: nn.Module | None = None) -> int:
    """``saehooks steer``: print clean and steered greedy continuations of a prompt."""
    from saehooks.interventions import steer

    model, sae, tokens = _load(args, model)
    prompt = model.to_tokens(args.prompt)
    # uncached: the same tokens (load_model repairs the bridge's KV cache), and no
    # transformers deprecation warning about past_key_values in the output
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "stop_at_eos": False,
              "verbose": False, "use_past_kv_cache": False}
    n = prompt.shape[1]
    clean = model.generate(prompt, **kwargs)
    mode = "relative" if args.relative else "absolute"
    with steer(model, sae, args.feature, args.coefficient, coefficient_mode=mode,
               tokens=tokens):
        steered = model.generate(prompt, **kwargs)
    print(f"SAE {args.sae} at {sae.cfg.hook_name}; feature {args.feature}, coefficient "
          f"{args.coefficient} ({mode})")
    print("prompt:\n" + args.prompt)
    print("--- clean continuation ---\n" + model.tokenizer.decode(clean[0, n:]))
    print("--- steered continuation ---\n" + model.tokenizer.decode(steered[0, n:]))
    return 0
