"""``saehooks ablate``: the loss change and KL of zero-ablating each feature."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from saehooks.cli.common import ModelOptions, held_out_rows, load, set_threads

NAME = "ablate"
HELP = "loss change from zero-ablating features"


@dataclass(kw_only=True)
class Options(ModelOptions):
    feature: list[int]
    """feature index(es)"""
    n_seq: int = 16
    """held-out rows of 256 tokens, spread over the held-out set"""


def run(options: Options, model=None) -> int:
    import saehooks as sh

    set_threads(options.threads)
    model, sae = load(options, model)
    tokens = held_out_rows(options.n_seq)
    table = sh.feature_ablation_effects(
        model, sae, tokens, options.feature, batch_size=options.batch_size
    )
    print(
        f"SAE {options.sae} at {sae.cfg.hook_name}; zero ablation with the error term kept, "
        f"{len(tokens)} held-out rows; losses in nats/token"
    )
    with pd.option_context("display.width", 120, "display.max_colwidth", 60):
        print(table.to_string(float_format=lambda x: f"{x:.5f}"))
    return 0
