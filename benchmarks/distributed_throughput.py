"""Data-parallel training throughput: 1 process vs N processes under torchrun (gloo, CPU).

Both runs train a TopK SAE (d_in 256, d_sae 4096, k 32 by default) at the SAME
per-rank batch on random activations, one CPU thread per process, and time optimiser
steps after a warm-up; the N-process run's global batch is N times larger, so perfect
scaling is a tokens/s ratio of N (issue #14 asks >= 1.6 for 2 processes on an idle
2-core machine). It prints both figures, the ratio and ``uptime`` (how idle the
machine was). About a minute or two::

    python benchmarks/distributed_throughput.py [--steps 30] [--batch 4096] [--nproc 2]

A worker (``--worker``) is this same script, started directly (1 process) or by
``python -m torch.distributed.run --standalone --nproc_per_node N``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class RandomRankStore:
    """Per-rank random activations ``[batch, d_in]`` (each rank its own seed), like a
    sharded cache reader: ``rank_batches`` tells the trainer not to slice them."""

    rank_batches = True
    rank_state = False

    def __init__(self, d_in: int, batch: int, seed: int) -> None:
        import torch

        self.d_in, self.batch = d_in, batch
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(d_in, generator=self.generator)

    def next_batch(self):
        import torch

        return torch.randn(self.batch, self.d_in, generator=self.generator) + self.mean

    def state_dict(self):
        return {}, {}

    def load_state_dict(self, tensors, values) -> None:
        pass


def worker(args: argparse.Namespace) -> None:
    """Time ``args.steps`` steps at per-rank batch ``args.batch``; rank 0 prints JSON."""
    import tempfile

    import torch

    from saehooks import distributed
    from saehooks.training.config import TrainConfig
    from saehooks.training.trainer import Trainer

    torch.set_num_threads(1)
    if distributed.launched_by_torchrun():
        distributed.init_from_env("cpu")
    ranks = distributed.world_size()
    steps = args.steps + args.warmup
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            architecture="topk",
            d_sae=args.d_sae,
            k=args.k,
            batch_size=args.batch * ranks,
            total_tokens=args.batch * ranks * (steps + 2),
            init_tokens=args.batch * ranks,
            matmul_dtype="float32",
            progress_bar=False,
            checkpoint_every_tokens=0,
            out_dir=out,
        )
        store = RandomRankStore(args.d_in, args.batch, seed=1 + distributed.rank())
        trainer = Trainer(None, store, cfg)
        for _ in range(args.warmup):
            trainer.train_step()
        distributed.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        distributed.barrier()
        seconds = time.perf_counter() - start
    if distributed.is_main():
        tokens = args.steps * args.batch * ranks
        print(json.dumps({"ranks": ranks, "tokens_per_s": tokens / seconds, "seconds": seconds}))


def launch(args: argparse.Namespace, nproc: int) -> dict:
    """One timed run with ``nproc`` processes (1: plain python); its JSON line."""
    flags = [
        "--worker",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch={args.batch}",
        f"--d-in={args.d_in}",
        f"--d-sae={args.d_sae}",
        f"--k={args.k}",
    ]
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, *launcher, str(Path(__file__).resolve()), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        sys.exit(f"the {nproc}-process run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=4096, help="per-rank batch (tokens)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"before: {uptime}")
    print(
        f"topk d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}; per-rank batch "
        f"{args.batch}; {args.steps} timed steps; 1 thread per process; gloo"
    )
    one = launch(args, 1)
    print(f"1 process:   {one['tokens_per_s']:9.0f} tokens/s")
    many = launch(args, args.nproc)
    print(f"{args.nproc} processes: {many['tokens_per_s']:9.0f} tokens/s")
    print(f"ratio {many['tokens_per_s'] / one['tokens_per_s']:.2f} (perfect: {args.nproc})")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"after:  {uptime}")


if __name__ == "__main__":
    main()
