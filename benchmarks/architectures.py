"""Forward-pass cost of TransformerLens 4's bridge and of an SAE splice, per architecture.

For each tiny random-weight fixture of ``tests/arch_fixtures.py`` (2 layers, d_model 64,
built offline) it times, in one interleaved run (each repeat times every variant once,
medians reported), a no-grad forward pass of ``[batch, pos]`` random tokens through:

* the raw Hugging Face model (``AutoModelForCausalLM``, eval mode);
* the ``TransformerBridge`` from ``saehooks.load_model`` (compatibility mode), and
  the bridge booted without it;
* the bridge with a TopK SAE (d_sae 512, k 32) spliced in at
  ``blocks.1.hook_resid_post`` by ``saehooks.attach``, with and without the error term
  (the forward pass alone, inside the ``with`` block);
* ``saehooks.run_with_saes`` (attach, forward, detach: the one-shot cost).

Ratios: bridge / HF, and spliced / clean bridge (the splice overhead). The models are
tiny, so per-hook Python work weighs far more than in a real model: read the bridge
ratio as an upper bound of its fixed per-call overhead, not as a throughput number for
a 2B model.

    python benchmarks/architectures.py [--threads 1] [--repeats 30] [--batch 8] [--pos 128]
        [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from arch_fixtures import ARCHITECTURES, BOS_ID, build_hf_model, build_model_dir  # noqa: E402

import saehooks as sh  # noqa: E402

HOOK = "blocks.1.hook_resid_post"


def random_sae(d_in: int, d_sae: int = 512, k: int = 32) -> sh.SAE:
    """TopK SAE at :data:`HOOK` with unit-norm random decoder rows (seed 0)."""
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, hook_name=HOOK))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def timed(fn):
    """``fn`` made to return its own run time in seconds."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def bench_arch(arch: str, root: Path, tokens: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds per forward pass of each variant, and the ratios."""
    folder = build_model_dir(root, arch)
    hf = build_hf_model(arch)
    bridge = sh.load_model(folder)
    plain = sh.load_model(folder, compatibility_mode=False)
    sae = random_sae(bridge.cfg.d_model)

    def spliced(error_term: bool):
        def run() -> float:  # the forward pass alone, inside an attach block
            with sh.attach(bridge, sae, use_error_term=error_term):
                return timed(lambda: bridge(tokens))()

        return run

    variants = {
        "hf": timed(lambda: hf(tokens)),
        "bridge": timed(lambda: bridge(tokens)),
        "bridge_no_compat": timed(lambda: plain(tokens)),
        "spliced_error_term": spliced(True),
        "spliced": spliced(False),
        "run_with_saes": timed(lambda: sh.run_with_saes(bridge, tokens, sae)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name].append(fn())
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        **ms,
        "bridge_over_hf": ms["bridge"] / ms["hf"],
        "no_compat_over_hf": ms["bridge_no_compat"] / ms["hf"],
        "splice_error_term_over_bridge": ms["spliced_error_term"] / ms["bridge"],
        "splice_over_bridge": ms["spliced"] / ms["bridge"],
        "run_with_saes_over_bridge": ms["run_with_saes"] / ms["bridge"],
    }


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| architecture | HF ms | bridge ms | bridge / HF | no-compat bridge / HF "
        "| spliced / bridge (error term) | spliced / bridge | run_with_saes / bridge |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in results.items():
        lines.append(
            f"| {arch} (`{ARCHITECTURES[arch].hf_architecture}`) | {r['hf']:.2f} | "
            f"{r['bridge']:.2f} | {r['bridge_over_hf']:.2f} | {r['no_compat_over_hf']:.2f} | "
            f"{r['splice_error_term_over_bridge']:.2f} | {r['splice_over_bridge']:.2f} | "
            f"{r['run_with_saes_over_bridge']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument(
        "--archs", nargs="*", default=list(ARCHITECTURES), choices=list(ARCHITECTURES)
    )
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokens = torch.randint(
        2, 400, (args.batch, args.pos), generator=torch.Generator().manual_seed(0)
    )
    tokens[:, 0] = BOS_ID
    with tempfile.TemporaryDirectory() as tmp:
        results = {arch: bench_arch(arch, Path(tmp), tokens, args.repeats) for arch in args.archs}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join(
        [
            f"`python benchmarks/architectures.py --threads {args.threads} --repeats "
            f"{args.repeats} --batch {args.batch} --pos {args.pos}` (torch {torch.__version__}, "
            f"CPU, medians of {args.repeats} interleaved repeats; tiny 2-layer d_model 64 "
            f"fixtures, [{args.batch}, {args.pos}] tokens; SAE: TopK d_sae 512, k 32 at "
            f"`{HOOK}`; {os.cpu_count()} CPUs, 1-minute load average {load:.1f} at the end)",
            "",
            table(results),
        ]
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
