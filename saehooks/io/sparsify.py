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
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.io.common import (
    SAEFileError,
    atomic_write_text,
    read_json,
    read_safetensors,
    write_safetensors,
)
from saehooks.io.folding import fold_W_dec_norm
from saehooks.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
TENSOR_NAMES = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
CONFIG_KEYS = ("activation", "expansion_factor", "normalize_decoder", "num_latents", "k",
               "multi_topk", "skip_connection", "transcode", "d_in")

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


def config_from_dict(raw: dict[str, Any], folder_name: str, dtype: torch.dtype,
                     where: str) -> SAEConfig:
    """Parse a sparsify ``cfg.json``.

    Args:
        raw: the parsed JSON object.
        folder_name: the folder's name (the hook point), used when ``raw`` has no
            ``hook_name``.
        dtype: dtype of the stored tensors (sparsify records none in the config).
        where: the file name, for error messages.

    Raises:
        ValueError: a sparse coder that is not a plain top-k SAE (``groupmax``
            activation, transcoder, skip connection) or a missing field.
    """
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{where}: activation {activation!r} is not supported; only "
                         "sparsify's 'topk' sparse coders load")
    if raw.get("transcode"):
        raise ValueError(f"{where}: this is a transcoder (transcode=true), which maps one "
                         "hook to another; saehooks loads autoencoders only")
    if raw.get("skip_connection"):
        raise ValueError(f"{where}: skip_connection=true (a W_skip term) is not supported")
    for key in ("d_in", "k"):
        if key not in raw:
            raise ValueError(f"{where}: missing required field {key!r}")
    d_in = int(raw["d_in"])
    d_sae = int(raw.get("num_latents") or 0) or d_in * int(raw.get("expansion_factor", 32))
    metadata = dict(raw.get("metadata") or {})
    extra = {key: raw[key] for key in CONFIG_KEYS if key in raw}
    metadata.setdefault("sparsify_config", extra)
    return SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=int(raw["k"]),
        hook_name=raw.get("hook_name") or hook_name_from_module(folder_name),
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
            tensors (named).
        ValueError: see :func:`config_from_dict`.
    """
    raw = read_json(path / CFG_FILE)
    stored = read_safetensors(path / WEIGHTS_FILE)
    missing = sorted(set(TENSOR_NAMES) - set(stored))
    extra = sorted(set(stored) - set(TENSOR_NAMES))
    if missing or extra:
        parts = ([f"missing tensors {missing}"] if missing else []) + (
            [f"unexpected tensors {extra}"] if extra else [])
        raise SAEFileError(f"{path / WEIGHTS_FILE}: {'; '.join(parts)}; a sparsify top-k SAE "
                           f"holds exactly {list(TENSOR_NAMES)}")
    cfg = config_from_dict(raw, path.name, stored["encoder.weight"].dtype, str(path / CFG_FILE))
    tensors = {
        "W_enc": stored["encoder.weight"].T.contiguous(),
        "b_enc": stored["encoder.bias"],
        "W_dec": stored["W_dec"],
        "b_dec": stored["b_dec"],
    }
    return cfg, tensors, {}


def _sparsify_equivalent(sae: SAE) -> SAE:
    """A copy of ``sae`` that sparsify's forward pass computes exactly as ``sae`` does.

    Folds ``rescale_acts_by_decoder_norm`` into the weights and, when the SAE does not
    subtract ``b_dec`` from its input, moves that term into ``b_enc``.
    """
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise ValueError(f"sparsify stores top-k SAEs only, this one is {cfg.architecture!r}; "
                         "save it with format='saelens'")
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


def save(sae: SAE, path: Path) -> None:
    """Write ``sae`` as a sparsify hook-point folder (``cfg.json`` + ``sae.safetensors``).

    sparsify keeps one folder per hook point inside a run folder; pass that hook-point
    folder (e.g. ``run / "layers.3"``). A top-k SAE with ``rescale_acts_by_decoder_norm``
    or without ``apply_b_dec_to_input`` is converted to the equivalent plain form first
    (same outputs up to float rounding).

    Raises:
        ValueError: the SAE is not top-k.
    """
    sae = _sparsify_equivalent(sae)
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
        "metadata": {k: v for k, v in cfg.metadata.items() if k != "sparsify_config"},
    }
    atomic_write_text(path / CFG_FILE, json.dumps(config, indent=2) + "\n")
