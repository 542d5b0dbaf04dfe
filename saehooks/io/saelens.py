"""SAELens' on-disk layout: ``cfg.json`` + ``sae_weights.safetensors``.

Source: SAELens (jbloomAus/SAELens), ``SAE.save_model`` / ``SAE.load_from_disk``.

A v6 ``cfg.json`` holds the architecture fields at top level (``architecture``,
``d_in``, ``d_sae``, ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, and for top-k ``k`` and ``rescale_acts_by_decoder_norm``) and
provenance (``hook_name``, ``model_name``, ...) in a ``metadata`` object whose
``sae_lens_version`` tells SAELens the file is v6. SAELens calls the ReLU architecture
``"standard"``. Tensors follow SAELens' names; a gated SAE has no ``b_enc`` there.

saehooks' ``mlp`` SAE (:mod:`saehooks.sae`; no SAELens class) is stored in the same
layout as saehooks' own extension: ``"architecture": "mlp"`` and ``"d_hidden"`` in
``cfg.json``, and its eight tensors (``W_enc_in``, ``b_enc_hidden``, ``W_enc``, ``b_enc``,
``W_dec``, ``b_dec_hidden``, ``W_dec_out``, ``b_dec``) in ``sae_weights.safetensors``.
saehooks loads such a folder; SAELens does not (it has no ``mlp`` architecture).

Configs written before SAELens 6 are flat (see :mod:`saehooks.io.saelens_legacy`);
they load too, mapped as SAELens maps them.
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
from saehooks.io.saelens_legacy import is_legacy_config, legacy_to_v6
from saehooks.sae import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE)
"""Every file a SAELens folder written by :func:`save` may hold."""
# fmt: off
TO_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated",
                   "mlp": "mlp"}
# fmt: on
SAEHOOKS_ONLY_ARCH = ("mlp",)
"""Architectures this layout stores for saehooks only (SAELens has no such class)."""
FROM_SAELENS_ARCH = {v: k for k, v in TO_SAELENS_ARCH.items()} | {"relu": "relu"}
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version`` when the SAE carries none (or an older one):
SAELens reads any config without a version >= 6 as a pre-v6 flat config. On loading,
this marker (in both version keys) is removed again; real SAELens versions are kept."""
VERSION_KEYS = ("sae_lens_version", "sae_lens_training_version")


def is_format(path: Path) -> bool:
    """True when ``path`` holds SAELens' ``cfg.json`` and ``sae_weights.safetensors``."""
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _major(version: Any) -> int | None:
    match = re.match(r"\s*v?(\d+)", str(version)) if version is not None else None
    return int(match.group(1)) if match else None


