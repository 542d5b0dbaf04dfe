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
