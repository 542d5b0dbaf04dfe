"""Sparse TopK SAE training throughput: 1 vs 2 threads, OpenMP's wait policy, and SAELens
on the same work.

Default run (a few minutes on any CPU)::

    python benchmarks/train_throughput.py [--steps 12] [--repeats 2]

It first prints the encoder matmul dtype it trains with and why: ``matmul_dtype="auto"``
(the default) runs :func:`saehooks.training.device.resolve_matmul_dtype`, a ~0.1 s
probe that times one small product in fp32 and in bf16 and keeps bf16 only where it is
>= 1.25x faster (CPUs with AMX / AVX512-BF16; emulated bf16 on an AVX2-only CPU is
~40x slower, so nothing here times large bf16 products unless the probe chose bf16).
Then, at d_in 256 / d_sae 4096, TopK k 32, batch 4096 (Gaussian activations, no dead
latents), it times optimizer steps of :class:`saehooks.training.Trainer` on the sparse
kernels with 1 thread, 2 threads, and 2 threads with ``OMP_WAIT_POLICY=PASSIVE``, each
in a fresh subprocess (OpenMP reads the variable when its pool starts), repeats
interleaved, and reports the median tokens/s. If ``sae_lens`` is importable (here, or by
``--saelens-python``, default: the TL3 environment ``.venv-tl3`` when it exists), it
times SAELens' ``SAETrainer.step`` with a ``TopKTrainingSAE`` of the same shape on the
same batches at 1 thread.

Other modes::

    python benchmarks/train_throughput.py --kernels [--sizes all] [--dtypes float32 auto]
        # dense autograd vs sparse kernels, tokens/s and dense-equivalent GFLOP/s
    python benchmarks/train_throughput.py --profile [--threads 1]
        # torch.profiler over sparse TopK steps: aten ops per step, time shares
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
D_IN, D_SAE, K, BATCH = 256, 4096, 32, 4096


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


def make_trainer(d_in: int, d_sae: int, k: int, batch_size: int, sparse: bool, dtype: str, out):
    """A TopK :class:`saehooks.training.Trainer` on :class:`RandomActivations`."""
    from saehooks.training import TrainConfig, Trainer

    cfg = TrainConfig(
        architecture="topk",
        d_sae=d_sae,
        k=k,
        batch_size=batch_size,
        total_tokens=batch_size * 10**6,
        sparse_kernels=sparse,
        matmul_dtype=dtype,
        out_dir=out,
        progress_bar=False,
        init_tokens=batch_size,
        b_dec_init="mean",
        checkpoint_every_tokens=0,
    )
    return Trainer(None, RandomActivations(d_in, batch_size), cfg)


def keep_dead(trainer, fraction: float) -> None:
    """Make a random ``fraction`` of the latents dead for good (AuxK then runs every
    step, as in a real run once some latents have died)."""
    if fraction:
        d_sae = trainer.sae.cfg.d_sae
        dead = torch.rand(d_sae, generator=torch.Generator().manual_seed(0)) < fraction
        trainer.tracker.since_fired[dead] = 10**15
        trainer.tracker.update = lambda fired, n: None


def tokens_per_second(
    d_in: int,
    d_sae: int,
    k: int,
    batch_size: int,
    sparse: bool,
    matmul_dtype: str,
    steps: int,
    dead: float = 0.0,
) -> tuple[float, str]:
    """``(tokens/s, matmul dtype)``: optimizer steps per second times ``batch_size``,
    after two warm-up steps, with a ``dead`` fraction of latents kept dead."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(d_in, d_sae, k, batch_size, sparse, matmul_dtype, out)
        keep_dead(trainer, dead)
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * batch_size / (time.perf_counter() - start), trainer.matmul.dtype


