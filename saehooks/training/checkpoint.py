"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``<out_dir>/checkpoints/step_<step>/`` holding

* ``sae/`` -- the SAE with the input normalisation folded in (SAELens format), usable
  on raw activations like any saved SAE;
* ``state.safetensors`` -- training-space parameters, Adam moments, dead-latent
  counters, RNG states and the activation store's buffers;
* ``state.json`` -- step, tokens, scale, store cursor and the other scalars.

It is written under a temporary name and renamed into place, and only then does the
file ``checkpoints/LATEST`` (itself replaced atomically) point at it, so a run killed
at any moment leaves the previous checkpoint intact. What a kill can leave behind
(``.tmp_step_*`` / ``.trash_step_*`` folders of a dead process) is removed by the next
save or resume (:func:`remove_leftovers`).

Resuming reads the checkpoint ``LATEST`` names; if that one is damaged (truncated,
half deleted) or ``LATEST`` is missing, it falls back to the newest intact step folder,
with a warning that names what it skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from saehooks.errors import SAEFileError, SAENotFoundError
from saehooks.io.common import (
    atomic_write_text,
    read_json,
    read_safetensors,
    write_safetensors,
)
from saehooks.sae import SAE

LATEST = "LATEST"
STATE_TENSORS = "state.safetensors"
STATE_VALUES = "state.json"
_LEFTOVER_PREFIXES = (".tmp_step_", ".trash_step_")


def checkpoint_root(out_dir: str | Path) -> Path:
    """``<out_dir>/checkpoints``."""
    return Path(out_dir) / "checkpoints"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: leave its files alone
    return True


def remove_leftovers(out_dir: str | Path) -> list[Path]:
    """Delete the temporary folders a killed checkpoint write left in ``<out_dir>/checkpoints``.

    A folder ``.tmp_step_<step>_<pid>`` or ``.trash_step_<step>_<pid>`` is removed when
    process ``pid`` no longer runs (folders of a live writer, this process included,
    are kept).

    Returns:
        The folders removed.
    """
    root = checkpoint_root(out_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        if not path.name.startswith(_LEFTOVER_PREFIXES):
            continue
        pid = path.name.rsplit("_", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    tensors: dict[str, Tensor],
    values: dict[str, Any],
    sae: SAE,
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically and point ``LATEST`` at it.

    Args:
        out_dir: the run folder.
        step: optimizer steps done.
        tensors: training state tensors (any shapes, any device; stored on CPU).
        values: JSON-able training state.
        sae: the folded SAE (raw-activation space).
        keep: how many checkpoints to keep (older ones are deleted).

    Returns:
        The checkpoint folder.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    name = f"step_{step:08d}"
    tmp = root / f".tmp_{name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_safetensors(tmp / STATE_TENSORS, tensors)
    atomic_write_text(tmp / STATE_VALUES, json.dumps(values, indent=1) + "\n")
    sae.save(str(tmp / "sae"))
    final = root / name
    if final.exists():  # a rerun after a resume reached this step again
        trash = root / f".trash_{name}_{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(root / LATEST, name + "\n")
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None if it is), from its header
    alone: the data offsets it declares must end exactly at the end of the file."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name} is truncated ({size} bytes; its header alone says more)"
            header = json.loads(f.read(n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{path.name} has no readable safetensors header"
    if 8 + n + end != size:
        return f"{path.name} is truncated or padded ({size} bytes, its header says {8 + n + end})"
    return None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not an intact checkpoint, or None if it is.

    Checks, without reading the tensors: ``state.json`` parses and holds ``step``;
    ``state.safetensors`` is complete (see the header check above).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder.name} is missing"
    values = folder / STATE_VALUES
    if not values.is_file():
        return f"{STATE_VALUES} is missing"
    try:
        step_ok = "step" in json.loads(values.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"{STATE_VALUES} is not valid JSON (truncated?)"
    if not step_ok:
        return f"{STATE_VALUES} has no 'step' (not a training checkpoint)"
    return _safetensors_problem(folder / STATE_TENSORS)


def _candidates(path: Path) -> tuple[list[Path], bool]:
    """Checkpoint folders under ``path``, the one ``LATEST`` names first, then the other
    ``step_*`` folders newest first; and whether ``path`` is itself a step folder."""
    if (path / STATE_VALUES).is_file() or path.name.startswith("step_"):
        return [path], True
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found: list[Path] = []
    latest = root / LATEST
    if latest.is_file():
        named = latest.read_text().strip()
        if named:
            found.append(root / named)
    steps = sorted(
        (p for p in root.glob("step_*") if p.is_dir()), key=lambda p: p.name, reverse=True
    )
    found += [p for p in steps if p not in found]
    return found, False


def find_checkpoint(path: str | Path) -> Path:
    """The newest intact checkpoint for a run folder, its ``checkpoints/`` or a step folder.

    The folder ``checkpoints/LATEST`` names is preferred; if it is damaged or
    ``LATEST`` is missing, the newest intact ``step_*`` folder is taken, with a
    ``UserWarning`` naming each one skipped and why. A step folder given directly is
    used as it is (no fallback).

    Raises:
        SAENotFoundError: no checkpoint there at all.
        SAEFileError: every checkpoint there is damaged (the message says how), or the
            step folder given is.
    """
    path = Path(path)
    candidates, direct = _candidates(path)
    if not candidates:
        raise SAENotFoundError(
            f"no checkpoint under {str(path)!r}: expected a run folder "
            f"with checkpoints/step_* folders written by a training run; "
            "pass the out_dir of a run that saved a checkpoint, or train "
            "without resume_from"
        )
    skipped: list[str] = []
    for folder in candidates:
        problem = checkpoint_problem(folder)
        if problem is None:
            if skipped:
                warnings.warn(
                    f"resuming from {folder.name}, the newest intact checkpoint; "
                    f"skipped {'; '.join(skipped)}",
                    stacklevel=2,
                )
            return folder
        skipped.append(f"{folder.name} ({problem})")
        if direct:
            raise SAEFileError(
                f"checkpoint {str(folder)!r} is damaged: {problem}; pass the "
                "run folder instead to fall back to an older checkpoint"
            )
    raise SAEFileError(
        f"no intact checkpoint under {str(path)!r}: {'; '.join(skipped)}; "
        "start the run afresh (without resume_from)"
    )


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, values)`` of the newest intact checkpoint at or under ``path``
    (see :func:`find_checkpoint`; tensors on the CPU).

    Raises:
        SAENotFoundError: no checkpoint.
        SAEFileError: no intact checkpoint.
    """
    folder = find_checkpoint(path)
    tensors = read_safetensors(folder / STATE_TENSORS)
    values = read_json(folder / STATE_VALUES)
    if "step" not in values:
        raise SAEFileError(f"{folder / STATE_VALUES}: not a training checkpoint (no 'step')")
    return tensors, values
