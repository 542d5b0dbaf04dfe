"""EleutherAI sparsify's layout: one folder per hook point with ``cfg.json`` +
``sae.safetensors``.

Source: EleutherAI/sparsify, ``SparseCoder.save_to_disk`` / ``load_from_disk``.
``cfg.json`` is the ``SparseCoderConfig`` (``activation``, ``k``, ``num_latents`` or
``expansion_factor``, ``normalize_decoder``, ``multi_topk``, ``skip_connection``,
``transcode``) plus ``d_in``. Tensors: ``encoder.weight [d_sae, d_in]``,
``encoder.bias [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. The encoder
subtracts ``b_dec`` from its input and keeps the ``k`` largest ReLU'd
pre-activations, so a sparsify SAE is this library's ``topk`` architecture.

The folder is named after the Hugging Face module whose output it reads
(``layers.3``, ``h.3``, ``layers.3.mlp``); :func:`hook_name_from_module` maps that to
a TransformerLens hook name. saehooks also writes ``hook_name`` and ``metadata`` into
``cfg.json``; sparsify ignores keys it does not know.

sparsify's forward pass has no ``rescale_acts_by_decoder_norm`` and always subtracts
``b_dec`` from its input, so :func:`save` refuses a top-k SAE with either setting
rather than store a different SAE; :func:`to_sparsify_form` converts one explicitly
(same outputs up to float rounding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.errors import InputError
from saehooks.io.common import (
    SAEFileError,
    atomic_write_text,
    cfg_bool,
    cfg_dict,
    cfg_int,
    cfg_str,
    check_json_metadata,
    make_config,
    read_json,
    read_safetensors,
    write_safetensors,
)
from saehooks.io.folding import fold_W_dec_norm
from saehooks.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE)
"""Every file a sparsify folder written by :func:`save` holds."""
TENSOR_NAMES = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
CONFIG_KEYS = (
    "activation",
    "expansion_factor",
    "normalize_decoder",
    "num_latents",
    "k",
    "multi_topk",
    "skip_connection",
    "transcode",
    "d_in",
)

_BLOCK = r"(?:.*\.)?(?:layers|h|blocks)\.(\d+)"
_MODULE_TO_HOOK = (
    (re.compile(rf"^{_BLOCK}$"), "blocks.{}.hook_resid_post"),
    (re.compile(rf"^{_BLOCK}\.(?:mlp|feed_forward|ffn)$"), "blocks.{}.hook_mlp_out"),
    (re.compile(rf"^{_BLOCK}\.(?:self_attn|attn|attention)$"), "blocks.{}.hook_attn_out"),
)


def hook_name_from_module(module: str) -> str:
    """TransformerLens hook name for a sparsify hook point (a module path).

    Args:
        module: e.g. ``"layers.3"``, ``"transformer.h.3"``, ``"layers.3.mlp"``,
            ``"embed_tokens"``; a TransformerLens hook name is returned as is.

    Returns:
        e.g. ``"blocks.3.hook_resid_post"``, ``"blocks.3.hook_mlp_out"``,
        ``"hook_embed"``; ``""`` when the module path is not recognised.
    """
    if module.startswith(("blocks.", "hook_")) and "hook_" in module:
        return module
    if module.split(".")[-1] in ("embed_tokens", "wte", "embed_in"):
        return "hook_embed"
    for pattern, template in _MODULE_TO_HOOK:
        match = pattern.match(module)
        if match:
            return template.format(match.group(1))
    return ""


def is_format(path: Path) -> bool:
    """True when ``path`` holds sparsify's ``cfg.json`` and ``sae.safetensors``."""
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def config_from_dict(
    raw: dict[str, Any], folder_name: str, dtype: torch.dtype, where: str
) -> SAEConfig:
    """Parse a sparsify ``cfg.json`` strictly (field types checked, file and field named).

    Args:
        raw: the parsed JSON object.
        folder_name: the folder's name (the hook point), used when ``raw`` has no
            ``hook_name``.
        dtype: dtype of the stored tensors (sparsify records none in the config).
        where: the file name, for error messages.

    Returns:
        The config. A file written by sparsify itself (no ``metadata`` object) keeps
        its sparse-coder settings in ``metadata["sparsify_config"]``; a file written by
        saehooks carries its ``metadata`` and gets it back unchanged.

    Raises:
        SAEFileError: a sparse coder that is not a plain top-k SAE (``groupmax``
            activation, transcoder, skip connection), a missing field, or a field of
            the wrong type (``"false"`` for a boolean, ``4096.9`` for a size).
    """
    activation = cfg_str(raw, "activation", where, "topk")
    if activation != "topk":
        raise SAEFileError(
            f"{where}: activation {activation!r} is not supported; only "
            "sparsify's 'topk' sparse coders load"
        )
    if cfg_bool(raw, "transcode", where, False):
        raise SAEFileError(
            f"{where}: this is a transcoder (transcode=true), which maps one "
            "hook to another; saehooks loads autoencoders only"
        )
    if cfg_bool(raw, "skip_connection", where, False):
        raise SAEFileError(f"{where}: skip_connection=true (a W_skip term) is not supported")
    for key in ("multi_topk", "normalize_decoder"):
        cfg_bool(raw, key, where, False)  # not used at inference, but checked
    d_in = cfg_int(raw, "d_in", where, minimum=1)
    k = cfg_int(raw, "k", where, minimum=1)
    d_sae = cfg_int(raw, "num_latents", where, 0, minimum=0) or d_in * cfg_int(
        raw, "expansion_factor", where, 32, minimum=1
    )
    hook_name = cfg_str(raw, "hook_name", where, None) or hook_name_from_module(folder_name)
    if "metadata" in raw:  # written by saehooks: the SAE's own provenance, as it was
        metadata = cfg_dict(raw, "metadata", where)
    else:
        metadata = {"sparsify_config": {key: raw[key] for key in CONFIG_KEYS if key in raw}}
    return make_config(
        where,
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=k,
        hook_name=hook_name,
        apply_b_dec_to_input=True,
        dtype=str(dtype),
        metadata=metadata,
    )


