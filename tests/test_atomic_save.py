"""Saving replaces the whole folder or nothing (issue #11 part 1).

A save killed at any moment leaves a folder that loads as exactly the previous SAE or
the new one (config, every tensor, the sparsity file or its absence), never a mix;
leftovers are cleaned up by the next save or load; no file of the previous SAE leaks
into the new one; writing one format over another needs ``overwrite=True``.

Crashes are made in forked children (cheap: the parent has already imported torch):
``os._exit`` at every file-system call of a save (before and after each), and
SIGKILL at random moments of a loop of saves.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

import saehooks as sh
from saehooks.errors import InputError, SAENotFoundError
from saehooks.io import atomic, save_sae

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

D_IN, D_SAE = 32, 256


def make_sae(k: int, seed: int, density: bool) -> sh.SAE:
    """Same shapes for both SAEs, so a mix of their files would load without a shape
    error: only exact comparison can tell."""
    cfg = sh.SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture="topk",
        k=k,
        hook_name="blocks.1.hook_resid_post",
        metadata={"seed": seed, "model_name": "reference-lm"},
    )
    sae = sh.SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    sae.feature_density = torch.rand(D_SAE, generator=gen) + 1e-3 if density else None
    return sae


A = make_sae(16, seed=1, density=True)
B = make_sae(32, seed=2, density=False)


def matches(back: sh.SAE, sae: sh.SAE) -> bool:
    """Exactly this SAE: config, every tensor, and the sparsity file (or none)."""
    if back.cfg != sae.cfg:
        return False
    if any(not torch.equal(back.state_dict()[n], v) for n, v in sae.state_dict().items()):
        return False
    if (back.feature_density is None) != (sae.feature_density is None):
        return False
    return sae.feature_density is None or torch.allclose(
        back.feature_density, sae.feature_density, rtol=1e-6
    )


def which(folder: Path, candidates: dict[str, sh.SAE]) -> str:
    back = sh.load_sae(folder)
    found = [name for name, sae in candidates.items() if matches(back, sae)]
    assert len(found) == 1, f"the folder loads as none of {sorted(candidates)}: a mix"
    return found[0]


def siblings(folder: Path) -> list[str]:
    """Everything beside (and including) ``folder``."""
    return sorted(os.listdir(folder.parent)) if folder.parent.is_dir() else []


# ---- crash at every file-system call ---------------------------------------------------
PATCHED = ("mkdir", "rename", "replace", "fsync", "unlink", "rmdir")


def run_save_crashing_at(
    step: int | None, sae: sh.SAE, folder: Path, fmt: str, overwrite: bool, count_file: Path
) -> int:
    """Fork a child that saves and calls ``os._exit`` just before or after its
    ``step``-th file-system call (None: never); returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            calls = [0]

            def tick() -> None:
                calls[0] += 1
                if calls[0] == step:
                    os._exit(77)  # as abrupt as SIGKILL: no cleanup, no finally

            def wrap(fn):
                def wrapped(*args, **kwargs):
                    tick()
                    out = fn(*args, **kwargs)
                    tick()
                    return out

                return wrapped

            for name in PATCHED:
                setattr(os, name, wrap(getattr(os, name)))
            save_sae(sae, folder, format=fmt, overwrite=overwrite)
            count_file.write_text(str(calls[0]))
        except BaseException:  # noqa: BLE001 - report through the exit status
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


