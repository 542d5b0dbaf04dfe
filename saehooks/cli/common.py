"""What every command shares: the default SAE, the model/SAE/threads options, and the
one rule for choosing held-out token rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

DEFAULT_SAE = "topk-k32-blocks.2.hook_resid_post"
"""The shipped SAE every command uses unless ``--sae`` names another (or a folder)."""


@dataclass(kw_only=True)
class ModelOptions:
    """Options of every command that runs a model with an SAE."""

    sae: str = DEFAULT_SAE
    """shipped SAE name, SAE folder, hf://owner/repo/folder, or a SAELens release as
    release/sae_id (e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre)"""
    model: str | None = None
    """model directory or name (default: the shipped reference LM)"""
    threads: int = 0
    """torch CPU threads (0: torch's default; on a busy 2-core machine 1 is often fastest;
    with 2 or more on a shared machine, start the command with OMP_WAIT_POLICY=PASSIVE set:
    OpenMP reads it only at start-up; on a loaded machine 2 threads measured 0.4x the
    1-thread training speed with its default busy-waiting, 0.75-1.16x with PASSIVE)"""
    batch_size: int = 8
    """token rows per forward pass"""


def set_threads(threads: int) -> None:
    """Apply ``--threads`` (0 leaves torch's default).

    ``OMP_WAIT_POLICY`` cannot be set from here: torch's OpenMP runtime reads it when
    ``torch`` is imported, before any option is parsed (benchmarks/train_throughput.py
    measures both policies in fresh processes)."""
    from saehooks.checks import check_int

    threads = check_int(threads, "--threads", minimum=0)
    if threads:
        torch.set_num_threads(threads)


def held_out_rows(n_rows: int | None) -> Tensor:
    """The held-out rows a command runs on: all of them for ``None`` (or more than there
    are), else ``n_rows`` rows spread evenly over the held-out set (first and last
    included), so a small sample covers many source files. The one row rule of the CLI.
    """
    from saehooks.reference import load_eval_tokens

    rows = load_eval_tokens()
    if n_rows is None or n_rows >= len(rows):
        return rows
    if n_rows < 1:
        from saehooks.errors import InputError

        raise InputError(f"the number of rows must be >= 1, got {n_rows}")
    index = torch.linspace(0, len(rows) - 1, n_rows).round().long()
    return rows[index]


def load(options: ModelOptions, model: nn.Module | None = None):
    """``(model, sae)`` for a command: the model (unless given), the SAE on its device."""
    import saehooks as sh

    sae = sh.load_sae(options.sae)  # a bad name fails before the model loads
    model = sh.load_model(options.model) if model is None else model
    return model, sae.to(str(next(model.parameters()).device))
