"""How much a spliced SAE slows the model: t(model + SAE) / t(model), beside the SAE's
share of the forward pass's FLOPs (its floor), at d_sae 4k / 16k / 64k, and the same
work in SAELens.

    python benchmarks/splice_overhead.py [--threads 1] [--rows 4] [--repeats 5]
    .venv-tl3/bin/python benchmarks/splice_overhead.py ...   # TL3 + SAELens side by side

TopK SAEs (k 32) with random weights (unit-norm decoder rows, ``W_enc = W_decᵀ``) at
``blocks.2.hook_resid_post`` of the reference model, all in one run, interleaved
(clean, spliced, clean, ...) and reported as medians. Backends (rows of the table):

* ``saehooks``: the model :func:`saehooks.load_model` gives (the TL4
  ``TransformerBridge``, or TL3's ``HookedTransformer`` when run with TL3 installed),
  the SAE spliced with :func:`saehooks.attach`;
* ``saelens`` (when ``sae_lens`` imports, i.e. in the TL3 environment): SAELens'
  ``HookedSAETransformer`` holding the same weights, with the same SAE saved by saehooks
  in SAELens' format and loaded by ``sae_lens.SAE.load_from_disk``, spliced with
  ``add_sae``. Its spliced logits are checked against saehooks' (``max |Δ logits|``).

Columns: ``sae_ms`` is the SAE alone on the hook's activations, split into ``enc_ms``
(``x @ W_enc``), ``topk_ms`` (top-k over d_sae) and ``dec_ms`` (the decode from top-k's
values and indices, :func:`saehooks.sae.decode_topk`, which ``SAE.forward`` uses when no
hook sits on the SAE's path; with ``--dense`` rows, the dense code and its product);
``sae_flop_share`` counts the SAE's matmul FLOPs (encoder dense, decoder over k latents
for saehooks' sparse decode, over d_sae for SAELens' dense one) over the model's forward
matmul FLOPs (:func:`model_flops`): the ratio's floor is ``1 + sae_flop_share``.
``--dense`` adds saehooks rows with the dense decode forced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from unittest import mock

import torch

import saehooks as sh
from saehooks import sae as sae_module

HOOK = "blocks.2.hook_resid_post"
K = 32


def model_flops(model, tokens: torch.Tensor) -> float:
    """Matmul FLOPs of one forward pass, from the config (the same for every backend):
    per token ``2 · (n_layers · (4 · d_model² + 2 · d_model · d_mlp) + d_model · d_vocab)``
    (attention projections, MLP, unembedding) plus ``2 · 2 · n_layers · pos · d_model``
    (QKᵀ and AV)."""
    cfg = model.cfg
    n_tok, pos = tokens.numel(), tokens.shape[1]
    per_token = cfg.n_layers * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp)
    per_token += cfg.d_model * cfg.d_vocab
    return 2.0 * per_token * n_tok + 2 * 2 * cfg.n_layers * pos * cfg.d_model * n_tok


def random_topk(d_in: int, d_sae: int, hook: str) -> sh.SAE:
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=K, hook_name=hook))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(0.01 * torch.randn(d_sae, generator=gen))
    return sae


def median_ms(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return 1000 * statistics.median(out)


def interleaved(run, splice, repeats: int) -> tuple[float, float]:
    """Median ms of ``run()`` clean and inside the ``splice()`` context, alternately
    (attaching and detaching are not timed)."""
    clean, spliced = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        clean.append(time.perf_counter() - start)
        with splice():
            start = time.perf_counter()
            run()
            spliced.append(time.perf_counter() - start)
    return 1000 * statistics.median(clean), 1000 * statistics.median(spliced)


def sae_breakdown(sae: sh.SAE, acts: torch.Tensor, repeats: int) -> tuple[float, ...]:
    """``(sae_ms, enc_ms, topk_ms, dec_ms)`` of saehooks' SAE alone on ``acts``."""
    x = acts.reshape(-1, acts.shape[-1])
    total = median_ms(lambda: sae(x), repeats)
    enc = median_ms(lambda: (x - sae.b_dec) @ sae.W_enc + sae.b_enc, repeats)
    pre = sae.encode_pre(x)
    if sae._topk_decode_unhooked(x) is not None:  # forward's shortcut: decode from topk
        k = sae.cfg.k
        topk = median_ms(lambda: pre.topk(k, dim=-1, sorted=False), repeats)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        dec = median_ms(lambda: sae_module.decode_topk(values, indices, sae.W_dec), repeats)
        return total, enc, topk, dec
    topk = median_ms(lambda: sae.activation(pre), repeats)
    code = sae.activation(pre)
    dec = median_ms(lambda: sae.decode(code), repeats)
    return total, enc, topk, dec