def saelens_tokens_per_second(d_in: int, d_sae: int, k: int, batch_size: int, steps: int):
    """SAELens' ``SAETrainer.step`` (forward, AuxK once latents die, backward, grad clip,
    Adam) with a fp32 ``TopKTrainingSAE``, on the same random batches; ``(tokens/s,
    "float32")``."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device="cpu"))
    data = RandomActivations(d_in, batch_size)
    cfg = SAETrainerConfig(
        total_training_samples=batch_size * 10**6,
        train_batch_size_samples=batch_size,
        lr=1e-3,
        lr_end=1e-3,
    )
    trainer = SAETrainer(cfg, sae, iter(()))
    for _ in range(2):
        trainer.step(data.next_batch())
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(data.next_batch())
    return steps * batch_size / (time.perf_counter() - start), "float32"


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "saelens":
        rate, dtype = saelens_tokens_per_second(D_IN, D_SAE, K, args.batch_size, args.steps)
    else:
        rate, dtype = tokens_per_second(
            D_IN, D_SAE, K, args.batch_size, True, args.matmul_dtype, args.steps, args.dead
        )
    print(json.dumps({"tok_s": rate, "dtype": dtype, "threads": torch.get_num_threads()}))


def run_worker(
    engine: str, threads: int, wait_policy: str | None, args, python: str = sys.executable
) -> dict:
    """Run :func:`worker` in a fresh subprocess with ``OMP_NUM_THREADS=threads`` and
    ``OMP_WAIT_POLICY`` set (or removed for ``None``)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, "--threads", str(threads)]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--matmul-dtype", args.matmul_dtype, "--dead", str(args.dead)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def find_saelens_python(requested: str | None) -> str | None:
    """The interpreter to time SAELens with: ``requested``, else this one if it imports
    ``sae_lens``, else the repository's TL3 environment if it does; ``None`` if none."""
    candidates = [requested] if requested else [sys.executable, str(ROOT / ".venv-tl3/bin/python")]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run(
                [python, "-c", "import sae_lens"], capture_output=True, timeout=300
            ).returncode
            if ok == 0:
                return python
    return None


def load_line() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def print_dtype_choice(requested: str) -> None:
    from saehooks.training.device import BF16_MIN_SPEEDUP, resolve_matmul_dtype

    start = time.perf_counter()
    choice = resolve_matmul_dtype(requested, "cpu")
    took = time.perf_counter() - start
    if choice.source == "explicit":
        print(f"matmul dtype: {choice.dtype} (--matmul-dtype {requested})")
        return
    print(
        f"matmul dtype: {choice.dtype} (matmul_dtype='auto': a {took * 1e3:.0f} ms probe timed "
        f"one [128, 256] @ [256, 1024] product at {choice.float32_ms} ms in fp32 and "
        f"{choice.bfloat16_ms} ms in bf16; bf16 is chosen only if >= {BF16_MIN_SPEEDUP}x "
        "faster)"
    )


def threads_mode(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}; {load_line()}")
    print_dtype_choice(args.matmul_dtype)
    configs = [("saehooks", 1, None), ("saehooks", 2, None), ("saehooks", 2, "PASSIVE")]
    saelens = None if args.no_saelens else find_saelens_python(args.saelens_python)
    if saelens:
        configs.append(("saelens", 1, None))
    rates: dict[tuple, list[float]] = {c: [] for c in configs}
    dtypes: dict[tuple, str] = {}
    for _ in range(args.repeats):  # interleaved, so a load spike hits every config
        for engine, threads, policy in configs:
            python = saelens if engine == "saelens" else sys.executable
            res = run_worker(engine, threads, policy, args, python)
            rates[(engine, threads, policy)].append(res["tok_s"])
            dtypes[(engine, threads, policy)] = res["dtype"]
    print(
        f"\nTopK training, d_in {D_IN} / d_sae {D_SAE}, k {K}, batch {args.batch_size}, "
        f"{args.steps} timed steps after 2 warm-up, median of {args.repeats} fresh processes; "
        f"dead fraction {args.dead} (saehooks rows; AuxK runs when > 0)"
    )
    header = f"{'trainer':>8} {'threads':>7} {'OMP_WAIT_POLICY':>15} {'matmul':>8} {'tok/s':>9}"
    print(header + "   runs")
    print("-" * (len(header) + 7))
    one = statistics.median(rates[("saehooks", 1, None)])
    for key in configs:
        engine, threads, policy = key
        med = statistics.median(rates[key])
        runs = ", ".join(f"{r:,.0f}" for r in rates[key])
        print(
            f"{engine:>8} {threads:>7} {policy or '(default)':>15} {dtypes[key]:>8} "
            f"{med:>9,.0f}   {runs}" + (f"   ({med / one:.2f}x saehooks at 1 thread)")
        )
    if not saelens and not args.no_saelens:
        print("(sae_lens not importable here or in .venv-tl3: SAELens not timed)")
    print(f"end: {load_line()}")


