"""evaluate and ``saehooks eval`` under torchrun (issue #14 §3).

One launch of ``python -m torch.distributed.run --standalone --nproc_per_node 2`` (gloo,
``OMP_NUM_THREADS=1``) runs a worker that evaluates two SAEs at once on rows the ranks
share unevenly (5 rows, batches of 2: rank 0 gets 4, rank 1 gets 1), one row (rank 1
gets none), and ``saehooks eval --json`` (rank 0 prints, rank 1 prints nothing). Every
rank's report must equal the one-process report on the same tokens to 1e-9 relative.
The fast tests check the sum reduction with a fake two-rank all-reduce.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import random_sae

from saehooks import distributed, evaluation, metrics
from saehooks.cli import build_parser, run
from saehooks.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 240
HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_mlp_out")
CLI_ARGS = ["eval", "--n-tokens", "192", "--n-ctx", "64", "--batch-size", "1", "--json"]

WORKER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])  # the tests folder: conftest.random_sae
    import torch
    from conftest import random_sae

    import saehooks as sh
    from saehooks import distributed
    from saehooks.cli import main

    out = Path(sys.argv[2])
    distributed.init_from_env()
    rank = distributed.rank()
    assert distributed.world_size() == 2
    model = sh.load_model()
    saes = [random_sae(k=16, hook_name=h, seed=i) for i, h in enumerate({hooks!r})]
    tokens = sh.load_eval_tokens(5)[:, :64]
    reports = sh.evaluate(model, saes, tokens, batch_size=2, progress=False)
    one_row = sh.evaluate(model, saes[0], tokens[:1], batch_size=2, progress=False)
    result = {{
        "reports": {{k: r.to_dict() for k, r in reports.items()}},
        "one_row": one_row.to_dict(),
    }}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main({cli!r}[:1] + ["--sae", sys.argv[3]] + {cli!r}[1:])
    result["cli"] = {{"code": code, "stdout": printed.getvalue()}}
    (out / f"rank{{rank}}.json").write_text(json.dumps(result))
    """
).format(hooks=HOOKS, cli=CLI_ARGS)


def _cli(sae_dir: Path, model) -> int:
    """``saehooks eval --sae sae_dir ...`` in this process, on the loaded model."""
    return run(
        build_parser().parse_args([CLI_ARGS[0], "--sae", str(sae_dir), *CLI_ARGS[1:]]), model
    )