def config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The SAELens v6 ``cfg.json`` object for ``cfg``.

    Args:
        cfg: the SAE's configuration.

    Returns:
        A JSON-ready dict that SAELens 6's ``SAE.load_from_disk`` parses as the same
        architecture, sizes, dtype, input handling and hook. ``k`` and
        ``rescale_acts_by_decoder_norm`` are written for top-k SAEs only, as SAELens
        does; :class:`~saehooks.sae.SAEConfig` refuses them on other architectures, so
        nothing is dropped.

    Raises:
        InputError: ``cfg.metadata`` holds a ``hook_name`` (the file keeps the hook
            there, so it would be lost) or an entry JSON cannot hold.
    """
    if "hook_name" in cfg.metadata:
        raise InputError(
            "cfg.metadata has a 'hook_name' entry, which the SAELens file keeps "
            "in the same place as cfg.hook_name; move it to cfg.hook_name or "
            "rename the metadata entry"
        )
    check_json_metadata(cfg.metadata)
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
    if cfg.architecture == "mlp":
        out["d_hidden"] = cfg.d_hidden
    metadata = {**cfg.metadata, "hook_name": cfg.hook_name}
    major = _major(metadata.get("sae_lens_version"))
    if major is None or major < 6:
        metadata["sae_lens_version"] = SAELENS_FORMAT_VERSION
    metadata.setdefault("sae_lens_training_version", SAELENS_FORMAT_VERSION)
    out["metadata"] = metadata
    return out


def _check_runtime_transforms(raw: dict[str, Any], where: str) -> None:
    """Refuse settings that change the forward pass in ways this SAE class cannot run."""
    norm = cfg_str(raw, "normalize_activations", where, None) or "none"
    if norm == "expected_average_only_in":
        raise SAEFileError(
            f"{where}: normalize_activations='expected_average_only_in' needs a "
            "dataset scaling factor that this file does not carry; fold it into "
            "the weights (SAELens: sae.fold_activation_norm_scaling_factor(s)) and "
            "save again"
        )
    if norm != "none":
        raise SAEFileError(
            f"{where}: normalize_activations={norm!r} normalises every input "
            "token at run time, which saehooks does not implement; only 'none' "
            "is supported"
        )
    reshape = cfg_str(raw, "reshape_activations", where, None) or "none"
    if reshape != "none":
        raise SAEFileError(
            f"{where}: reshape_activations={reshape!r} (an SAE on attention "
            "heads' hook_z) is not supported; only 'none' is"
        )


def config_from_dict(raw: dict[str, Any], where: str = "cfg.json") -> SAEConfig:
    """Parse a SAELens ``cfg.json`` object, v6 or pre-v6, strictly.

    Every field is read with its JSON type checked (:mod:`saehooks.io.common`):
    booleans are JSON booleans (``"false"`` in quotes is refused, not read as True),
    sizes are integers (``4096.9`` and ``"abc"`` are refused), and a config that could
    mean two SAEs is refused with the fix: ``k`` without ``"architecture": "topk"``
    (it would load as ReLU and ignore ``k``). A ``jumprelu`` config from a BatchTopK
    run may carry the training ``k``; it is kept as ``metadata["batch_topk_k"]``.

    Args:
        raw: the parsed JSON object.
        where: the file name, for error messages.

    Returns:
        The :class:`~saehooks.sae.SAEConfig` it describes (on CPU).

    Raises:
        SAEFileError: a field of the wrong type or missing (file and field named); an
            unknown architecture or activation function; an ambiguous ``k``; a
            run-time normalisation / reshape this library does not apply.
    """
    for key in ("metadata", "meta"):
        cfg_dict(raw, key, where)  # an array here is neither v6 nor pre-v6
    if is_legacy_config(raw):
        raw = legacy_to_v6(raw, where)
    arch = cfg_str(raw, "architecture", where, None)
    if arch is None:
        if raw.get("k") is not None:
            raise SAEFileError(
                f"{where}: the config sets k={raw['k']!r} but no architecture, so "
                "it would load as a ReLU SAE that ignores k; add "
                '"architecture": "topk" if this is a top-k SAE, or remove k'
            )
        arch = "standard"
    if arch not in FROM_SAELENS_ARCH:
        raise SAEFileError(
            f"{where}: architecture {arch!r} is not supported; "
            f"supported: {sorted(FROM_SAELENS_ARCH)}"
        )
    architecture = FROM_SAELENS_ARCH[arch]
    _check_runtime_transforms(raw, where)
    metadata = cfg_dict(raw, "metadata" if "metadata" in raw else "meta", where)
    k = cfg_int(raw, "k", where, None, minimum=1)
    if k is not None and architecture != "topk":
        if architecture != "jumprelu":
            raise SAEFileError(
                f"{where}: the config sets k={k} with architecture {arch!r}, "
                'which keeps no fixed number of latents; set "architecture": '
                '"topk" if this is a top-k SAE, or remove k'
            )
        metadata.setdefault("batch_topk_k", k)  # a BatchTopK run's training budget
        k = None
    hook_name = metadata.pop("hook_name", None)
    if hook_name is None:
        hook_name = raw.get("hook_name")
    if hook_name is not None and not isinstance(hook_name, str):
        raise SAEFileError(
            f"{where}: field 'hook_name' must be a string such as "
            f"'blocks.2.hook_resid_post', found {hook_name!r}"
        )
    if all(metadata.get(key) == SAELENS_FORMAT_VERSION for key in VERSION_KEYS):
        for key in VERSION_KEYS:  # the marker config_to_dict adds, not provenance
            del metadata[key]
    if metadata.get("hook_head_index") is not None:
        raise SAEFileError(
            f"{where}: the SAE reads one attention head (hook_head_index="
            f"{metadata['hook_head_index']}), which saehooks cannot attach"
        )
    rescale = cfg_bool(raw, "rescale_acts_by_decoder_norm", where, False)
    if rescale and architecture != "topk":
        raise SAEFileError(
            f"{where}: rescale_acts_by_decoder_norm=true is a top-k option, "
            f"but the architecture is {arch!r} (SAELens ignores it there); "
            "remove the field, or fold the norms into the weights"
        )
    dtype = cfg_str(raw, "dtype", where, "float32")
    return make_config(
        where,
        d_in=cfg_int(raw, "d_in", where, minimum=1),
        d_sae=cfg_int(raw, "d_sae", where, minimum=1),
        architecture=architecture,
        k=k,
        hook_name=hook_name or "",
        apply_b_dec_to_input=cfg_bool(raw, "apply_b_dec_to_input", where, True),
        rescale_acts_by_decoder_norm=rescale,
        dtype=dtype,
        device="cpu",
        metadata=metadata,
        d_hidden=cfg_int(raw, "d_hidden", where, None, minimum=1),
    )


def to_saelens_tensors(sae: SAE) -> dict[str, Tensor]:
    """The SAE's tensors under SAELens' names (a gated SAE has no ``b_enc`` there)."""
    tensors = {k: v.detach() for k, v in sae.state_dict().items()}
    if sae.cfg.architecture == "gated":
        tensors.pop("b_enc", None)  # unused by the gated forward pass, absent in SAELens
    return tensors


def from_saelens_tensors(
    cfg: SAEConfig, tensors: dict[str, Tensor], where: str, finetuning_scaling_factor: bool = False
) -> dict[str, Tensor]:
    """Map tensors read from a SAELens file onto this library's SAE state dict.

    * gated: SAELens has no ``b_enc``; it is added as zeros (an all-zero ``b_enc``
      in the file is accepted, a non-zero one is refused: the gated forward ignores it);
    * jumprelu: a training checkpoint's ``log_threshold`` becomes ``threshold = exp``;
    * pre-v6: ``scaling_factor [d_sae]`` (finetuning scale on the latents) is folded
      into the decoder rows when ``finetuning_scaling_factor`` is set, dropped when
      it is all ones, refused otherwise (as SAELens does).

    Raises:
        SAEFileError: a tensor that cannot be mapped (named in the message).
    """
    out = dict(tensors)
    if cfg.architecture == "jumprelu" and "log_threshold" in out and "threshold" not in out:
        out["threshold"] = out.pop("log_threshold").exp()
    if cfg.architecture == "gated":
        b_enc = out.get("b_enc")
        if b_enc is None:
            ref = out.get("b_gate", next(iter(out.values())) if out else torch.zeros(1))
            out["b_enc"] = torch.zeros(cfg.d_sae, dtype=ref.dtype)
        elif torch.count_nonzero(b_enc):
            raise SAEFileError(
                f"{where}: a gated SAE holds a non-zero tensor 'b_enc', which "
                "the gated forward pass (b_gate, r_mag, b_mag) never uses"
            )
    if "scaling_factor" in out:
        scale = out.pop("scaling_factor")
        if finetuning_scaling_factor:
            if "W_dec" in out and scale.shape == (out["W_dec"].shape[0],):
                out["W_dec"] = out["W_dec"] * scale.to(out["W_dec"].dtype)[:, None]
            else:
                raise SAEFileError(
                    f"{where}: tensor 'scaling_factor' has shape "
                    f"{tuple(scale.shape)}, expected ({cfg.d_sae},)"
                )
        elif not torch.all(scale == 1):
            raise SAEFileError(
                f"{where}: tensor 'scaling_factor' is not all ones but the "
                "config has finetuning_scaling_factor=False"
            )
    return out


def check_writable(sae: SAE) -> None:
    """Refuse, before anything is written, an SAE whose config the file cannot hold.

    Raises:
        InputError: see :func:`config_to_dict`.
    """
    config_to_dict(sae.cfg)


def save(sae: SAE, path: Path) -> None:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and, when the SAE carries a
    ``feature_density [d_sae]``, ``sparsity.safetensors`` (log10 density) into the
    folder ``path``.

    Use :func:`saehooks.io.save_sae`, which writes into a fresh folder and swaps it in
    whole; this function only writes the files.

    Raises:
        InputError: see :func:`config_to_dict`.
    """
    text = json.dumps(config_to_dict(sae.cfg), indent=2) + "\n"
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / WEIGHTS_FILE, to_saelens_tensors(sae))
    density = sae.feature_density
    if density is not None:
        write_safetensors(
            path / SPARSITY_FILE, {"sparsity": torch.as_tensor(density).float().log10()}
        )
    atomic_write_text(path / CFG_FILE, text)


