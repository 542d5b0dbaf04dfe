"""Data-parallel training under torchrun (issue #14 §2) and training from a tensor.

The multi-process tests launch ``python -m torch.distributed.run --standalone
--nproc_per_node 2`` on a small worker script (gloo on the CPU, tiny SAE, a few
steps) in a subprocess with a timeout, and compare the weights each rank ends with.
The fast tests check the reduction rules of the objectives with a fake two-rank
all-reduce, the rank slicing of the stores and the argument checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from saehooks import distributed
from saehooks.errors import InputError, InputTypeError
from saehooks.training import checkpoint
from saehooks.training import objectives as objectives_pkg
from saehooks.training.activation_store import RankSlice, TokenSource
from saehooks.training.config import TrainConfig
from saehooks.training.launch import train_sae, train_saes_by_rank
from saehooks.training.objectives.base import ForwardOutput
from saehooks.training.trainer import check_batch_divisible

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 240

WORKER = textwrap.dedent(
    '''
    """Runs the trainings a JSON spec lists, on a deterministic stream of global batches."""
    import dataclasses, json, os, signal, sys

    import torch

    from saehooks import distributed
    from saehooks.training.config import TrainConfig
    from saehooks.training.launch import train_sae
    from saehooks.training.trainer import Trainer


    class Stream:
        """Global batches: consecutive rows of a fixed [n, d] tensor, wrapping around."""

        def __init__(self, d_in, batch_size, fail_at=-1):
            g = torch.Generator().manual_seed(7)
            n, m = 32 * batch_size, 24
            dirs = torch.randn(m, d_in, generator=g)
            codes = (torch.rand(n, m, generator=g) < 0.15) * torch.rand(n, m, generator=g) * 3
            self.data = codes @ dirs + 0.5 + 0.05 * torch.randn(n, d_in, generator=g)
            self.d_in, self.batch_size, self.pos, self.fail_at = d_in, batch_size, 0, fail_at

        def next_batch(self):
            if self.pos == self.fail_at:
                raise RuntimeError(f"injected failure on rank {distributed.rank()}")
            n = self.data.shape[0]
            start = (self.pos * self.batch_size) % n
            self.pos += 1
            return self.data[start : start + self.batch_size]

        def state_dict(self):
            return {}, {"pos": self.pos}

        def load_state_dict(self, tensors, values):
            self.pos = int(values["pos"])


    spec = json.loads(sys.argv[1])
    if os.environ.get("WORLD_SIZE"):
        distributed.init_from_env("cpu", timeout_s=60)
    for run in spec["runs"]:
        cfg = TrainConfig.from_dict(run["cfg"])
        fail_at = run.get("fail_at", -1) if distributed.rank() == run.get("fail_rank") else -1
        store = Stream(16, cfg.batch_size, fail_at)
        if run.get("tensor"):  # train_sae(acts, cfg): the library's TensorStore
            sae = train_sae(store.data, cfg)
            params = {n: p.detach().clone() for n, p in sae.named_parameters()}
            torch.save(params, os.path.join(cfg.out_dir, f"weights_rank{distributed.rank()}.pt"))
            continue
        resume = cfg.out_dir if run.get("resume") else None
        trainer = Trainer(None, store, cfg, resume_from=resume)
        trainer.run(max_steps=run.get("max_steps"))
        if run.get("kill"):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        state = {n: p.detach().clone() for n, p in trainer.sae.named_parameters()}
        state["threshold"] = torch.tensor(getattr(trainer.objective, "threshold", 0.0))
        running = getattr(trainer.objective, "running", None)
        if running is not None:
            state["running"] = running
        state["since_fired"] = trainer.tracker.since_fired
        state["revivals"] = torch.tensor(trainer.tracker.revivals)
        torch.save(state, os.path.join(cfg.out_dir, f"weights_rank{distributed.rank()}.pt"))
    '''
)


def _config(out_dir: Path, **changes) -> TrainConfig:
    """A tiny TopK run: d_in 16, d_sae 64, k 4, global batch 64, 12 steps, checkpoints
    every 4 steps, no latent dead within the run (AuxK off: its loss is a ratio over
    the batch, not a mean, so it alone would differ between one batch and two halves)."""
    base = TrainConfig(
        hook_name="blocks.0.hook_resid_post",
        architecture="topk",
        d_sae=64,
        k=4,
        total_tokens=12 * 64,
        batch_size=64,
        lr=1e-2,
        dead_window_tokens=1_000_000,
        checkpoint_every_tokens=4 * 64,
        log_every_steps=4,
        init_tokens=128,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(out_dir),
        seed=5,
    )
    return base.__class__.from_dict({**base.to_dict(), **changes})


def _launch(tmp: Path, runs: list[dict], nproc: int) -> subprocess.CompletedProcess:
    """Run the worker on ``runs``: under torchrun with ``nproc`` ranks, or plainly."""
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SAEHOOKS_DIST_TIMEOUT": "60",
        "PYTHONPATH": str(ROOT),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else []
    )
    spec = json.dumps({"runs": runs})
    return subprocess.run(
        [sys.executable, *launcher, str(worker), spec],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def _run(cfg: TrainConfig, **extra) -> dict:
    return {"cfg": cfg.to_dict(), **extra}


def _weights(out_dir: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(Path(out_dir) / f"weights_rank{rank}.pt")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    return max(float((a[n] - b[n]).abs().max()) for n in names)


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory):
    """One process at global batch 64 (topk; and from a tensor), and two ranks at 32
    each (topk, batchtopk, kl, topk with dead latents and AuxK, a tensor, l1 with
    resampling) in one torchrun launch."""
    tmp = tmp_path_factory.mktemp("dp")
    single = _config(tmp / "single")
    single_tensor = _config(tmp / "single_tensor")
    two = {
        "topk": _config(tmp / "two_topk"),
        "batchtopk": _config(tmp / "two_batchtopk", architecture="batchtopk"),
        "kl": _config(tmp / "two_kl", architecture="kl", kl_beta=1e-3),
        "auxk": _config(tmp / "two_auxk", dead_window_tokens=128, d_sae=128),
        "tensor": _config(tmp / "two_tensor"),
        "l1_resampling": _config(
            tmp / "two_l1",
            architecture="l1",
            l1_coefficient=20.0,
            dead_window_tokens=64,
            resample_every_tokens=96,
            resample_stop_fraction=1.0,
        ),
    }
    done = _launch(tmp, [_run(single), _run(single_tensor, tensor=True)], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [_run(c, tensor=name == "tensor") for name, c in two.items()]
    done = _launch(tmp, runs, 2)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tmp, single, two, single_tensor


@pytest.mark.slow
def test_two_ranks_equal_one_process_at_twice_the_batch(dp_runs):
    """(a) 2 ranks x 32 rows == 1 process x 64 rows, the same stream: weights <= 1e-5."""
    tmp, single, two, _ = dp_runs
    one = _weights(single.out_dir)
    dp = _weights(two["topk"].out_dir)
    assert _max_diff(one, dp) <= 1e-5
    # the weights moved after the step-8 checkpoint, so steps 9-12 were compared too
    tensors, _ = checkpoint.load_checkpoint(
        Path(two["topk"].out_dir) / "checkpoints" / "step_00000008"
    )
    assert float((tensors["param.W_enc"] - dp["W_enc"]).abs().max()) > 1e-3
    # rank 0 alone wrote the run's files; both ranks ended where one process did
    assert (Path(two["topk"].out_dir) / "sae").is_dir()
    rows = (Path(two["topk"].out_dir) / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "4", "8", "12"]
    assert [r.split(",")[1] for r in rows[1:]] == ["64", "256", "512", "768"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "kl", "auxk", "tensor", "l1_resampling"])
def test_ranks_hold_identical_state(dp_runs, arch):
    """Every rank ends with bitwise the same weights and objective state (θ, the KL
    running estimate, the dead-latent counters)."""
    _, _, two, _ = dp_runs
    r0, r1 = _weights(two[arch].out_dir, 0), _weights(two[arch].out_dir, 1)
    assert r0.keys() == r1.keys()
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    if arch == "batchtopk":
        assert float(r0["threshold"]) > 0
    if arch == "auxk":  # latents did die, so AuxK and the any-rank firing rule ran
        assert int((r0["since_fired"] >= 128).sum()) > 0
    if arch == "l1_resampling":  # each rank resampled from its own rows; rank 0's won
        assert int(r0["revivals"]) > 0


@pytest.mark.slow
def test_two_ranks_train_from_a_tensor_as_one_process(dp_runs):
    """``train_sae(acts, cfg)`` under torchrun (the TensorStore splits each global batch
    by rank) ends where one process does (<= 1e-5), both ranks bitwise alike."""
    _, _, two, single_tensor = dp_runs
    one = _weights(single_tensor.out_dir)
    r0, r1 = _weights(two["tensor"].out_dir, 0), _weights(two["tensor"].out_dir, 1)
    assert _max_diff(one, r0) <= 1e-5
    assert all(torch.equal(r0[n], r1[n]) for n in r0)
    assert (Path(two["tensor"].out_dir) / "sae").is_dir()


@pytest.mark.slow
def test_killed_run_resumes_under_torchrun(dp_runs):
    """(b) a 2-rank run killed after its step-8 checkpoint (at step 10), resumed under
    torchrun, ends with the uninterrupted run's weights."""
    tmp, single, two, _ = dp_runs
    cfg = _config(tmp / "killed")
    first = _launch(tmp, [_run(cfg, max_steps=10, kill=True)], 2)
    assert first.returncode != 0  # the job was killed
    assert (Path(cfg.out_dir) / "checkpoints" / "step_00000008").is_dir()
    assert not (Path(cfg.out_dir) / "sae").exists()
    second = _launch(tmp, [_run(cfg, resume=True)], 2)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    resumed, whole = _weights(cfg.out_dir), _weights(two["topk"].out_dir)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(resumed[name], whole[name]), name
    assert _max_diff(resumed, _weights(single.out_dir)) <= 1e-5


