"""SAE training throughput on cached (here: random) activations, beside the machine's
measured matmul speed.

For each size (d_in 256 / d_sae 4096 and d_in 768 / d_sae 16384, TopK k=32) and each
variant (dense autograd matmuls vs the sparse ``embedding_bag`` kernels; fp32 vs bf16
encoder matmul) it times optimizer steps of :class:`saehooks.training.Trainer` and
prints tokens/s, the dense-equivalent GFLOP/s (``10 · d_in · d_sae`` FLOPs per token:
encoder and decoder forward, decoder input- and weight-gradients, encoder
weight-gradient) and that as a fraction of the measured fp32 matmul GFLOP/s.
Sparse kernels skip most of that work, so their fraction can exceed 1. It also prints
what ``matmul_dtype="auto"`` (the default) chooses here, with the probe's timings.

    python benchmarks/train_throughput.py [--steps 10] [--threads 2] [--sizes small]
        [--dtypes float32 bfloat16 auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


class RandomActivations:
    """A stand-in store: Gaussian activations with a random mean (fixed seed)."""

    def __init__(self, d_in: int, batch_size: int, seed: int = 0) -> None:
        self.d_in, self.batch_size = d_in, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(d_in, generator=self.gen)

    def next_batch(self) -> torch.Tensor:
        return torch.randn(self.batch_size, self.d_in, generator=self.gen) + self.mean

    def state_dict(self):
        return {}, {"kind": "random"}

    def load_state_dict(self, tensors, values) -> None:
        pass


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of an ``[n, n] @ [n, n]`` matmul in ``dtype``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def tokens_per_second(
    d_in: int, d_sae: int, k: int, batch_size: int, sparse: bool, matmul_dtype: str, steps: int
) -> float:
    """Optimizer steps per second times ``batch_size``, after two warm-up steps."""
    from saehooks.training import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            architecture="topk",
            d_sae=d_sae,
            k=k,
            batch_size=batch_size,
            total_tokens=batch_size * (steps + 10),
            sparse_kernels=sparse,
            matmul_dtype=matmul_dtype,
            out_dir=out,
            progress_bar=False,
            init_tokens=batch_size,
            b_dec_init="mean",
            checkpoint_every_tokens=0,
        )
        trainer = Trainer(None, RandomActivations(d_in, batch_size), cfg)
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--sizes", choices=["small", "all"], default="all")
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "auto"],
        default=["float32", "bfloat16"],
        help="matmul dtypes to time",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from saehooks.training.device import resolve_matmul_dtype

    start = time.perf_counter()
    auto = resolve_matmul_dtype("auto", "cpu")
    probe_s = time.perf_counter() - start
    fp32 = matmul_gflops(torch.float32)
    bf16 = matmul_gflops(torch.bfloat16)
    print(
        f"threads {torch.get_num_threads()}; measured matmul: fp32 {fp32:.0f} GFLOP/s, "
        f"bf16 {bf16:.1f} GFLOP/s"
    )
    print(
        f"matmul_dtype='auto' chooses {auto.dtype} (probe {probe_s * 1e3:.0f} ms: one "
        f"product takes {auto.float32_ms} ms in fp32, {auto.bfloat16_ms} ms in bf16)"
    )
    sizes = [(256, 4096)] + ([(768, 16384)] if args.sizes == "all" else [])
    header = (
        f"{'d_in':>5} {'d_sae':>6} {'kernels':>7} {'matmul':>8} {'tok/s':>9} "
        f"{'dense-eq GFLOP/s':>17} {'of fp32 peak':>12}"
    )
    print(header)
    print("-" * len(header))
    for d_in, d_sae in sizes:
        for sparse in (False, True):
            for dtype in args.dtypes:
                rate = tokens_per_second(
                    d_in, d_sae, 32, args.batch_size, sparse, dtype, args.steps
                )
                gflops = rate * 10 * d_in * d_sae / 1e9
                print(
                    f"{d_in:>5} {d_sae:>6} {'sparse' if sparse else 'dense':>7} "
                    f"{dtype:>8} {rate:>9,.0f} {gflops:>17.1f} {gflops / fp32:>12.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
