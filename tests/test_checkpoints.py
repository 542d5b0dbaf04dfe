"""Checkpoints: fall back to the newest intact one, find step folders without LATEST,
clean up what a killed write leaves, close metrics.csv on resume (issue #11 part 7).

Runs use the model-free FakeStore (d_in 16, d_sae 64): each takes well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saehooks as sh
from saehooks.errors import SAEFileError, SAEHooksError, SAENotFoundError
from saehooks.training import Trainer
from saehooks.training import checkpoint as ckpt

try:
    from tests import conftest_training as _fixtures
except ImportError:  # pytest's rootdir-relative import mode
    import conftest_training as _fixtures

FakeStore, fake_config = _fixtures.FakeStore, _fixtures.fake_config
REPO = Path(__file__).resolve().parents[1]


def _params(trainer):
    return {k: v.clone() for k, v in trainer.sae.state_dict().items()}


def _killed_run(out_dir, steps=14, **changes):
    """A run checkpointed every 4 steps (keep 2: steps 8 and 12 remain), stopped at
    ``steps`` as a kill would stop it."""
    cfg = fake_config(out_dir, **changes)
    trainer = Trainer(None, FakeStore(), cfg)
    assert trainer.run(max_steps=steps) is None
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final parameters of the whole 24-step run."""
    cfg = fake_config(tmp_path_factory.mktemp("full"))
    trainer = Trainer(None, FakeStore(), cfg)
    trainer.run()
    return _params(trainer)


def _truncate(path: Path, n_bytes: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, uninterrupted):
    cfg = _killed_run(tmp_path)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000008", "step_00000012"]
    assert (root / "LATEST").read_text().strip() == "step_00000012"
    _truncate(root / "step_00000012" / ckpt.STATE_TENSORS)
    with pytest.warns(
        UserWarning,
        match=r"step_00000008.*skipped step_00000012 "
        r"\(state.safetensors is truncated",
    ):
        resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert resumed.step_count == 8 and resumed.tokens == 8 * 64
    resumed.run()
    final = _params(resumed)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_a_missing_latest_uses_the_newest_step_folder(tmp_path, uninterrupted):
    cfg = _killed_run(tmp_path)
    (tmp_path / "checkpoints" / "LATEST").unlink()
    assert ckpt.find_checkpoint(tmp_path).name == "step_00000012"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact newest folder needs no warning
        resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert resumed.step_count == 12
    resumed.run()
    final = _params(resumed)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_a_latest_naming_a_deleted_folder_falls_back(tmp_path):
    _killed_run(tmp_path)
    root = tmp_path / "checkpoints"
    (root / "LATEST").write_text("step_00000099\n")
    with pytest.warns(
        UserWarning,
        match=r"step_00000012.*skipped step_00000099 "
        r"\(step_00000099 is missing\)",
    ):
        assert ckpt.find_checkpoint(tmp_path).name == "step_00000012"


