"""Pre-v6 SAELens configs: flat ``cfg.json`` files, mapped to the v6 shape.

Source: SAELens (jbloomAus/SAELens) before 6.0 saved the whole training config flat:
``hook_point`` (later ``hook_name``), ``hook_point_layer``, ``hook_point_head_index``,
``activation_fn_str`` with ``activation_fn_kwargs`` (``{"k": ...}`` for top-k),
``normalize_activations`` as a bool in early versions, ``finetuning_scaling_factor``,
and no ``metadata`` object. SAELens 6 maps these keys onto the v6 shape
(``handle_pre_6_0_config``) and so does this module. In particular a config whose
activation is ``"topk"`` (even under architecture ``"standard"``) loads as a top-k SAE
with ``k`` from ``activation_fn_kwargs``, never as a plain ReLU SAE, and a top-k
config without ``k`` is refused.
"""

from __future__ import annotations

import re
from typing import Any

RENAMED_KEYS = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
METADATA_KEYS = (
    "model_name", "hook_name", "hook_layer", "hook_head_index", "model_class_name",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
    "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
    "dataset_trust_remote_code", "sae_lens_training_version",
)
"""Flat keys that SAELens 6 keeps, as provenance, in the ``metadata`` object."""
CONSUMED_KEYS = (
    "architecture", "d_in", "d_sae", "expansion_factor", "dtype", "device",
    "apply_b_dec_to_input", "normalize_activations", "reshape_activations",
    "activation_fn", "activation_fn_kwargs", "k", "finetuning_scaling_factor",
    "sae_lens_version", "rescale_acts_by_decoder_norm",
)


def _major(version: Any) -> int | None:
    match = re.match(r"\s*v?(\d+)", str(version)) if version is not None else None
    return int(match.group(1)) if match else None


def is_legacy_config(raw: dict[str, Any]) -> bool:
    """True for a flat pre-v6 config: no ``metadata`` object and no version >= 6.

    SAELens itself looks only at the version; a config that already has the v6
    ``metadata`` object is read as v6 here even without one.
    """
    if isinstance(raw.get("metadata"), dict) or isinstance(raw.get("meta"), dict):
        return False
    major = _major(raw.get("sae_lens_version"))
    return major is None or major < 6


def _architecture_and_k(cfg: dict[str, Any], where: str) -> tuple[str, int | None]:
    arch = cfg.get("architecture") or "standard"
    act = cfg.get("activation_fn") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if act == "topk" or arch == "topk":
        if arch not in ("standard", "topk"):
            raise ValueError(f"{where}: architecture {arch!r} with activation 'topk' is not a "
                             "known SAELens combination")
        k = kwargs.get("k", cfg.get("k"))
        if k is None:
            raise ValueError(f"{where}: a top-k config without k (expected "
                             "activation_fn_kwargs.k); refusing to load it as another "
                             "architecture")
        if kwargs.get("signed"):
            raise ValueError(f"{where}: signed top-k (activation_fn_kwargs.signed=true) is "
                             "not supported")
        return "topk", int(k)
    if act != "relu":
        raise ValueError(f"{where}: activation function {act!r} is not supported; "
                         "supported: 'relu', 'topk' (and the jumprelu / gated architectures)")
    return arch, None


def legacy_to_v6(raw: dict[str, Any], where: str = "cfg.json") -> dict[str, Any]:
    """Map a pre-v6 flat SAELens config onto the v6 shape.

    Args:
        raw: the flat config as read from ``cfg.json``.
        where: the file name, for error messages.

    Returns:
        A v6-shaped dict: architecture fields at top level, provenance in ``metadata``
        (the SAELens version it was written by as ``converted_from_sae_lens_version``,
        other training keys under ``legacy_config``), and ``finetuning_scaling_factor``.

    Raises:
        ValueError: a missing size, an unsupported activation function, or a top-k
            config without ``k``.
    """
    cfg = {RENAMED_KEYS.get(key, key): value for key, value in raw.items()}
    arch, k = _architecture_and_k(cfg, where)
    if "d_in" not in cfg:
        raise ValueError(f"{where}: missing required field 'd_in'")
    d_sae = cfg.get("d_sae")
    if d_sae is None:
        if cfg.get("expansion_factor") is None:
            raise ValueError(f"{where}: neither 'd_sae' nor 'expansion_factor' is set")
        d_sae = int(cfg["d_in"]) * int(cfg["expansion_factor"])
    normalize = cfg.get("normalize_activations")
    if isinstance(normalize, bool):  # the earliest configs stored a flag
        normalize = "expected_average_only_in" if normalize else "none"
    hook_name = cfg.get("hook_name") or ""
    metadata = {key: cfg[key] for key in METADATA_KEYS if key in cfg}
    if cfg.get("sae_lens_version") is not None:
        metadata["converted_from_sae_lens_version"] = cfg["sae_lens_version"]
    rest = {key: value for key, value in cfg.items()
            if key not in CONSUMED_KEYS and key not in METADATA_KEYS}
    if rest:
        metadata["legacy_config"] = rest
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg["d_in"],
        "d_sae": d_sae,
        "dtype": cfg.get("dtype") or "float32",
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True),
        "normalize_activations": normalize or "none",
        "reshape_activations": cfg.get("reshape_activations")
        or ("hook_z" if "hook_z" in hook_name else "none"),
        "finetuning_scaling_factor": bool(cfg.get("finetuning_scaling_factor", False)),
        "metadata": metadata,
    }
    if k is not None:
        out["k"] = k
        out["rescale_acts_by_decoder_norm"] = bool(cfg.get("rescale_acts_by_decoder_norm",
                                                           False))
    return out
