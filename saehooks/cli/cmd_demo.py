"""``saehooks demo``: splice a shipped SAE into the reference model and measure the cost."""

from __future__ import annotations

import time
from dataclasses import dataclass

from saehooks.cli.common import ModelOptions, held_out_rows, load, set_threads

NAME = "demo"
HELP = "evaluate a shipped SAE on the reference model"


@dataclass(kw_only=True)
class Options(ModelOptions):
    n_seq: int = 32
    """held-out rows of 256 tokens, spread over the held-out set"""
    top_rows: int = 16
    """rows scanned for the per-token table"""
    batch_size: int = 16
    """token rows per forward pass"""


def run(options: Options, model=None) -> int:
    import saehooks as sh
    from saehooks.reference import model_card

    set_threads(options.threads)
    t0 = time.time()
    card = model_card()
    print(
        f"reference model: {card['architecture']['n_layer']} layers, d_model "
        f"{card['architecture']['d_model']}, trained on the CPython "
        f"{card['corpus']['python_version']} standard library; CE on all held-out tokens "
        f"{card['eval']['held_out_ce_nats_per_token']} nats/token "
        f"({card['eval']['held_out_bits_per_byte']} bits/byte; unigram "
        f"{card['eval']['unigram_baseline_nats_per_token']})"
    )
    model, sae = load(options, model)
    tokens = held_out_rows(options.n_seq)
    print(
        f"SAE {options.sae}: {sae.cfg.architecture} k={sae.cfg.k} d_sae={sae.cfg.d_sae} at "
        f"{sae.cfg.hook_name}\n"
    )
    report = sh.evaluate(model, sae, tokens, batch_size=options.batch_size)
    print(report)
    print(
        f"(on {tokens.shape[0]} held-out rows spread over the held-out set, "
        f"{report.n_tokens:,} tokens; dead_fraction counts latents silent on these alone. "
        "All held-out tokens: pretrained/saes/README.md, or saehooks eval)"
    )
    print(
        f"\nsplicing costs {report.ce_loss_increase:+.4f} nats/token; the SAE's FVU "
        f"{report.fvu:.4f} at L0 {report.l0:.1f} vs {report.pca_fvu:.4f} for PCA with "
        f"{report.pca_rank} components"
    )
    table = sh.loss_increase_per_token(
        model, sae, tokens[: options.top_rows], batch_size=options.batch_size, progress=False
    )
    top = table.nlargest(10, "delta")
    print("\nten tokens whose loss rises most (nats):")
    print(top.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ndone in {time.time() - t0:.1f}s")
    return 0