@pytest.mark.slow
def test_a_failing_rank_stops_the_job(tmp_path):
    """(c) rank 1 raising at its 3rd batch ends the job with a non-zero exit and the
    error in the output, well within the timeout (rank 0 does not hang)."""
    cfg = _config(tmp_path / "fails")
    done = _launch(tmp_path, [_run(cfg, fail_rank=1, fail_at=3)], 2)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr


@pytest.mark.slow
def test_cli_distributed_refuses_outside_torchrun(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "saehooks.training", "--out", str(tmp_path / "x")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "torchrun --nproc_per_node N -m saehooks.training" in done.stderr


# ---- fast, single-process ---------------------------------------------------------


def _fake_two_rank_sync(objective, out_a: ForwardOutput, out_b: ForwardOutput, monkeypatch):
    """``objective.sync`` on rank a's output under a fake 2-rank all-reduce that adds
    what rank b's identical call sequence contributed."""
    contributions: list[torch.Tensor] = []

    def record(t, op="sum"):
        contributions.append(t.clone())
        return t

    monkeypatch.setattr(distributed, "all_reduce_", record)
    objective.sync(out_b, 2)
    calls = iter(contributions)

    def add_other(t, op="sum"):
        t += next(calls)
        return t

    monkeypatch.setattr(distributed, "all_reduce_", add_other)
    return objective.sync(out_a, 2)


def _out(fired, loss, mse, aux, l0, min_active=0.0, rate=None) -> ForwardOutput:
    return ForwardOutput(
        torch.tensor(loss),
        torch.zeros(2, 3),
        torch.tensor(mse),
        torch.tensor(aux),
        torch.tensor(fired),
        l0,
        min_active,
        None if rate is None else torch.tensor(rate),
    )


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "kl", "l1"])
def test_sync_rules_with_a_fake_second_rank(arch, monkeypatch, tmp_path):
    """fired: any rank; l0, loss, mse, aux: means; BatchTopK's θ sample: mean; KL's
    firing rate: mean. Numbers by hand."""
    cfg = TrainConfig(architecture=arch, d_sae=4, k=2, out_dir=str(tmp_path))
    objective = objectives_pkg.make_objective(cfg)
    a = _out([True, False, False, False], 1.0, 0.5, 0.25, 3.0, 0.2, [0.1, 0.0, 0.4, 0.0])
    b = _out([False, False, True, False], 3.0, 1.5, 0.75, 5.0, 0.6, [0.3, 0.0, 0.0, 0.2])
    got = _fake_two_rank_sync(objective, a, b, monkeypatch)
    assert got.fired.tolist() == [True, False, True, False]
    assert (float(got.loss), float(got.mse), float(got.aux), got.l0) == (2.0, 1.0, 0.5, 4.0)
    expected_min = 0.4 if arch == "batchtopk" else 0.2  # only BatchTopK reduces θ's sample
    assert got.min_active == pytest.approx(expected_min, abs=1e-12)
    if arch == "kl":
        assert torch.allclose(got.firing_rate, torch.tensor([0.2, 0.0, 0.2, 0.1]))
    else:
        assert torch.equal(got.firing_rate, a.firing_rate)


