"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``<out_dir>/checkpoints/step_<step>/`` holding

* ``sae/`` -- the SAE with the input normalisation folded in (SAELens format), usable
  on raw activations like any saved SAE;
* ``state.safetensors`` -- training-space parameters, Adam moments, dead-latent
  counters, RNG states and the activation store's buffers;
* ``state.json`` -- step, tokens, scale, store cursor and the other scalars.

It is written under a temporary name and renamed into place, and only then does the
file ``checkpoints/LATEST`` (itself replaced atomically) point at it, so a run killed
at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from saehooks.io.common import (
    SAEFileError,
    atomic_write_text,
    read_json,
    read_safetensors,
    write_safetensors,
)
from saehooks.sae import SAE

LATEST = "LATEST"
STATE_TENSORS = "state.safetensors"
STATE_VALUES = "state.json"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir: str | Path, step: int, tensors: dict[str, Tensor],
                    values: dict[str, Any], sae: SAE, keep: int = 2) -> Path:
    """Write a checkpoint atomically and point ``LATEST`` at it.

    Args:
        out_dir: the run folder.
        step: optimizer steps done.
        tensors: training state tensors (any shapes).
        values: JSON-able training state.
        sae: the folded SAE (raw-activation space).
        keep: how many checkpoints to keep (older ones are deleted).

    Returns:
        The checkpoint folder.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
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


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run folder, its ``checkpoints/`` or a step folder.

    Raises:
        FileNotFoundError: no finished checkpoint there.
    """
    path = Path(path)
    if (path / STATE_VALUES).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.is_file():
            step_dir = root / latest.read_text().strip()
            if (step_dir / STATE_VALUES).is_file():
                return step_dir
    raise FileNotFoundError(f"no checkpoint under {str(path)!r}: expected "
                            f"checkpoints/{LATEST} written by a training run")


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, values)`` of the checkpoint at or under ``path``.

    Raises:
        FileNotFoundError: no checkpoint.
        SAEFileError: a corrupt checkpoint.
    """
    folder = find_checkpoint(path)
    tensors = read_safetensors(folder / STATE_TENSORS)
    values = read_json(folder / STATE_VALUES)
    if "step" not in values:
        raise SAEFileError(f"{folder / STATE_VALUES}: not a training checkpoint (no 'step')")
    return tensors, values