def test_no_checkpoint_and_only_damaged_ones_are_named_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAENotFoundError, match="no checkpoint under .*pass the out_dir"):
        ckpt.find_checkpoint(tmp_path / "empty")
    _killed_run(tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    _truncate(root / "step_00000012" / ckpt.STATE_TENSORS)
    (root / "step_00000008" / ckpt.STATE_VALUES).write_text('{"step": 8, "tok')
    with pytest.raises(
        SAEFileError,
        match=r"no intact checkpoint .*step_00000012 \(state"
        r"\.safetensors is truncated.*step_00000008 "
        r"\(state\.json is not valid JSON",
    ):
        ckpt.find_checkpoint(tmp_path / "run")
    # a damaged step folder named directly is refused, not replaced by another one
    with pytest.raises(
        SAEFileError, match="is damaged: state.safetensors is truncated.*pass the run folder"
    ):
        ckpt.find_checkpoint(root / "step_00000012")


def test_train_sae_refuses_a_resume_without_checkpoint_before_loading_anything(tmp_path):
    with pytest.raises(SAENotFoundError, match="no checkpoint under"):
        sh.train_sae(
            object(),
            torch.zeros(2, 4, dtype=torch.long),
            fake_config(tmp_path),
            resume_from=tmp_path,
        )


def test_checkpoint_problem_reads_only_the_header(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    save_file({"a": torch.arange(10.0), "b": torch.ones(3, 2)}, str(path))
    assert ckpt._safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert "truncated" in ckpt._safetensors_problem(path)
    path.write_bytes(data + b"\0")
    assert "padded" in ckpt._safetensors_problem(path)
    path.write_bytes(data[:5])
    assert "no readable safetensors header" in ckpt._safetensors_problem(path)
    path.write_bytes(b"\xff" * 8 + data[8:])  # a header length larger than the file
    assert "truncated" in ckpt._safetensors_problem(path)


_WRITER = textwrap.dedent("""
    import sys, time
    import torch
    from saehooks.sae import SAE, SAEConfig
    from saehooks.training import checkpoint as ckpt

    out = sys.argv[1]
    sae = SAE(SAEConfig(d_in=4, d_sae=8))
    tensors = {"w": torch.randn(64, 64)}
    ckpt.save_checkpoint(out, 1, tensors, {"step": 1}, sae)

    def hangs(self, path, format="saelens"):
        print("WRITING", flush=True)
        time.sleep(120)

    SAE.save = hangs  # the second checkpoint is killed while its SAE is written
    ckpt.save_checkpoint(out, 2, tensors, {"step": 2}, sae)
""")


def _kill_mid_write(out_dir: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_a_process_killed_inside_a_checkpoint_write_leaves_nothing_behind(tmp_path):
    pid = _kill_mid_write(tmp_path)
    root = tmp_path / "checkpoints"
    leftover = root / f".tmp_step_00000002_{pid}"
    assert leftover.is_dir() and (leftover / ckpt.STATE_TENSORS).is_file()
    assert ckpt.find_checkpoint(tmp_path).name == "step_00000001"  # the previous one
    assert (root / "LATEST").read_text().strip() == "step_00000001"
    # a live writer's temporary folder (here: this process's) is left alone
    mine = root / f".tmp_step_00000005_{os.getpid()}"
    mine.mkdir()
    assert ckpt.remove_leftovers(tmp_path) == [leftover]
    assert not leftover.exists() and mine.is_dir()
    mine.rmdir()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_save_or_resume_removes_a_killed_writers_leftovers(tmp_path):
    pid = _kill_mid_write(tmp_path / "other")
    assert (tmp_path / "other" / "checkpoints" / f".tmp_step_00000002_{pid}").is_dir()
    ckpt.save_checkpoint(
        tmp_path / "other",
        3,
        {"w": torch.zeros(2)},
        {"step": 3},
        sh.SAE(sh.SAEConfig(d_in=4, d_sae=8)),
    )
    assert not list((tmp_path / "other" / "checkpoints").glob(".tmp_*"))
    cfg = _killed_run(tmp_path, steps=9)
    root, dead = tmp_path / "checkpoints", _dead_pid()
    (root / f".tmp_step_00000012_{dead}").mkdir()
    (root / f".trash_step_00000004_{dead}").mkdir()
    resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert not list(root.glob(".tmp_*")) and not list(root.glob(".trash_*"))
    assert resumed.step_count == 8


def test_resume_closes_metrics_csv(tmp_path, monkeypatch):
    cfg = _killed_run(tmp_path, steps=10)
    opened = []
    real_open = Path.open

    def recording_open(self, *args, **kwargs):
        f = real_open(self, *args, **kwargs)
        if self.name == "metrics.csv":
            opened.append(f)  # holding a reference: CPython cannot close it on release
        return f

    monkeypatch.setattr(Path, "open", recording_open)
    resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert len(opened) >= 2 and all(f.closed for f in opened)
    monkeypatch.undo()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in lines[1:]] == [1, 4, 8]  # rows past 8 dropped
    assert resumed.step_count == 8


def test_a_checkpoint_from_another_device_type_resumes_with_a_warning(tmp_path):
    cfg = _killed_run(tmp_path, steps=9)
    state = tmp_path / "checkpoints" / "step_00000008" / ckpt.STATE_VALUES
    values = json.loads(state.read_text())
    assert values["device_type"] == "cpu" and values["config"]["device"] is None
    values["device_type"], values["config"]["device"] = "cuda", "cuda:0"
    state.write_text(json.dumps(values))
    with pytest.warns(UserWarning, match="checkpointed on 'cuda' on 'cpu'"):
        resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert resumed.step_count == 8 and resumed.device == torch.device("cpu")


def test_a_different_config_is_refused_with_the_differences_named(tmp_path):
    cfg = _killed_run(tmp_path, steps=9)
    import dataclasses

    with pytest.raises(SAEHooksError, match=r"the run had k=4 \(now 5\).*pass the run's own"):
        Trainer(None, FakeStore(), dataclasses.replace(cfg, k=5), resume_from=tmp_path)
    # fields that may change on resume: where it logs, how often, on which device
    ok = dataclasses.replace(cfg, log_every_steps=2, device="cpu", progress_bar=False)
    assert Trainer(None, FakeStore(), ok, resume_from=tmp_path).step_count == 8


def test_the_final_sae_replaces_the_folder_whole(tmp_path):
    cfg = fake_config(tmp_path, total_tokens=4 * 64, checkpoint_every_tokens=0)
    old = tmp_path / "sae"
    old.mkdir()
    (old / "sparsity.safetensors").write_bytes(b"from an earlier run")
    (old / "notes.txt").write_text("not an SAE file")
    sae = Trainer(None, FakeStore(), cfg).run()
    assert sorted(p.name for p in old.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert torch.equal(sh.load_sae(old).W_enc, sae.W_enc)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
    extra=st.integers(0, 3),
)
def test_the_header_check_agrees_with_the_safetensors_reader(tmp_path_factory, shapes, cut, extra):
    """Plain reference: a file is intact iff safetensors reads back exactly what was
    written. Corners: empty tensors, cuts inside the 8-byte length, inside the header,
    inside the data, at the very end; and trailing bytes."""
    from safetensors.torch import load_file, save_file

    tensors = {
        f"t{i}": torch.arange(a * b, dtype=torch.float32).reshape(a, b)
        for i, (a, b) in enumerate(shapes)
    }
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file(tensors, str(path))
    data = path.read_bytes()
    cut = cut % (len(data) + 1)  # 0 … len(data): every prefix, the whole file included
    # trailing bytes only after a whole file: a cut re-filled to the full length with
    # zeros is content damage, which a header check cannot see (checkpoints are written
    # by atomic rename, so the failure to catch is a short or padded file)
    path.write_bytes(data[:cut] + (b"\0" * extra if cut == len(data) else b""))
    try:
        back = load_file(str(path))
        readable = set(back) == set(tensors) and all(
            torch.equal(back[k], tensors[k]) for k in tensors
        )
    except Exception:
        readable = False
    intact = cut == len(data) and extra == 0
    assert (ckpt._safetensors_problem(path) is None) == intact
    if intact:
        assert readable
    elif cut < len(data):
        assert not readable  # every truncation the check reports, the reader confirms


def test_a_checkpoint_written_before_the_objectives_had_their_own_state_resumes(tmp_path):
    # older checkpoints kept theta / log_gain at the top of state.json and kl_running
    # among the tensors; the objective reads them from there
    from safetensors.torch import load_file, save_file

    cfg = _killed_run(
        tmp_path,
        steps=9,
        architecture="kl",
        kl_rho=0.05,
        target_l0=3.0,
        sparsity_warmup_fraction=0.0,
    )
    folder = tmp_path / "checkpoints" / "step_00000008"
    values = json.loads((folder / ckpt.STATE_VALUES).read_text())
    tensors = load_file(str(folder / ckpt.STATE_TENSORS))
    new_style = Trainer(None, FakeStore(), cfg, resume_from=tmp_path).objective
    assert new_style.log_gain != 0.0 and float(new_style.running.sum()) > 0
    objective = values.pop("objective")
    values.update(theta=0.0, log_gain=objective["log_gain"])
    tensors["kl_running"] = tensors.pop("objective.running")
    (folder / ckpt.STATE_VALUES).write_text(json.dumps(values))
    save_file(tensors, str(folder / ckpt.STATE_TENSORS))
    old_style = Trainer(None, FakeStore(), cfg, resume_from=tmp_path).objective
    assert old_style.log_gain == new_style.log_gain
    assert torch.equal(old_style.running, new_style.running)
