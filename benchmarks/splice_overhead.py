"""How much a spliced SAE slows the model: t(model + SAE) / t(model), beside the SAE's
share of the forward pass's FLOPs (its floor), at d_sae 4k / 16k / 64k.

    python benchmarks/splice_overhead.py [--threads 1] [--rows 8] [--repeats 5]

TopK SAEs (k 32) with random weights at ``blocks.2.hook_resid_post`` of the reference
model, all in one run, interleaved (clean, spliced, clean, ...) and reported as medians.
Columns: ``decode`` is ``sparse`` (the gather-sum over the k non-zeros that
``SAE.decode`` uses for TopK codes) or ``dense`` (``acts @ W_dec``, forced, for
comparison); ``sae_flop_share`` counts the SAE's matmul FLOPs (encoder dense, decoder
over k latents for sparse, over d_sae for dense) over the model's forward FLOPs
(``2 · params · tokens`` plus attention).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

import saehooks as sh
from saehooks import sae as sae_module


def model_flops(model, tokens: torch.Tensor) -> float:
    cfg = model.cfg
    n_tok = tokens.numel()
    params = sum(p.numel() for p in model.parameters())
    attention = 2 * 2 * cfg.n_layers * tokens.shape[1] * cfg.d_model * n_tok  # QK^T and AV
    return 2.0 * params * n_tok + attention


def random_topk(d_in: int, d_sae: int, hook: str) -> sh.SAE:
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=32, hook_name=hook))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=8, help="held-out rows of 256 tokens")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[4096, 16384, 65536])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.rows)
    hook = "blocks.2.hook_resid_post"
    d_in = model.cfg.d_model
    base = model_flops(model, tokens)
    print(
        f"backend {type(model).__name__}, threads {args.threads}, tokens "
        f"{tuple(tokens.shape)}, model forward {base / 1e9:.2f} GFLOP"
    )
    print(
        f"{'d_sae':>6} {'decode':>7} {'clean_ms':>9} {'spliced_ms':>11} {'ratio':>6} "
        f"{'sae_flop_share':>15}"
    )
    with torch.no_grad():
        model(tokens)  # warm-up
        for d_sae in args.d_sae:
            sae = random_topk(d_in, d_sae, hook)
            n = tokens.numel()
            for decode in ("sparse", "dense"):
                dec_flops = 2 * n * d_in * (32 if decode == "sparse" else d_sae)
                share = (2 * n * d_in * d_sae + dec_flops) / base
                patch = (
                    mock.patch.object(sae_module, "sparse_decode", lambda a, w: None)
                    if decode == "dense"
                    else mock.patch.object(sae_module, "sparse_decode", sae_module.sparse_decode)
                )
                clean, spliced = [], []
                with patch:
                    for _ in range(args.repeats):
                        clean += timed(lambda: model(tokens), 1)
                        with sh.attach(model, sae):
                            spliced += timed(lambda: model(tokens), 1)
                c, s = statistics.median(clean), statistics.median(spliced)
                print(
                    f"{d_sae:>6} {decode:>7} {1000 * c:9.1f} {1000 * s:11.1f} {s / c:6.2f} "
                    f"{share:15.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