def kernels_mode(args: argparse.Namespace) -> None:
    """The dense-vs-sparse table (in this process, ``--threads`` threads)."""
    print(f"threads {torch.get_num_threads()}; {load_line()}")
    print_dtype_choice("auto")
    sizes = [(256, 4096)] + ([(768, 16384)] if args.sizes == "all" else [])
    header = (
        f"{'d_in':>5} {'d_sae':>6} {'kernels':>7} {'requested':>9} {'matmul':>8} {'tok/s':>9} "
        f"{'dense-eq GFLOP/s':>17}"
    )
    print(header)
    print("-" * len(header))
    for d_in, d_sae in sizes:
        for sparse in (False, True):
            for dtype in args.dtypes:
                rate, used = tokens_per_second(
                    d_in, d_sae, K, args.batch_size, sparse, dtype, args.steps
                )
                gflops = rate * 10 * d_in * d_sae / 1e9
                print(
                    f"{d_in:>5} {d_sae:>6} {'sparse' if sparse else 'dense':>7} {dtype:>9} "
                    f"{used:>8} {rate:>9,.0f} {gflops:>17.1f}",
                    flush=True,
                )


def profile_mode(args: argparse.Namespace) -> None:
    """torch.profiler over ``--steps`` sparse TopK steps (optionally with ``--dead``
    latents, so AuxK runs)."""
    from torch.profiler import ProfilerActivity, profile

    print(f"threads {torch.get_num_threads()}; {load_line()}")
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(D_IN, D_SAE, K, args.batch_size, True, args.matmul_dtype, out)
        keep_dead(trainer, args.dead)
        for _ in range(2):
            trainer.train_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            took = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    n = args.steps
    print(
        f"{args.steps} steps, batch {args.batch_size}, matmul {trainer.matmul.dtype}, "
        f"dead fraction {args.dead}: {n * args.batch_size / took:,.0f} tok/s under the "
        f"profiler; {sum(e.count for e in events) / n:.0f} aten ops per step"
    )
    print(f"{'op':>34} {'calls/step':>10} {'ms/step':>8} {'share':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(
            f"{e.key:>34} {e.count / n:>10.1f} {e.self_cpu_time_total / n / 1e3:>8.1f} "
            f"{e.self_cpu_time_total / total:>6.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per config")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--matmul-dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--saelens-python", help="python with sae_lens (default: found)")
    ap.add_argument("--no-saelens", action="store_true", help="do not time SAELens")
    ap.add_argument("--kernels", action="store_true", help="dense vs sparse kernels table")
    ap.add_argument("--sizes", choices=["small", "all"], default="small")
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "auto"],
        default=["float32", "auto"],
        help="matmul dtypes of the --kernels table (bfloat16 is slow without bf16 units)",
    )
    ap.add_argument("--profile", action="store_true", help="profile sparse TopK steps")
    ap.add_argument("--dead", type=float, default=0.0, help="fraction of latents kept dead")
    ap.add_argument("--top", type=int, default=10, help="--profile: ops listed")
    ap.add_argument("--worker", choices=["saehooks", "saelens"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile_mode(args)
    elif args.kernels:
        kernels_mode(args)
    else:
        threads_mode(args)


if __name__ == "__main__":
    main()