SCENARIOS = {
    "A then B (sparsity file goes away)": ("A", B, "saelens", False),
    "B then A (sparsity file appears)": ("B", A, "saelens", False),
    "first save": (None, A, "saelens", False),
    "saelens A replaced by sparsify B": ("A", B, "sparsify", True),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_crash_at_any_file_system_call_leaves_one_complete_sae(tmp_path, scenario):
    before, new, fmt, overwrite = SCENARIOS[scenario]
    candidates = {"A": A, "B": B}
    folder = tmp_path / "run" / "sae"
    count_file = tmp_path / "count"

    def reset() -> None:
        if before is not None:
            save_sae(candidates[before], folder, overwrite=True)
        else:
            shutil.rmtree(folder.parent, ignore_errors=True)

    reset()
    assert run_save_crashing_at(None, new, folder, fmt, overwrite, count_file) == 0
    n_steps = int(count_file.read_text())
    assert n_steps >= 20  # writes, fsyncs, three renames, removal of the old folder
    outcomes = set()
    for step in range(1, n_steps + 1):
        reset()
        assert run_save_crashing_at(step, new, folder, fmt, overwrite, count_file) == 77
        if before is None and atomic.current(folder) is None:
            outcomes.add("nothing")  # killed before the new folder was complete
            with pytest.raises(SAENotFoundError):
                sh.load_sae(folder)
        else:
            outcomes.add(which(folder, candidates))
        # the load settled the interrupted save: no temporary or old folder is left
        assert siblings(folder) == (["sae"] if atomic.current(folder) else []), step
    new_name = "A" if new is A else "B"
    assert outcomes == {before or "nothing", new_name}


# ---- SIGKILL at random moments ---------------------------------------------------------
def _save_forever(folder: Path) -> None:
    while True:
        for sae in (A, B):
            save_sae(sae, folder)


def _fork(target, *args) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        finally:
            os._exit(0)
    return pid


def test_sigkill_at_random_moments_never_leaves_a_mix(tmp_path):
    folder = tmp_path / "sae"
    start = time.perf_counter()
    save_sae(A, folder)
    save_sae(B, folder)
    one_save = (time.perf_counter() - start) / 2
    rng = random.Random(0)
    seen = []
    for _ in range(25):  # >= 20 kills, each at a random moment of a save loop
        pid = _fork(_save_forever, folder)
        time.sleep(rng.uniform(0.0, 4 * one_save))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
        seen.append(which(folder, {"A": A, "B": B}))
        assert siblings(folder) == ["sae"]
    assert set(seen) == {"A", "B"}, seen


def test_a_reader_during_saves_sees_one_sae_at_a_time(tmp_path):
    folder = tmp_path / "sae"
    save_sae(A, folder)
    pid = _fork(_save_forever, folder)
    try:
        seen = [which(folder, {"A": A, "B": B}) for _ in range(40)]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert set(seen) <= {"A", "B"} and len(seen) == 40


# ---- what a save replaces ---------------------------------------------------------------
def test_a_stale_sparsity_file_never_attaches_to_the_new_sae(tmp_path):
    big = make_sae(16, seed=3, density=True)
    save_sae(big, tmp_path / "sae")
    small_cfg = sh.SAEConfig(d_in=D_IN, d_sae=64, architecture="topk", k=8)
    small = sh.SAE(small_cfg)
    save_sae(small, tmp_path / "sae")  # no density: the old 256-wide file must go
    assert sorted(os.listdir(tmp_path / "sae")) == ["cfg.json", "sae_weights.safetensors"]
    back = sh.load_sae(tmp_path / "sae")
    assert back.feature_density is None and back.cfg.d_sae == 64
    assert siblings(tmp_path / "sae") == ["sae"]


def test_sparsify_over_a_saelens_folder_is_refused_without_overwrite(tmp_path):
    folder = tmp_path / "sae"
    save_sae(A, folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    with pytest.raises(InputError, match=r"holds a saelens SAE.*overwrite=True"):
        save_sae(B, folder, format="sparsify")
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert siblings(folder) == ["sae"]
    save_sae(B, folder, format="sparsify", overwrite=True)
    assert sorted(os.listdir(folder)) == ["cfg.json", "sae.safetensors"]
    assert which(folder, {"A": A, "B": B}) == "B"
    with pytest.raises(InputError, match="holds a sparsify SAE"):
        save_sae(A, folder)


def test_a_folder_with_other_files_is_refused_without_overwrite(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"holds no SAE \(found \['notes.txt'\]\)"):
        save_sae(A, folder)
    assert os.listdir(folder) == ["notes.txt"]
    save_sae(A, tmp_path / "empty")  # a new folder
    (tmp_path / "made_empty").mkdir()
    save_sae(A, tmp_path / "made_empty")  # an empty one
    save_sae(A, tmp_path / "empty")  # the same format over itself: a normal re-save
    (tmp_path / "empty" / "README.md").write_text("mine")
    with pytest.raises(InputError, match=r"also \['README.md'\]"):
        save_sae(B, tmp_path / "empty")
    save_sae(B, tmp_path / "empty", overwrite=True)
    assert "README.md" not in os.listdir(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        save_sae(A, tmp_path / "file", overwrite=True)


def test_the_working_directory_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for where in (".", "..", str(tmp_path / "work")):
        with pytest.raises(InputError, match="current working directory"):
            save_sae(A, where, overwrite=True)
    save_sae(A, "sae")  # a relative sub-folder is fine
    assert which(tmp_path / "work" / "sae", {"A": A}) == "A"
    assert os.listdir(tmp_path / "work") == ["sae"]


def test_a_failing_writer_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    folder = tmp_path / "sae"
    save_sae(A, folder)
    from saehooks.io import saelens

    calls = []

    def fail_on_second(path, tensors, metadata=None, _real=saelens.write_safetensors):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        _real(path, tensors, metadata)

    monkeypatch.setattr(saelens, "write_safetensors", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        save_sae(make_sae(16, seed=9, density=True), folder)
    assert which(folder, {"A": A}) == "A"
    assert siblings(folder) == ["sae"]


def test_leftovers_of_a_killed_save_are_settled_by_the_next_load(tmp_path):
    folder = tmp_path / "sae"
    save_sae(A, folder)
    # the state between the two renames: no target, a complete .new and the .old
    os.rename(folder, tmp_path / ".sae.old-0123456789abcdef")
    save_sae(B, tmp_path / "elsewhere")
    os.rename(tmp_path / "elsewhere", tmp_path / ".sae.new-fedcba9876543210")
    (tmp_path / ".sae.tmp-00000000000000aa").mkdir()
    assert atomic.current(folder) == tmp_path / ".sae.new-fedcba9876543210"
    assert which(folder, {"A": A, "B": B}) == "B"  # the complete new one wins
    assert siblings(folder) == ["sae"]
    # an incomplete .tmp beside an intact folder is deleted, the folder kept
    (tmp_path / ".sae.tmp-00000000000000bb").mkdir()
    (tmp_path / ".sae.tmp-00000000000000bb" / "cfg.json").write_text(json.dumps({"k": 1}))
    assert which(folder, {"A": A, "B": B}) == "B"
    assert siblings(folder) == ["sae"]
    # only the .old survived (killed after renaming the target away, .new lost)
    os.rename(folder, tmp_path / ".sae.old-0123456789abcdef")
    assert which(folder, {"A": A, "B": B}) == "B"
    assert siblings(folder) == ["sae"]


def test_a_look_alike_sibling_is_not_taken_for_a_leftover(tmp_path):
    save_sae(A, tmp_path / "sae")
    keep = [
        tmp_path / ".sae.old-notours",
        tmp_path / "sae.old-0123456789abcdef",
        tmp_path / ".sae.tmp-0123456789abcdef.tmp-0123456789abcdef",
    ]
    for path in keep:
        path.mkdir()
    save_sae(B, tmp_path / "sae")
    sh.load_sae(tmp_path / "sae")
    assert all(path.is_dir() for path in keep)


def test_loading_a_file_asks_for_its_folder(tmp_path):
    save_sae(A, tmp_path / "sae")
    with pytest.raises(
        SAENotFoundError,
        match=r"is a file; load_sae takes the SAE folder "
        r"that holds it: pass the folder",
    ):
        sh.load_sae(tmp_path / "sae" / "cfg.json")
    with pytest.raises(SAENotFoundError) as info:
        sh.load_sae(tmp_path / "sae" / "sae_weights.safetensors")
    assert str(tmp_path / "sae") in str(info.value) and "did you mean" not in str(info.value)
