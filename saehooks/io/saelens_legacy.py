"""Pre-v6 SAELens configs: flat ``cfg.json`` files, mapped to the v6 shape.

Source: SAELens (jbloomAus/SAELens) before 6.0 saved the whole training config flat:
``hook_point`` (later ``hook_name``), ``hook_point_layer``, ``hook_point_head_index``,
``activation_fn_str`` with ``activation_fn_kwargs`` (``{"k": ...}`` for top-k),
``normalize_activations`` as a bool in early versions, ``finetuning_scaling_factor``,
and no ``metadata`` object. SAELens 6 maps these keys onto the v6 shape
(``handle_pre_6_0_config``) and so does this module. In particular a config whose
activation is ``"topk"`` (even under architecture ``"standard"``) loads as a top-k SAE
with ``k`` from ``activation_fn_kwargs``, never as a plain ReLU SAE, and a top-k
config without ``k`` is refused, as is a ``k`` in a config that does not say it is top-k
(it would load as ReLU and ignore ``k``). Field types are checked as in v6 files.
"""

from __future__ import annotations

import re
from typing import Any

from saehooks.io.common import SAEFileError, cfg_bool, cfg_dict, cfg_int, cfg_str

RENAMED_KEYS = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "model_class_name",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "dataset_trust_remote_code",
    "sae_lens_training_version",
)
"""Flat keys that SAELens 6 keeps, as provenance, in the ``metadata`` object."""
CONSUMED_KEYS = (
    "architecture",
    "d_in",
    "d_sae",
    "expansion_factor",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "activation_fn",
    "activation_fn_kwargs",
    "k",
    "finetuning_scaling_factor",
    "sae_lens_version",
    "rescale_acts_by_decoder_norm",
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
    given = cfg_str(cfg, "architecture", where, None)
    arch = given or "standard"
    act = cfg_str(cfg, "activation_fn", where, None) or "relu"
    kwargs = cfg_dict(cfg, "activation_fn_kwargs", where)
    kwargs_where = f"{where} (activation_fn_kwargs)"
    k = cfg_int(kwargs, "k", kwargs_where, None, minimum=1)
    if k is None:
        k = cfg_int(cfg, "k", where, None, minimum=1)
    if act == "topk" or arch == "topk":
        if arch not in ("standard", "topk"):
            raise SAEFileError(
                f"{where}: architecture {arch!r} with activation 'topk' is not "
                "a known SAELens combination"
            )
        if k is None:
            raise SAEFileError(
                f"{where}: a top-k config without k (expected "
                "activation_fn_kwargs.k); refusing to load it as another "
                "architecture"
            )
        if cfg_bool(kwargs, "signed", kwargs_where, False):
            raise SAEFileError(
                f"{where}: signed top-k (activation_fn_kwargs.signed=true) is not supported"
            )
        return "topk", k
    if act != "relu":
        raise SAEFileError(
            f"{where}: activation function {act!r} is not supported; "
            "supported: 'relu', 'topk' (and the jumprelu / gated architectures)"
        )
    if k is not None and arch != "jumprelu":
        if given is None:
            raise SAEFileError(
                f"{where}: the config sets k={k} but no architecture and "
                f"activation {act!r}, so it would load as a ReLU SAE that "
                'ignores k; add "architecture": "topk" if this is a top-k '
                "SAE, or remove k"
            )
        raise SAEFileError(
            f"{where}: the config sets k={k} with architecture {arch!r}, which "
            'keeps no fixed number of latents; set "architecture": "topk" '
            "if this is a top-k SAE, or remove k"
        )
    return arch, k  # a jumprelu k (BatchTopK's training budget) is kept as metadata


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
        SAEFileError: a missing size, a field of the wrong type, an unsupported
            activation function, a top-k config without ``k``, or a ``k`` in a config
            that is not top-k.
    """
    cfg = {RENAMED_KEYS.get(key, key): value for key, value in raw.items()}
    arch, k = _architecture_and_k(cfg, where)
    d_in = cfg_int(cfg, "d_in", where, minimum=1)
    d_sae = cfg_int(cfg, "d_sae", where, None, minimum=1)
    if d_sae is None:
        factor = cfg_int(cfg, "expansion_factor", where, None, minimum=1)
        if factor is None:
            raise SAEFileError(f"{where}: neither 'd_sae' nor 'expansion_factor' is set")
        d_sae = d_in * factor
    normalize = cfg.get("normalize_activations")
    if isinstance(normalize, bool):  # the earliest configs stored a flag
        normalize = "expected_average_only_in" if normalize else "none"
    elif normalize is not None:
        normalize = cfg_str(cfg, "normalize_activations", where)
    hook_name = cfg_str(cfg, "hook_name", where, None) or ""
    metadata = {key: cfg[key] for key in METADATA_KEYS if key in cfg}
    if cfg.get("sae_lens_version") is not None:
        metadata["converted_from_sae_lens_version"] = cfg["sae_lens_version"]
    rest = {
        key: value
        for key, value in cfg.items()
        if key not in CONSUMED_KEYS and key not in METADATA_KEYS
    }
    if rest:
        metadata["legacy_config"] = rest
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": cfg.get("dtype") or "float32",
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True),
        "normalize_activations": normalize or "none",
        "reshape_activations": cfg.get("reshape_activations")
        or ("hook_z" if "hook_z" in hook_name else "none"),
        "finetuning_scaling_factor": cfg_bool(cfg, "finetuning_scaling_factor", where, False),
        "metadata": metadata,
    }
    if k is not None:
        out["k"] = k
    if arch == "topk":
        out["rescale_acts_by_decoder_norm"] = cfg_bool(
            cfg, "rescale_acts_by_decoder_norm", where, False
        )
    return out
