"""SAELens' on-disk layout: ``cfg.json`` + ``sae_weights.safetensors`` (v6).

A v6 ``cfg.json`` holds the architecture fields at top level and provenance
(``hook_name``, ``model_name``, ...) in a ``metadata`` object. SAELens calls the
ReLU architecture ``"standard"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saehooks.io.common import SAEFileError, atomic_write_text, read_json, read_safetensors, write_safetensors
from saehooks.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
TO_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
FROM_SAELENS_ARCH = {v: k for k, v in TO_SAELENS_ARCH.items()} | {"relu": "relu"}


def is_format(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The SAELens v6 ``cfg.json`` object for ``cfg``."""
    out: dict[str, Any] = {
        "architecture": TO_SAELENS_ARCH[cfg.architecture],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out["metadata"] = {**cfg.metadata, "hook_name": cfg.hook_name}
    return out


def config_from_dict(raw: dict[str, Any], where: str = "cfg.json") -> SAEConfig:
    """Parse a SAELens v6 ``cfg.json`` object.

    Raises:
        ValueError: unknown architecture, missing field, or an activation
            normalisation this library does not apply at inference.
    """
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS_ARCH:
        raise ValueError(f"{where}: architecture {arch!r} is not supported; "
                         f"supported: {sorted(FROM_SAELENS_ARCH)}")
    norm = raw.get("normalize_activations", "none") or "none"
    if norm not in ("none", None):
        raise ValueError(f"{where}: normalize_activations={norm!r} needs a scaling factor at "
                         "inference that this file does not carry; fold it into the weights "
                         "(SAELens: sae.fold_activation_norm_scaling_factor) and save again")
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"{where}: missing required field {key!r}")
    metadata = dict(raw.get("metadata") or {})
    hook_name = metadata.pop("hook_name", None) or raw.get("hook_name", "")
    return SAEConfig(
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        architecture=FROM_SAELENS_ARCH[arch],
        k=int(raw["k"]) if raw.get("k") is not None else None,
        hook_name=hook_name,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
        dtype=raw.get("dtype", "float32"),
        device="cpu",
        metadata=metadata,
    )


def save(sae: SAE, path: Path) -> None:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` into the folder ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / WEIGHTS_FILE, dict(sae.state_dict()))
    atomic_write_text(path / CFG_FILE, json.dumps(config_to_dict(sae.cfg), indent=2) + "\n")


def load(path: Path) -> tuple[SAEConfig, dict, dict]:
    """Read a SAELens folder: its config, its tensors (not yet checked) and extras
    (``feature_density`` from an optional ``sparsity.safetensors``)."""
    cfg = config_from_dict(read_json(path / CFG_FILE), where=str(path / CFG_FILE))
    tensors = read_safetensors(path / WEIGHTS_FILE)
    extras = {}
    if (path / SPARSITY_FILE).is_file():
        sparsity = read_safetensors(path / SPARSITY_FILE)
        log10 = sparsity.get("sparsity")
        if log10 is None or log10.shape != (cfg.d_sae,):
            raise SAEFileError(f"{path / SPARSITY_FILE}: expected one tensor 'sparsity' of "
                               f"shape ({cfg.d_sae},), found {list(sparsity)}")
        extras["feature_density"] = 10.0 ** log10.float()
    return cfg, tensors, extras
