"""What each dead-latent remedy of the trainer buys, measured on the reference model.

Trains one SAE per variant at ``blocks.2.hook_resid_post`` of the shipped reference
LM (d_sae 4096, the same cached activations of its training split for every variant)
and reports, on held-out tokens: FVU, L0 and the dead fraction (latents that never
fire on them), beside the trainer's own end-of-run dead fraction (no firing in the
last ``dead_window_tokens``). Each variant switches off, or changes, one remedy of a
baseline that has them all:

- TopK (Gao et al. 2024): AuxK on pre-ReLU dead-latent values, normalised; dead window
  250k tokens; ``W_enc = W_decᵀ`` at init; ``b_dec`` at the geometric median. Two
  variants put back this project's first AuxK (ReLU'd values; and also not normalised)
  by patching the loss functions for the run.
- ``l1`` / ``kl``: neuron resampling (Bricken et al. 2023) on / off; ``l1`` with half the
  sparsity coefficient, with a leaky-ReLU backward (``leak``), without input
  normalisation.
- ``jumprelu`` (Rajamanoharan et al. 2024) for comparison.

The seed's remedy table maps to rows (``REMEDIES``): lower sparsity coefficient, Leaky
ReLU, better initialisation, normalisation and activation balancing, the last measured
twice: the ``kl`` objective's firing-rate penalty towards ρ (activation balancing
proper: every latent is pulled to fire at the same rate) and AuxK (an auxiliary loss
that gives the dead latents of a TopK SAE the residual to fit).

::

    python benchmarks/dead_latent_remedies.py [--tokens 2e6] [--threads 2] [--only topk]

Writes the table to stdout (and ``--csv``). Short runs measure early training, where
the remedies differ most; the shipped SAEs' long runs are in ``pretrained/saes``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

HOOK = "blocks.2.hook_resid_post"
TOPK = dict(architecture="topk", k=32, lr=1e-3, batch_size=1024, dead_window_tokens=250_000)
# a short run needs short windows: resample every 250k tokens up to 75% of the run
RESAMPLE = dict(
    batch_size=4096,
    dead_window_tokens=250_000,
    resample_every_tokens=250_000,
    resample_stop_fraction=0.75,
)
L1 = dict(architecture="l1", lr=1e-3, l1_coefficient=5.0, **RESAMPLE)
KL = dict(architecture="kl", lr=1e-3, **RESAMPLE)
VARIANTS = {
    "topk: all remedies": TOPK,
    "topk: no AuxK": {**TOPK, "auxk": False},
    "topk: AuxK with ReLU'd values": {**TOPK, "_relu_aux": True},
    "topk: first AuxK (ReLU'd, not normalised)": {**TOPK, "_relu_aux": True, "_raw_aux": True},
    "topk: W_enc random (not W_dec^T)": {**TOPK, "init_encoder_as_decoder_transpose": False},
    "topk: b_dec = 0": {**TOPK, "b_dec_init": "zeros"},
    "topk: b_dec = mean": {**TOPK, "b_dec_init": "mean"},
    "l1: resampling": L1,
    "l1: no resampling": {**L1, "resample_dead": False},
    "kl: resampling": KL,
    "kl: no resampling": {**KL, "resample_dead": False},
    "l1: lambda 2.5 (half)": {**L1, "l1_coefficient": 2.5},
    "l1: leaky ReLU (leak 0.05)": {**L1, "leak": 0.05},
    "l1: leaky ReLU, no resampling": {**L1, "leak": 0.05, "resample_dead": False},
    "l1: no input normalisation": {**L1, "normalize_activations": False},
    "topk: no input normalisation": {**TOPK, "normalize_activations": False},
    "jumprelu": dict(architecture="jumprelu", lr=1e-3, **RESAMPLE),
}
REMEDIES = {
    "lower sparsity coefficient": ("l1: resampling", "l1: lambda 2.5 (half)"),
    "Leaky ReLU": ("l1: resampling", "l1: leaky ReLU (leak 0.05)"),
    "better initialisation": ("topk: W_enc random (not W_dec^T)", "topk: all remedies"),
    "normalisation": ("l1: no input normalisation", "l1: resampling"),
    "activation balancing (KL-rho)": ("l1: resampling", "kl: resampling"),
    "activation balancing (AuxK)": ("topk: no AuxK", "topk: all remedies"),
}
"""The seed's remedies: ``{remedy: (row without it, row with it)}``."""


