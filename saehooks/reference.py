"""The shipped reference model and SAEs: where they live, and how to load their data.

``pretrained/`` sits beside the package in the repository (install with
``pip install -e .``); ``SAEHOOKS_PRETRAINED`` points elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def pretrained_dir() -> Path:
    """The folder holding the reference model and SAEs."""
    env = os.environ.get("SAEHOOKS_PRETRAINED")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "pretrained"


def reference_model_dir() -> Path:
    """Hugging Face directory of the shipped reference LM."""
    return pretrained_dir() / "reference-lm"


def pretrained_sae_dir() -> Path:
    """Folder of the shipped SAEs, one sub-folder each."""
    return pretrained_dir() / "saes"


def model_card() -> dict:
    """The reference model's card (``model_card.json``) as a dict."""
    return json.loads((reference_model_dir() / "model_card.json").read_text())


def load_eval_tokens(n_seq: int | None = None) -> torch.Tensor:
    """Held-out evaluation tokens of the reference model.

    Args:
        n_seq: keep the first ``n_seq`` rows (default: all).

    Returns:
        LongTensor ``[n_seq, n_ctx]``; position 0 of each row is BOS
        (``<|endoftext|>``), documents are separated by the same token.

    Raises:
        FileNotFoundError: the shipped file is missing.
    """
    from safetensors.torch import load_file

    path = reference_model_dir() / "eval_tokens.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with "
                                "python pretrained/build_reference_model.py")
    tokens = load_file(str(path))["tokens"].long()
    return tokens if n_seq is None else tokens[:n_seq]


def list_pretrained_saes():
    """The shipped SAEs and their held-out metrics, as a DataFrame indexed by name.

    Columns: ``architecture``, ``k``, ``hook_name``, ``d_in``, ``d_sae``, every scalar
    :class:`~saehooks.evaluation.EvalReport` field, ``training_tokens`` and
    ``training_seconds``. Load one with ``saehooks.load_sae(name)``. Shipped SAEs
    not yet evaluated (no row in ``index.json``) appear with their config only.
    """
    import pandas as pd

    folder = pretrained_sae_dir()
    index = folder / "index.json"
    rows = json.loads(index.read_text()) if index.is_file() else []
    known = {r["name"] for r in rows}
    for cfg_path in sorted(folder.glob("*/cfg.json")):
        if cfg_path.parent.name not in known:
            cfg = json.loads(cfg_path.read_text())
            rows.append({"name": cfg_path.parent.name, "architecture": cfg.get("architecture"),
                         "k": cfg.get("k"), "d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"),
                         "hook_name": (cfg.get("metadata") or {}).get("hook_name")})
    for row in rows:
        training = row.pop("training", None) or {}
        row["training_tokens"] = training.get("tokens")
        row["training_seconds"] = training.get("wall_seconds")
    empty = ["name", "architecture", "k", "hook_name", "d_in", "d_sae"]
    return pd.DataFrame(rows, columns=None if rows else empty).set_index("name")