def load(path: Path) -> tuple[SAEConfig, dict[str, Tensor], dict[str, Any]]:
    """Read a sparsify hook-point folder.

    Args:
        path: folder holding ``cfg.json`` and ``sae.safetensors``.

    Returns:
        ``(cfg, tensors, extras)`` with tensors under this library's names
        (``W_enc = encoder.weight.T``).

    Raises:
        SAEFileError: missing, truncated or corrupt files; missing or unexpected
            tensors (named); see also :func:`config_from_dict`.
    """
    raw = read_json(path / CFG_FILE)
    stored = read_safetensors(path / WEIGHTS_FILE)
    missing = sorted(set(TENSOR_NAMES) - set(stored))
    extra = sorted(set(stored) - set(TENSOR_NAMES))
    if missing or extra:
        parts = ([f"missing tensors {missing}"] if missing else []) + (
            [f"unexpected tensors {extra}"] if extra else []
        )
        raise SAEFileError(
            f"{path / WEIGHTS_FILE}: {'; '.join(parts)}; a sparsify top-k SAE "
            f"holds exactly {list(TENSOR_NAMES)}"
        )
    cfg = config_from_dict(raw, path.name, stored["encoder.weight"].dtype, str(path / CFG_FILE))
    tensors = {
        "W_enc": stored["encoder.weight"].T.contiguous(),
        "b_enc": stored["encoder.bias"],
        "W_dec": stored["W_dec"],
        "b_dec": stored["b_dec"],
    }
    return cfg, tensors, {}