def load(path: Path) -> tuple[SAEConfig, dict[str, Tensor], dict[str, Any]]:
    """Read a SAELens folder.

    Args:
        path: folder holding ``cfg.json`` and ``sae_weights.safetensors``.

    Returns:
        ``(cfg, tensors, extras)``: the config, the tensors under this library's
        names (checked against the config by the caller), and extras
        (``feature_density [d_sae]`` from an optional ``sparsity.safetensors``).

    Raises:
        SAEFileError: missing, truncated or corrupt files; see also
            :func:`config_from_dict`.
    """
    raw = read_json(path / CFG_FILE)
    cfg = config_from_dict(raw, where=str(path / CFG_FILE))
    tensors = read_safetensors(path / WEIGHTS_FILE)
    fold_scale = cfg_bool(raw, "finetuning_scaling_factor", str(path / CFG_FILE), False)
    if fold_scale and "scaling_factor" not in tensors:
        raise SAEFileError(
            f"{path / CFG_FILE}: finetuning_scaling_factor=True but "
            f"{WEIGHTS_FILE} holds no 'scaling_factor' tensor"
        )
    tensors = from_saelens_tensors(
        cfg, tensors, str(path / WEIGHTS_FILE), finetuning_scaling_factor=fold_scale
    )
    extras: dict[str, Any] = {}
    if (path / SPARSITY_FILE).is_file():
        sparsity = read_safetensors(path / SPARSITY_FILE)
        log10 = sparsity.get("sparsity")
        if log10 is None or len(sparsity) != 1 or log10.shape != (cfg.d_sae,):
            raise SAEFileError(
                f"{path / SPARSITY_FILE}: expected one tensor 'sparsity' of "
                f"shape ({cfg.d_sae},), found {sorted(sparsity)}"
            )
        extras["feature_density"] = 10.0 ** log10.float()
    return cfg, tensors, extras