def heldout_activations(model, n_rows: int) -> torch.Tensor:
    """Raw activations ``[n, d_in]`` of the first ``n_rows`` evaluation rows, BOS dropped."""
    import saehooks as sh
    from saehooks import tl

    tokens = sh.load_eval_tokens(n_rows)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=HOOK, stop_at_layer=tl.block_index(HOOK) + 1
        )
    return cache[HOOK][tokens != model.tokenizer.bos_token_id].float()


def measure(sae, acts: torch.Tensor) -> dict[str, float]:
    """Held-out FVU, L0 and never-firing fraction of ``sae`` on ``acts``."""
    from saehooks import metrics

    err = var = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0 = 0.0
    mean = acts.mean(0)
    with torch.no_grad():
        for chunk in acts.split(8192):
            f = sae.encode(chunk)
            err += float(metrics.sum_squared_error(chunk, sae.decode(f)))
            var += float((chunk - mean).pow(2).sum())
            fired |= (f > 0).any(0)
            l0 += float((f > 0).sum())
    return {
        "fvu": err / var,
        "l0": l0 / acts.shape[0],
        "dead_heldout": 1.0 - float(fired.float().mean()),
    }


def run_variant(model, rows, acts, changes: dict, tokens: int, work: Path) -> dict:
    """Train one variant from the shared cache; its held-out numbers and wall time."""
    from saehooks.training import TrainConfig, losses, sparse, train_sae

    changes = dict(changes)
    relu_aux = changes.pop("_relu_aux", False)
    raw_aux = changes.pop("_raw_aux", False)
    cfg = TrainConfig(
        hook_name=HOOK,
        d_sae=4096,
        total_tokens=tokens,
        seed=0,
        checkpoint_every_tokens=0,
        progress_bar=False,
        out_dir=str(work / "run"),
        cache_dir=str(work / "cache"),
        cache_tokens=min(tokens, 2_000_000),
        **changes,
    )
    original = sparse.selected_pre, losses.auxk_loss, losses.topk_loss
    if relu_aux:  # the first implementation's AuxK: ReLU on the dead latents' values

        def selected_pre(*args, **kwargs):
            return torch.relu(original[0](*args, **kwargs))

        sparse.selected_pre = selected_pre
    if raw_aux:  # ... and mse(e, ê) added with α, not normalised

        def topk_loss(x, x_hat, residual=None, aux_recons=None, aux_coefficient=1 / 32):
            loss = losses.mse(x, x_hat)
            if residual is not None and aux_recons is not None:
                loss = loss + aux_coefficient * losses.mse(residual, aux_recons)
            return loss

        losses.auxk_loss, losses.topk_loss = losses.mse, topk_loss
    try:
        start = time.time()
        sae = train_sae(model, rows, cfg, overwrite=True)
        seconds = time.time() - start
    finally:
        sparse.selected_pre, losses.auxk_loss, losses.topk_loss = original
    final = sae.cfg.metadata["training"]["final_metrics"]
    return {**measure(sae, acts), "dead_train_window": final["dead_fraction"], "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=float, default=2e6, help="training tokens per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heldout-rows", type=int, default=256, help="eval rows (x255 tokens)")
    ap.add_argument(
        "--only", nargs="*", default=None, help="variants whose name starts with one of these"
    )
    ap.add_argument("--work", default=None, help="cache folder (default: a temp folder)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)

    import pandas as pd

    import saehooks as sh
    from saehooks.reference import load_train_tokens

    torch.set_num_threads(args.threads)
    model = sh.load_model()
    rows = load_train_tokens()
    acts = heldout_activations(model, args.heldout_rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for name, changes in VARIANTS.items():
            if args.only and not name.startswith(tuple(args.only)):
                continue
            result = run_variant(model, rows, acts, changes, int(args.tokens), work / "x")
            results.append({"variant": name, **result})
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
            # keep the cache, drop the run
            for f in sorted((work / "x" / "run").rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
    table = pd.DataFrame(results).set_index("variant")
    print(
        f"\n{int(args.tokens):,} training tokens per variant, {acts.shape[0]:,} held-out "
        "tokens; dead_heldout = never fires on them\n"
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        table.to_csv(args.csv)
    print("\nremedy: dead_heldout without -> with (fvu, l0 without -> with)")
    for remedy, (without, with_) in REMEDIES.items():
        if without in table.index and with_ in table.index:
            a, b = table.loc[without], table.loc[with_]
            print(
                f"{remedy}: {a.dead_heldout:.4f} -> {b.dead_heldout:.4f} "
                f"(fvu {a.fvu:.4f} -> {b.fvu:.4f}, l0 {a.l0:.1f} -> {b.l0:.1f})"
            )


if __name__ == "__main__":
    main()