def test_sync_is_a_no_op_with_one_rank(tmp_path):
    objective = objectives_pkg.make_objective(TrainConfig(d_sae=4, k=2, out_dir=str(tmp_path)))
    a = _out([True, False, False, False], 1.0, 0.5, 0.25, 3.0)
    assert objective.sync(a, 1) is a


class _Counter:
    d_in = 3

    def __init__(self, rows: int) -> None:
        self.rows, self.n = rows, 0

    def next_batch(self) -> torch.Tensor:
        start = self.n * self.rows
        self.n += 1
        return torch.arange(start * 3, (start + self.rows) * 3, dtype=torch.float32).view(-1, 3)

    def state_dict(self):
        return {}, {"n": self.n}

    def load_state_dict(self, tensors, values):
        self.n = values["n"]


def test_rank_slices_partition_each_global_batch():
    """Rank r keeps rows [r·b, (r+1)·b) of every global batch: the ranks' rows,
    concatenated in rank order, are the global batch, batch after batch."""
    slices = [RankSlice(_Counter(6), r, 3) for r in range(3)]
    whole = _Counter(6)
    for _ in range(3):
        parts = [s.next_batch() for s in slices]
        assert all(p.shape == (2, 3) for p in parts)
        assert torch.equal(torch.cat(parts), whole.next_batch())
    assert slices[1].state_dict() == ({}, {"n": 3})
    with pytest.raises(InputError, match="divisible by 4"):
        RankSlice(_Counter(6), 0, 4).next_batch()