def row(backend, d_sae, decode, clean, spliced, sae_ms, parts, share, extra="") -> None:
    enc, topk, dec = (f"{p:7.1f}" for p in parts) if parts else ("      -",) * 3
    print(
        f"{backend:>8} {d_sae:>6} {decode:>6} {clean:8.1f} {spliced:10.1f} "
        f"{spliced / clean:6.2f} {sae_ms:7.1f} {enc} {topk} {dec} {share:14.2f}{extra}",
        flush=True,
    )


def saelens_model(model):
    """SAELens' ``HookedSAETransformer`` with the weights (already processed) of the TL3
    ``HookedTransformer`` ``model``."""
    from sae_lens import HookedSAETransformer

    hst = HookedSAETransformer(model.cfg)
    hst.load_state_dict(model.state_dict())
    return hst.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=4, help="held-out rows of 256 tokens")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--dense", action="store_true", help="also force saehooks' dense decode")
    ap.add_argument("--no-saelens", action="store_true", help="skip SAELens even if installed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.rows)
    d_in = model.cfg.d_model
    base = model_flops(model, tokens)
    hst = None
    if not args.no_saelens and sh.tl.tl_major_version() == 3:
        try:
            hst = saelens_model(model)
        except ImportError:
            hst = None
    one, five, _ = os.getloadavg()
    print(
        f"torch {torch.__version__}, threads {args.threads}, tokens {tuple(tokens.shape)}, "
        f"model forward {base / 1e9:.2f} GFLOP, load average {one:.2f} / {five:.2f} "
        f"(1 / 5 min) on {os.cpu_count()} CPUs"
    )
    print(f"saehooks backend: {type(model).__name__}; SAELens: {'yes' if hst else 'no'}")
    print(
        f"{'backend':>8} {'d_sae':>6} {'decode':>6} {'clean_ms':>8} {'spliced_ms':>10} "
        f"{'ratio':>6} {'sae_ms':>7} {'enc_ms':>7} {'topk_ms':>7} {'dec_ms':>7} "
        f"{'sae_flop_share':>14}"
    )
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        acts = cache[HOOK]
        model(tokens)  # warm-up
        sparse_decode = sae_module.sparse_decode
        topk_shortcut = sae_module.SAE._topk_decode_unhooked
        for d_sae in args.d_sae:
            sae = random_topk(d_in, d_sae, HOOK)
            n = tokens.numel()
            encoder = 2 * n * d_in * d_sae
            decodes = ["sparse", "dense"] if args.dense else ["sparse"]
            for decode in decodes:
                share = (encoder + 2 * n * d_in * (K if decode == "sparse" else d_sae)) / base
                dense = decode == "dense"
                with (
                    mock.patch.object(
                        sae_module, "sparse_decode", (lambda a, w: None) if dense else sparse_decode
                    ),
                    mock.patch.object(
                        sae_module.SAE,
                        "_topk_decode_unhooked",
                        (lambda self, x: None) if dense else topk_shortcut,
                    ),
                ):
                    parts = sae_breakdown(sae, acts, args.repeats)
                    with sh.attach(model, sae):
                        ours = model(tokens)
                    clean, spliced = interleaved(
                        lambda: model(tokens), lambda s=sae: sh.attach(model, s), args.repeats
                    )
                row("saehooks", d_sae, decode, clean, spliced, parts[0], parts[1:], share)
            if hst is not None:
                _saelens_row(hst, sae, tokens, acts, ours, d_sae, encoder, base, args, n, d_in)
    one, five, _ = os.getloadavg()
    print(f"end: load average {one:.2f} / {five:.2f} (1 / 5 min)")


def _saelens_row(hst, sae, tokens, acts, ours, d_sae, encoder, base, args, n, d_in) -> None:
    """Time SAELens' splice of ``sae`` (saved by saehooks in SAELens' format)."""
    from sae_lens import SAE as SAELensSAE

    with tempfile.TemporaryDirectory() as tmp:
        sae.save(tmp, format="saelens", overwrite=True)
        theirs = SAELensSAE.load_from_disk(tmp, device="cpu")
    theirs.eval()
    x = acts.reshape(-1, d_in)
    sae_ms = median_ms(lambda: theirs(x), args.repeats)
    with hst.saes(saes=[theirs]):
        diff = float((hst(tokens) - ours).abs().max())
    clean, spliced = interleaved(lambda: hst(tokens), lambda: hst.saes(saes=[theirs]), args.repeats)
    share = (encoder + 2 * n * d_in * d_sae) / base
    row(
        "saelens",
        d_sae,
        "dense",
        clean,
        spliced,
        sae_ms,
        None,
        share,
        f"  max|Δ logits| {diff:.1e}",
    )


if __name__ == "__main__":
    main()
