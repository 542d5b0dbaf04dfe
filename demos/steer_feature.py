"""Steer the reference model along one SAE feature's decoder direction.

    python demos/steer_feature.py [--feature N] [--coefficient C] [--prompt TEXT]

Prints greedy continuations of a Python prompt without and with steering (the vector
is added at every position, prompt and generated tokens alike), then a sweep over
coefficients: the feature's activation, the KL from the unsteered predictions and
the held-out loss.
"""

from __future__ import annotations

import argparse

import saehooks as sh
from saehooks.analysis.steering import steering_sweep
from saehooks.interventions import steer

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
DEFAULT_FEATURE = 3955  # inside a string literal; see pretrained/saes/FEATURES.md
DEFAULT_COEFFICIENT = 12.0
DEFAULT_PROMPT = "def check(value):\n    if value < 0:\n        raise ValueError("


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", type=int, default=DEFAULT_FEATURE)
    parser.add_argument(
        "--coefficient",
        type=float,
        default=DEFAULT_COEFFICIENT,
        help="norm of the added vector (residual-stream units)",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--sae", default=DEFAULT_SAE)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    model = sh.load_model()
    sae = sh.load_sae(args.sae)
    prompt = model.to_tokens(args.prompt)
    # uncached: TransformerLens 4.3's bridge leaves the KV cache empty under transformers 5
    gen = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False,
        "stop_at_eos": False,
        "verbose": False,
        "use_past_kv_cache": False,
    }

    clean = model.generate(prompt, **gen)
    with steer(model, sae, args.feature, args.coefficient):
        steered = model.generate(prompt, **gen)
    n = prompt.shape[1]
    print(f"prompt:\n{args.prompt}")
    print(f"--- clean continuation ---\n{model.to_string(clean[0, n:])}")
    print(
        f"--- steered along feature {args.feature} of {args.sae}, coefficient "
        f"{args.coefficient:g} ---\n{model.to_string(steered[0, n:])}"
    )

    coefficients = [0.0, args.coefficient / 2, args.coefficient, 2 * args.coefficient]
    sweep = steering_sweep(
        model,
        sae,
        args.feature,
        coefficients,
        args.prompt,
        tokens=sh.load_eval_tokens()[::600, :128],
        max_new_tokens=10,
    )
    print(
        "\nsweep (feature_act: the feature read back at the hook; kl: nats vs unsteered; "
        "loss: held-out nats/token):"
    )
    print(
        sweep.to_string(
            float_format=lambda x: f"{x:.3f}", formatters={"sample": lambda s: repr(s)[:50]}
        )
    )


if __name__ == "__main__":
    main()