def test_token_source_shards_rows_by_rank():
    tokens = torch.arange(7 * 2).view(7, 2)
    shards = [TokenSource(tokens, shard=(r, 2)) for r in range(2)]
    with pytest.warns(UserWarning, match="starts over"):
        rows = [[int(t[0]) // 2 for _, t in zip(range(5), s.iter_rows())] for s in shards]
    assert rows == [[0, 2, 4, 6, 0], [1, 3, 5, 1, 3]]  # rows r::2, epoch after epoch
    assert shards[0].rows_served == 5
    with pytest.raises(InputError, match="rank"):
        TokenSource(tokens, shard=(2, 2))


def test_global_batch_must_split_evenly():
    assert check_batch_divisible(4096, 4) == 1024
    with pytest.raises(InputError, match="not divisible by the 3"):
        check_batch_divisible(4096, 3)


def test_train_sae_argument_forms(tmp_path):
    acts = torch.randn(8, 4)
    with pytest.raises(InputTypeError, match="train_sae\\(activations, cfg\\)"):
        train_sae(acts, "config")
    with pytest.raises(InputError, match="something to train on"):
        train_sae(None, None, TrainConfig(out_dir=str(tmp_path)))


def test_train_sae_from_a_tensor_without_a_model(tmp_path):
    """``train_sae(acts, cfg)`` and ``train_sae(None, acts, cfg)``: the same SAE (same
    seed), the hook name as given, no model metadata."""
    acts = torch.randn(512, 8, generator=torch.Generator().manual_seed(0)) + 2.0
    cfg = TrainConfig(
        hook_name="my.custom_hook",
        d_sae=16,
        k=2,
        total_tokens=4 * 64,
        batch_size=64,
        init_tokens=64,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(tmp_path / "a"),
    )
    a = train_sae(acts, cfg)
    b_cfg = TrainConfig.from_dict({**cfg.to_dict(), "out_dir": str(tmp_path / "b")})
    b = train_sae(None, acts, b_cfg)
    assert a.cfg.hook_name == "my.custom_hook" and a.cfg.d_in == 8
    assert "model_name" not in a.cfg.metadata and "training" in a.cfg.metadata
    assert a.cfg.metadata["training"]["tokens"] == 256
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_train_saes_by_rank_in_one_process_trains_every_hook(tmp_path):
    """One process (no torchrun): every hook's SAE, each in ``<out>/<hook>/``, named
    after its hook; repeats refused."""
    acts = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(
        d_sae=16,
        k=2,
        total_tokens=2 * 64,
        batch_size=64,
        init_tokens=64,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(tmp_path),
    )
    saes = train_saes_by_rank(None, acts, cfg, ["hook.a", "hook.b"])
    assert sorted(saes) == ["hook.a", "hook.b"]
    assert [saes[h].cfg.hook_name for h in ("hook.a", "hook.b")] == ["hook.a", "hook.b"]
    assert (tmp_path / "hook.a" / "sae").is_dir() and (
        tmp_path / "hook.b" / "metrics.csv"
    ).is_file()
    with pytest.raises(InputError, match="each once"):
        train_saes_by_rank(None, acts, cfg, ["hook.a", "hook.a"])


@pytest.mark.slow
def test_cli_under_torchrun_live_model_resumes_exactly(tmp_path):
    """``torchrun -m saehooks.training`` on the reference LM (each rank runs the model
    on its own token rows): rank 0 writes the run; resumed from its step-4 checkpoint
    under torchrun (each rank restoring its own store state), it ends bitwise where
    the uninterrupted run did."""
    from safetensors.torch import load_file

    out = tmp_path / "live"
    flags = [
        "--hook=blocks.1.hook_resid_post", "--d-sae=64", "--k=4", "--tokens=1024",
        "--batch-size=128", f"--out={out}", "--checkpoint-every-tokens=512",
        "--buffer-tokens=512", "--init-tokens=256", "--no-progress-bar",
        "--matmul-dtype=float32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "saehooks.training", *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.csv", "sae"]
    (weights,) = (out / "sae").glob("*.safetensors")
    whole = load_file(weights)
    # back to the step-4 checkpoint, as if killed after writing it
    shutil.rmtree(out / "sae")
    shutil.rmtree(out / "checkpoints" / "step_00000008")
    (out / "checkpoints" / "LATEST").write_text("step_00000004\n")
    done = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = load_file(weights)
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--distributed"], "launch with `torchrun --nproc_per_node N -m saehooks.training"),
        (["--hooks=a,b", "--distribute-modules"], "run under torchrun"),
        (["--distribute-modules"], "name their hooks with --hooks"),
        (["--hooks=a,b", "--distributed"], "pass --hooks with --distribute-modules"),
    ],
)
def test_cli_distributed_flags_checked_before_any_work(
    flags, message, tmp_path, monkeypatch, capsys
):
    """``saehooks train --distributed`` outside torchrun (and the hook flags misused):
    exit 1 with a one-line error, before a model is loaded."""
    from saehooks import cli

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    assert cli.main(["train", *flags, f"--out={tmp_path / 'x'}"]) == 1
    assert message in capsys.readouterr().err