def to_sparsify_form(sae: SAE) -> SAE:
    """A plain top-k copy of ``sae`` that sparsify can store and runs as ``sae`` does.

    Folds ``rescale_acts_by_decoder_norm`` into the weights
    (:func:`~saehooks.io.folding.fold_W_dec_norm`) and, when the SAE does not subtract
    ``b_dec`` from its input, moves that term into ``b_enc``
    (``x @ W + b == (x - b_dec) @ W + (b + b_dec @ W)``). Outputs agree up to float
    rounding, not bit for bit, which is why :func:`save` does not do this by itself.

    Args:
        sae: a top-k SAE (left unchanged).

    Returns:
        ``sae`` itself when it is already plain, else a converted copy.

    Raises:
        InputError: the SAE is not top-k.
    """
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise InputError(
            f"sparsify stores top-k SAEs only, this one is {cfg.architecture!r}; "
            "save it with format='saelens'"
        )
    if not cfg.rescale_acts_by_decoder_norm and cfg.apply_b_dec_to_input:
        return sae
    twin = SAE(cfg.replace(metadata=dict(cfg.metadata)))
    twin.load_state_dict(sae.state_dict())
    if cfg.rescale_acts_by_decoder_norm:
        fold_W_dec_norm(twin)
    if not cfg.apply_b_dec_to_input:
        with torch.no_grad():  # x @ W + b == (x - b_dec) @ W + (b + b_dec @ W)
            twin.b_enc.add_(twin.b_dec @ twin.W_enc)
        twin.cfg.apply_b_dec_to_input = True
    return twin


def check_writable(sae: SAE) -> None:
    """Refuse, before anything is written, an SAE that sparsify's files cannot hold
    exactly.

    Raises:
        InputError: not top-k (an ``mlp`` SAE's hidden layers have no sparsify
            form); ``rescale_acts_by_decoder_norm=True`` or
            ``apply_b_dec_to_input=False`` (sparsify has neither option: convert with
            :func:`to_sparsify_form` first); metadata JSON cannot hold.
    """
    cfg = sae.cfg
    if cfg.architecture == "mlp":
        raise InputError(
            "the sparsify format stores top-k SAEs with a linear encoder and decoder; "
            "this mlp SAE has a hidden layer on each side, which sparsify's files "
            "cannot hold; save it with format='saelens' (saehooks' folder, which "
            "saehooks loads)"
        )
    if cfg.architecture != "topk":
        raise InputError(
            f"sparsify stores top-k SAEs only, this one is {cfg.architecture!r}; "
            "save it with format='saelens'"
        )
    options = [
        name
        for name, value in (
            ("rescale_acts_by_decoder_norm=True", cfg.rescale_acts_by_decoder_norm),
            ("apply_b_dec_to_input=False", not cfg.apply_b_dec_to_input),
        )
        if value
    ]
    if options:
        raise InputError(
            f"sparsify's files cannot express {' and '.join(options)}, so the "
            "SAE would load as a different one; save with format='saelens', or "
            "convert it first with saehooks.io.sparsify.to_sparsify_form(sae) "
            "(equal outputs up to float rounding) and save that"
        )
    check_json_metadata(cfg.metadata)


def save(sae: SAE, path: Path) -> None:
    """Write ``sae`` as a sparsify hook-point folder (``cfg.json`` + ``sae.safetensors``).

    sparsify keeps one folder per hook point inside a run folder; pass that hook-point
    folder (e.g. ``run / "layers.3"``). Use :func:`saehooks.io.save_sae`, which writes
    into a fresh folder and swaps it in whole; this function only writes the files.

    Raises:
        InputError: see :func:`check_writable`.
    """
    check_writable(sae)
    cfg = sae.cfg
    path.mkdir(parents=True, exist_ok=True)
    norms = sae.W_dec.detach().float().norm(dim=-1)
    tensors = {
        "encoder.weight": sae.W_enc.detach().T,
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    write_safetensors(path / WEIGHTS_FILE, tensors)
    config = {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
        "normalize_decoder": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)),
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
        "hook_name": cfg.hook_name,
        "metadata": cfg.metadata,
    }
    atomic_write_text(path / CFG_FILE, json.dumps(config, indent=2) + "\n")
