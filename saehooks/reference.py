"""The shipped reference model and SAEs: where they live, and how to load their data.

``pretrained/`` sits beside the package in the repository (install with
``pip install -e .``); ``SAEHOOKS_PRETRAINED`` points elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from saehooks.checks import check_bool, check_int
from saehooks.errors import SAENotFoundError


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
        n_seq: keep the first ``n_seq`` rows, an int >= 1 (default: all).

    Returns:
        LongTensor ``[n_seq, n_ctx]`` on the CPU; position 0 of each row is BOS
        (``<|endoftext|>``), documents are separated by the same token.

    Raises:
        InputTypeError, InputError: ``n_seq`` is not an int >= 1.
        SAENotFoundError: the shipped file is missing (a ``FileNotFoundError``).
    """
    from safetensors.torch import load_file

    if n_seq is not None:
        n_seq = check_int(n_seq, "n_seq", minimum=1)
    path = reference_model_dir() / "eval_tokens.safetensors"
    if not path.is_file():
        raise SAENotFoundError(
            f"{path} is missing; rebuild it with python pretrained/build_reference_model.py"
        )
    tokens = load_file(str(path))["tokens"].long()
    return tokens if n_seq is None else tokens[:n_seq]


def load_train_tokens(max_rows: int | None = None, strict: bool = False) -> torch.Tensor:
    """The reference model's *training* tokens, rebuilt from this Python's stdlib.

    The reference LM was trained on the CPython standard library's ``.py`` files (see
    ``pretrained/build_reference_model.py``); those files are on every machine that
    runs Python, so the training split is rebuilt here rather than shipped: the same
    file list, the same hash rule that holds out the evaluation files, the shipped
    tokenizer, and rows ``[BOS, t_0 .. t_{n_ctx-2}]``. This is the default data of
    ``saehooks train`` on the reference model. Takes ~10 s (tokenisation).

    Args:
        max_rows: keep only the first ``max_rows`` rows (default: all, ~12.5k x 256: 3.2M tokens).
        strict: raise if this stdlib's training file count differs from the card's
            (another Python version); otherwise the rows are returned regardless --
            still code the model never saw in its evaluation split.

    Returns:
        LongTensor ``[n_rows, n_ctx]``, BOS (``<|endoftext|>``) at position 0.

    Raises:
        InputTypeError, InputError: ``max_rows`` is not an int >= 1, ``strict`` not a bool.
        SAENotFoundError: ``pretrained/build_reference_model.py`` is missing (a
            ``FileNotFoundError``).
        RuntimeError: ``strict`` and the file count differs from the card.
    """
    import importlib.util
    import re
    import sysconfig

    from tokenizers import Tokenizer

    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows", minimum=1)
    check_bool(strict, "strict")
    script = pretrained_dir() / "build_reference_model.py"
    if not script.is_file():
        raise SAENotFoundError(
            f"{script} is missing; the reference training split is "
            "rebuilt with its helpers (set SAEHOOKS_PRETRAINED?)"
        )
    spec = importlib.util.spec_from_file_location("saehooks_build_reference_model", script)
    brm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(brm)
    card = model_card()
    percent = int(re.search(r"<\s*(\d+)", card["corpus"]["split"]).group(1))
    n_ctx = int(card["architecture"]["n_ctx"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in brm.corpus_files(stdlib) if not brm.is_held_out(f, percent)]
    if strict and len(files) != card["corpus"]["files_train"]:
        raise RuntimeError(
            f"found {len(files)} training files in {stdlib}, the card says "
            f"{card['corpus']['files_train']}: another Python version's "
            "stdlib? (the card was built with Python "
            f"{card['corpus'].get('python_version', '?')})"
        )
    tok = Tokenizer.from_file(str(reference_model_dir() / "tokenizer.json"))
    rows = brm.chunk_with_bos(
        brm.encode_stream(tok, [brm.read_text(stdlib / f) for f in files]),
        n_ctx,
        tok.token_to_id(brm.EOT),
    )
    return rows if max_rows is None else rows[:max_rows]


def list_pretrained_saes(include_releases: bool = False):
    """The shipped SAEs and their held-out metrics, as a DataFrame indexed by name.

    Columns: ``architecture``, ``k``, ``hook_name``, ``d_in``, ``d_sae``, every scalar
    :class:`~saehooks.evaluation.EvalReport` field, ``training_tokens`` and
    ``training_seconds``. Load one with ``saehooks.load_sae(name)``. Shipped SAEs
    not yet evaluated (no row in ``index.json``) appear with their config only.

    Args:
        include_releases: also list every SAE of SAELens' pretrained releases (the
            registry shipped with saehooks, :mod:`saehooks.io.registry`), indexed by
            ``"<release>/<sae_id>"``, with ``source``, ``release``, ``sae_id``,
            ``model``, ``hook_name``, ``d_sae`` and ``architecture`` (where the names
            tell), ``loadable`` (False for kinds saehooks does not run), ``repo_id``,
            ``neuronpedia_id``.

    Raises:
        InputTypeError: ``include_releases`` is not a bool.
    """
    import pandas as pd

    include_releases = check_bool(include_releases, "include_releases")

    folder = pretrained_sae_dir()
    index = folder / "index.json"
    rows = json.loads(index.read_text()) if index.is_file() else []
    known = {r["name"] for r in rows}
    for cfg_path in sorted(folder.glob("*/cfg.json")):
        if cfg_path.parent.name not in known:
            cfg = json.loads(cfg_path.read_text())
            rows.append(
                {
                    "name": cfg_path.parent.name,
                    "architecture": cfg.get("architecture"),
                    "k": cfg.get("k"),
                    "d_in": cfg.get("d_in"),
                    "d_sae": cfg.get("d_sae"),
                    "hook_name": (cfg.get("metadata") or {}).get("hook_name"),
                }
            )
    for row in rows:
        training = row.pop("training", None) or {}
        row["training_tokens"] = training.get("tokens")
        row["training_seconds"] = training.get("wall_seconds")
    empty = ["name", "architecture", "k", "hook_name", "d_in", "d_sae"]
    frame = pd.DataFrame(rows, columns=None if rows else empty).set_index("name")
    if include_releases:
        from saehooks.io.registry import with_releases

        return with_releases(frame)
    return frame