def _assert_close(got: dict, want: dict, rel: float = 1e-6) -> None:
    """Equal to float32 rounding: each rank runs the model on its own rows, and CPUs with
    AVX-512 kernels round a row's float32 logits by its place in the batch (measured:
    3e-8 relative on the clean CE); the sums themselves are float64."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert torch.allclose(
                torch.tensor(got[key], dtype=torch.float64),
                torch.tensor(value, dtype=torch.float64),
                rtol=rel,
                atol=1e-12,
            ), key
        else:
            assert got[key] == value, key


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_eval")
    random_sae(k=16).save(tmp / "sae")
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAEHOOKS_DIST_TIMEOUT": "60"}
    env["PYTHONPATH"] = str(ROOT)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(ROOT / "tests"), str(tmp), str(tmp / "sae")],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    return tmp, ranks


@pytest.mark.slow
def test_every_rank_returns_the_one_process_report(model, eval_tokens, launched):
    _, ranks = launched
    saes = [random_sae(k=16, hook_name=h, seed=i) for i, h in enumerate(HOOKS)]
    tokens = eval_tokens[:5, :64]
    single = evaluate(model, saes, tokens, batch_size=2, progress=False)
    one_row = evaluate(model, saes[0], tokens[:1], batch_size=2, progress=False)
    for result in ranks:
        assert list(result["reports"]) == list(HOOKS)
        for name in HOOKS:
            _assert_close(result["reports"][name], single[name].to_dict())
        _assert_close(result["one_row"], one_row.to_dict())  # rank 1 had no row
    # the SAEs did something: the comparison is not between two empty reports
    report = single[HOOKS[0]]
    assert report.ce_loss_spliced > report.ce_loss_clean and report.n_tokens > 200


@pytest.mark.slow
def test_cli_eval_under_torchrun_prints_once(launched, model, capsys):
    tmp, ranks = launched
    assert ranks[0]["cli"]["code"] == 0 and ranks[1]["cli"]["code"] == 0
    assert ranks[1]["cli"]["stdout"] == ""  # rank 0 prints
    printed = json.loads(ranks[0]["cli"]["stdout"])
    assert _cli(tmp / "sae", model) == 0
    _assert_close(printed, json.loads(capsys.readouterr().out))


# ---- the reduction, with a fake two-rank all-reduce ----------------------------------------
def _sums(x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor, ce: torch.Tensor):
    losses = metrics.TokenSums("ce")
    recon = metrics.ReconstructionSums(x.shape[1], acts.shape[1])
    for part in range(0, x.shape[0], 3):
        rows = slice(part, part + 3)
        recon.add(x[rows], x_hat[rows], acts[rows])
        losses.add(ce=ce[rows])
    return losses, recon


def test_all_reduce_sums_merges_two_ranks_as_one(monkeypatch):
    """Each rank's sums, reduced by a fake all-reduce over two sets of sums, equal the
    sums of all rows in one process (Chan's merge of mean and co-moment; peaks max)."""
    gen = torch.Generator().manual_seed(0)
    n, d, d_sae = 11, 5, 7
    x = torch.randn(n, d, generator=gen) * 3 + 100.0  # a large mean: the merge must centre
    x_hat = x + 0.1 * torch.randn(n, d, generator=gen)
    acts = torch.relu(torch.randn(n, d_sae, generator=gen))
    acts[:, 0] = 0.0  # a dead latent
    ce = torch.rand(n, generator=gen)
    split = 4  # rank 0: rows 0..3, rank 1: rows 4..10
    want_losses, want = _sums(x, x_hat, acts, ce)
    ranks = [
        _sums(x[:split], x_hat[:split], acts[:split], ce[:split]),
        _sums(x[split:], x_hat[split:], acts[split:], ce[split:]),
    ]
    # two threads play the two ranks; each collective adds (or maximises) the tensors
    # both handed to their matching call
    barrier = threading.Barrier(2, timeout=30)
    handed: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    local = threading.local()

    def fake_all_reduce_(tensor, op="sum"):
        mine, theirs = handed[local.rank], handed[1 - local.rank]
        mine.append(tensor.clone())
        barrier.wait()
        other = theirs[len(mine) - 1]
        combined = torch.maximum(tensor, other) if op == "max" else tensor + other
        barrier.wait()
        return tensor.copy_(combined)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "all_reduce_", fake_all_reduce_)

    def run(rank):
        local.rank = rank
        evaluation._all_reduce_sums([ranks[rank][0]], [ranks[rank][1]])

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(handed[0]) == len(handed[1]) == 3  # three collectives
    for losses, recon in ranks:
        assert losses.count == want_losses.count == n
        assert torch.allclose(losses.sums["ce"], want_losses.sums["ce"], rtol=1e-12, atol=0)
        assert recon.n == want.n and recon.counts.n_tokens == n
        assert torch.allclose(recon.mean, want.mean, rtol=1e-13, atol=0)
        assert torch.allclose(recon.comoment, want.comoment, rtol=1e-9, atol=1e-9)
        for field in ("sse", "l0", "l1"):
            assert torch.allclose(getattr(recon, field), getattr(want, field), rtol=1e-12)
        assert torch.equal(recon.counts.fired, want.counts.fired)
        assert torch.equal(recon.counts.peak, want.counts.peak)
        assert torch.allclose(recon.counts.total, want.counts.total, rtol=1e-12)
        got, expected = recon.result(), want.result()
        for key in ("fvu", "mse", "l0", "l1", "dead_fraction", "pca_fvu", "n_tokens"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


def test_rank_rows_are_whole_batches(monkeypatch):
    """Rows go to ranks in whole batches, so each forward pass sees the rows it sees in
    one process; all rows in one process."""
    assert evaluation._rank_rows(5, 2) == range(0, 5)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank, want in ((0, range(0, 4)), (1, range(4, 5))):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        assert evaluation._rank_rows(5, 2) == want
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert evaluation._rank_rows(1, 2) == range(1, 1)  # no row for rank 1
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    covered = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        covered += list(evaluation._rank_rows(23, 4))
    assert covered == list(range(23))


def test_cli_eval_prints_nothing_off_rank_0(model, tmp_path, monkeypatch):
    random_sae(k=16).save(tmp_path / "sae")
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _cli(tmp_path / "sae", model) == 0
    assert printed.getvalue() == ""
