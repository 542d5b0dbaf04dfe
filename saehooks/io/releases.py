"""Loading SAELens' pretrained releases: each release's file layout and conventions.

Source: SAELens (jbloomAus/SAELens) 6.x, ``sae_lens/loading/pretrained_sae_loaders.py``
(one loader per ``conversion_func``) and ``SAE.from_pretrained`` (overrides, folding of
``norm_scaling_factor``). Each loader below fetches the files its layout needs with
:func:`saehooks.io.hub.download` (cache first, offline-aware) and returns the config
and tensors SAELens would build, mapped to this library's SAE:

=========================  ===============================================================
``sae_lens``               ``cfg.json`` + ``sae_weights.safetensors`` (+ optional
                           ``sparsity.safetensors``: log10 feature density), v6 or
                           pre-v6 configs (:mod:`saehooks.io.saelens`)
``gemma_2`` (Gemma Scope)  ``params.npz`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``,
                           ``threshold``): JumpReLU, input not centred; hook from the
                           repository / folder names; embedding SAEs rescaled by
                           ``sqrt(d_in)`` as SAELens does
``gemma_3`` (Gemma Scope   ``params.safetensors`` (``w_enc`` ...), optional ``config.json``;
2)                         SAEs on ``resid_post`` / ``mlp_out``
``sparsify``               a ``layers.N/`` folder: ``cfg.json`` + ``sae.safetensors``
                           (:mod:`saehooks.io.sparsify`)
``dictionary_learning_1``  ``ae.pt`` + ``config.json`` (:mod:`saehooks.io.dictionary_learning`)
``llama_scope``            ``hyperparams.json`` + ``checkpoints/final.safetensors``
``qwen_scope``,            one ``torch.save``'d state dict (read with
``goodfire``,              ``weights_only=True``)
``deepseek_r1``
=========================  ===============================================================

Conventions applied as SAELens applies them: the release's ``config_overrides``
(architecture fields over the file's, the rest into metadata); ``normalize_activations
= "expected_average_only_in"`` with the registry's ``norm_scaling_factor`` folded into
the weights (``W_enc * s``, ``W_dec / s``, ``b_dec / s``; without a factor SAELens runs
the SAE unnormalised and warns, and so does this); the Neuronpedia id, release, id,
repository and model name in ``cfg.metadata``; SAELens' ``model_from_pretrained_kwargs``
as ``metadata["model_processing"]`` (so attaching to a model processed otherwise warns).
Releases saehooks cannot run (transcoders, cross-layer transcoders, temporal SAEs, SAEs
over the concatenated heads of ``hook_z``, run-time ``layer_norm`` /
``constant_norm_rescale`` input normalisation) are refused with the reason.

One deliberate difference: SAELens' ``sparsify`` loader sets ``apply_b_dec_to_input =
not normalize_decoder`` and transposes ``W_dec``, while sparsify's own encoder always
subtracts ``b_dec`` and stores ``W_dec [d_sae, d_in]``; a sparsify folder loads here as
sparsify runs it (no release of the shipped registry uses this conversion).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.io import hub
from saehooks.io.common import (
    SAEFileError,
    cfg_bool,
    make_config,
    read_json,
    read_safetensors,
)
from saehooks.io.registry import ReleaseSAE
from saehooks.io.release_names import (  # noqa: F401 (ReleaseInfo re-exported)
    GEMMA_2_MODELS,
    ReleaseInfo,
    describe,
    gemma_2_hook,
    gemma_3_hook,
    layer_number,
)
from saehooks.sae import SAEConfig

Loaded = tuple[SAEConfig, dict[str, Tensor], dict[str, Any]]


# ---- shared steps ------------------------------------------------------------------------
def _where(entry: ReleaseSAE, file: str = "") -> str:
    return f"hf://{entry.repo_id}/{entry.path}{'/' + file if file else ''}"


def _file(entry: ReleaseSAE, name: str, required: bool = True) -> Path | None:
    """Download ``<path>/<name>`` of the release's repository (``name`` may be empty)."""
    filename = f"{entry.path}/{name}" if name else entry.path
    return hub.download(entry.repo_id, filename, required=required)


def _check_keys(found: dict[str, Any], expected: set[str], where: str) -> None:
    missing = sorted(expected - set(found))
    if missing:
        raise SAEFileError(f"{where}: missing tensors {missing} (found {sorted(found)})")


def _drop_unit_scaling_factor(tensors: dict[str, Tensor], where: str) -> None:
    """SAELens' rule for a ``scaling_factor`` in files without a finetuning flag."""
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise SAEFileError(
            f"{where}: tensor 'scaling_factor' is not all ones, which this "
            "layout does not use (SAELens refuses it too)"
        )


@torch.no_grad()
def fold_norm_scaling_factor(tensors: dict[str, Tensor], scale: float) -> None:
    """Fold an input scale ``s`` into the weights, in place: the SAE run on raw ``x``
    then computes what it computed on ``s * x``, its output divided by ``s``.

    Source: SAELens' ``SAE.fold_activation_norm_scaling_factor``: ``W_enc *= s``,
    ``W_dec /= s``, ``b_dec /= s`` (biases after the encoder matmul and thresholds stay).
    """
    tensors["W_enc"] = tensors["W_enc"] * scale
    tensors["W_dec"] = tensors["W_dec"] / scale
    tensors["b_dec"] = tensors["b_dec"] / scale


def _apply_normalisation(
    entry: ReleaseSAE, norm: Any, tensors: dict[str, Tensor], metadata: dict[str, Any]
) -> None:
    """Fold ``expected_average_only_in`` with the registry's factor, as SAELens does."""
    if norm != "expected_average_only_in":
        return
    metadata["normalize_activations"] = norm
    if entry.norm_scaling_factor is None:
        warnings.warn(
            f"{entry.release}/{entry.sae_id}: normalize_activations is "
            "'expected_average_only_in' but the registry has no norm_scaling_factor "
            "for it, so the SAE runs on unscaled inputs (as SAELens does)",
            UserWarning,
            stacklevel=4,
        )
        return
    fold_norm_scaling_factor(tensors, entry.norm_scaling_factor)
    metadata["norm_scaling_factor"] = entry.norm_scaling_factor


def _config(
    entry: ReleaseSAE,
    where: str,
    tensors: dict[str, Tensor],
    architecture: str,
    hook_name: str,
    apply_b_dec_to_input: bool,
    metadata: dict[str, Any],
    k: int | None = None,
) -> SAEConfig:
    d_in, d_sae = tensors["W_enc"].shape
    return make_config(
        where,
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=architecture,
        k=k,
        hook_name=hook_name,
        apply_b_dec_to_input=apply_b_dec_to_input,
        dtype=str(tensors["W_enc"].dtype).removeprefix("torch."),
        metadata=metadata,
    )


def _state_dict(path: Path) -> dict[str, Tensor]:
    """A ``torch.save``'d state dict, read with ``weights_only=True`` only."""
    from saehooks.io.dictionary_learning import read_state_dict

    state = read_state_dict(path)
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


# ---- one loader per conversion ---------------------------------------------------------------
_ARCH_FIELDS = frozenset(
    {
        "architecture",
        "d_in",
        "d_sae",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "reshape_activations",
        "k",
        "rescale_acts_by_decoder_norm",
        "finetuning_scaling_factor",
        "activation_fn",
        "activation_fn_kwargs",
    }
)
"""Config keys that change the SAE; other override keys are provenance (metadata)."""
_PROCESSING_KEYS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _load_sae_lens(entry: ReleaseSAE) -> Loaded:
    from saehooks.io import saelens
    from saehooks.io.saelens_legacy import is_legacy_config, legacy_to_v6

    cfg_path = _file(entry, saelens.CFG_FILE)
    weights_path = _file(entry, saelens.WEIGHTS_FILE)
    sparsity_path = _file(entry, saelens.SPARSITY_FILE, required=False)
    where = _where(entry, saelens.CFG_FILE)
    raw = read_json(cfg_path)
    if is_legacy_config(raw):
        overrides = {k: v for k, v in entry.overrides.items() if k in _ARCH_FIELDS}
        raw = legacy_to_v6({**raw, **overrides}, where)
    meta_key = "meta" if "meta" in raw and "metadata" not in raw else "metadata"
    raw = dict(raw)
    metadata = dict(raw.get(meta_key) or {})
    for key, value in entry.overrides.items():
        if key in _ARCH_FIELDS:
            raw[key] = value
        else:
            metadata[key] = value
    norm = raw.get("normalize_activations")
    if norm == "expected_average_only_in":
        raw["normalize_activations"] = "none"  # folded below (or left, as SAELens does)
    raw[meta_key] = metadata
    cfg = saelens.config_from_dict(raw, where=where)
    tensors = read_safetensors(weights_path)
    fold = cfg_bool(raw, "finetuning_scaling_factor", where, False)
    tensors = saelens.from_saelens_tensors(
        cfg, tensors, _where(entry, saelens.WEIGHTS_FILE), finetuning_scaling_factor=fold
    )
    _apply_normalisation(entry, norm, tensors, cfg.metadata)
    extras: dict[str, Any] = {}
    if sparsity_path is not None:
        sparsity = read_safetensors(sparsity_path)
        log10 = sparsity.get("sparsity")
        if log10 is None or log10.shape != (cfg.d_sae,):
            raise SAEFileError(
                f"{_where(entry, saelens.SPARSITY_FILE)}: expected a tensor "
                f"'sparsity' of shape ({cfg.d_sae},), found {sorted(sparsity)}"
            )
        extras["feature_density"] = 10.0 ** log10.float()
    return cfg, tensors, extras


def _load_gemma_2(entry: ReleaseSAE) -> Loaded:
    import numpy as np

    where = _where(entry, "params.npz")
    path = _file(entry, "params.npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            tensors = {
                ("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(
                    np.array(data[key], dtype=np.float32)
                )
                for key in data.files
            }
    except (OSError, ValueError) as exc:
        raise SAEFileError(
            f"{where}: not a readable .npz file ({exc}); the file is truncated "
            "or corrupt: download it again"
        ) from exc
    _check_keys(tensors, {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}, where)
    _drop_unit_scaling_factor(tensors, where)
    d_in = tensors["W_enc"].shape[0]
    if "embedding" in entry.path:  # SAELens: trained on embeddings scaled by sqrt(d_model)
        tensors["W_enc"] = tensors["W_enc"] / math.sqrt(d_in)
        tensors["W_dec"] = tensors["W_dec"] * math.sqrt(d_in)
    model = next((name for key, name in GEMMA_2_MODELS if key in entry.repo_id), entry.model)
    metadata = {
        "model_name": model,
        "prepend_bos": True,
        "context_size": 1024,
        "dataset_path": "monology/pile-uncopyrighted",
    }
    hook = gemma_2_hook(entry.repo_id, entry.path) or ""
    return _config(entry, where, tensors, "jumprelu", hook, False, metadata), tensors, {}


def _gemma_3_model_name(raw: dict[str, Any], repo_id: str) -> str:
    name = str(raw.get("model_name") or repo_id.replace("gemma-scope-2", "gemma-3"))
    if "google" not in name:
        name = "google/" + name
    name = name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def _load_gemma_3(entry: ReleaseSAE) -> Loaded:
    where = _where(entry, "params.safetensors")
    config_path = _file(entry, "config.json", required=False)
    raw = read_json(config_path) if config_path is not None else {}
    if raw.get("architecture", "jump_relu") != "jump_relu":
        raise SAEFileError(
            f"{_where(entry, 'config.json')}: architecture "
            f"{raw.get('architecture')!r}; Gemma Scope 2 SAEs are 'jump_relu'"
        )
    stored = read_safetensors(_file(entry, "params.safetensors"))
    _check_keys(stored, {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}, where)
    tensors = {
        "W_enc": stored["w_enc"],
        "W_dec": stored["w_dec"],
        "b_enc": stored["b_enc"],
        "b_dec": stored["b_dec"],
        "threshold": stored["threshold"],
    }
    hook, _ = gemma_3_hook(entry.path)
    metadata = {
        "model_name": _gemma_3_model_name(raw, entry.repo_id),
        "prepend_bos": True,
        "context_size": 1024,
        "dataset_path": "monology/pile-uncopyrighted",
    }
    if raw.get("hf_hook_point_in"):
        metadata["hf_hook_name"] = raw["hf_hook_point_in"]
    return _config(entry, where, tensors, "jumprelu", hook or "", False, metadata), tensors, {}


def _load_sparsify(entry: ReleaseSAE) -> Loaded:
    from saehooks.io import sparsify

    _file(entry, sparsify.CFG_FILE)
    weights = _file(entry, sparsify.WEIGHTS_FILE)
    folder = weights.parent
    cfg, tensors, extras = sparsify.load(folder)
    parent = entry.path.rstrip("/").rsplit("/", 1)
    run_config = (
        hub.download(entry.repo_id, f"{parent[0]}/config.json", required=False)
        if len(parent) == 2
        else hub.download(entry.repo_id, "config.json", required=False)
    )
    if run_config is not None:
        try:
            model = json.loads(run_config.read_text()).get("model")
        except (OSError, ValueError):
            model = None
        if isinstance(model, str):
            cfg.metadata.setdefault("model_name", model)
    return cfg, tensors, extras


def _load_dictionary_learning_1(entry: ReleaseSAE) -> Loaded:
    from saehooks.io import dictionary_learning

    _file(entry, dictionary_learning.CONFIG_FILE)
    weights = _file(entry, dictionary_learning.WEIGHTS_FILE)
    return dictionary_learning.load(weights.parent)


def _load_llama_scope(entry: ReleaseSAE) -> Loaded:
    hyper_where = _where(entry, "hyperparams.json")
    hyper = read_json(_file(entry, "hyperparams.json"))
    where = _where(entry, "checkpoints/final.safetensors")
    stored = read_safetensors(_file(entry, "checkpoints/final.safetensors"))
    _check_keys(stored, {"encoder.weight", "decoder.weight", "encoder.bias", "decoder.bias"}, where)
    try:
        d_in = int(hyper["d_model"])
        threshold = float(hyper["jump_relu_threshold"])
        average_norm = float(hyper["dataset_average_activation_norm"]["in"])
        hook = str(hyper["hook_point_in"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SAEFileError(
            f"{hyper_where}: missing or malformed field {exc}; expected "
            "d_model, jump_relu_threshold, dataset_average_activation_norm.in "
            "and hook_point_in"
        ) from exc
    tensors = {
        "W_enc": stored["encoder.weight"].T.contiguous(),
        "W_dec": stored["decoder.weight"].T.contiguous(),
        "b_enc": stored["encoder.bias"],
        "b_dec": stored["decoder.bias"],
    }
    # SAELens: one scalar threshold, scaled by the same input scale it folds below
    scale = math.sqrt(d_in) / average_norm
    tensors["threshold"] = torch.full(
        (tensors["W_enc"].shape[1],), threshold * scale, dtype=tensors["W_enc"].dtype
    )
    metadata: dict[str, Any] = {
        "model_name": "meta-llama/Llama-3.1-8B",
        "prepend_bos": True,
        "context_size": 1024,
        "dataset_path": "cerebras/SlimPajama-627B",
    }
    _apply_normalisation(entry, "expected_average_only_in", tensors, metadata)
    return _config(entry, where, tensors, "jumprelu", hook, False, metadata), tensors, {}


def _linear_pickle(
    entry: ReleaseSAE, enc: str, dec: str, b_enc: str, b_dec: str, transpose: bool
) -> tuple[dict[str, Tensor], str]:
    where = _where(entry)
    stored = _state_dict(_file(entry, ""))
    _check_keys(stored, {enc, dec, b_enc, b_dec}, where)
    tensors = {
        "W_enc": stored[enc].T.contiguous() if transpose else stored[enc],
        "W_dec": stored[dec].T.contiguous() if transpose else stored[dec],
        "b_enc": stored[b_enc],
        "b_dec": stored[b_dec],
    }
    return tensors, where


def _load_qwen_scope(entry: ReleaseSAE) -> Loaded:
    tensors, where = _linear_pickle(entry, "W_enc", "W_dec", "b_enc", "b_dec", transpose=True)
    k = layer_number(r"L0_(\d+)", entry.repo_id)
    if k is None:
        raise SAEFileError(
            f"{where}: the repository name {entry.repo_id!r} does not give k (expected ...-L0_<k>)"
        )
    info = describe(entry)
    metadata = {"model_name": entry.model, "prepend_bos": True, "context_size": 1024}
    cfg = _config(entry, where, tensors, "topk", info.hook_name or "", False, metadata, k=k)
    return cfg, tensors, {}


def _load_linear_relu(entry: ReleaseSAE) -> Loaded:
    if entry.conversion == "goodfire":
        names = (
            "encoder_linear.weight",
            "decoder_linear.weight",
            "encoder_linear.bias",
            "decoder_linear.bias",
        )
        dataset = "lmsys/lmsys-chat-1m"
    else:
        names = ("encoder.weight", "decoder.weight", "encoder.bias", "decoder.bias")
        dataset = "lmsys/lmsys-chat-1m"
    tensors, where = _linear_pickle(entry, *names, transpose=True)
    metadata = {"model_name": entry.model, "prepend_bos": True, "dataset_path": dataset}
    hook = describe(entry).hook_name or ""
    return _config(entry, where, tensors, "relu", hook, False, metadata), tensors, {}


LOADERS = {
    "sae_lens": _load_sae_lens,
    "gemma_2": _load_gemma_2,
    "gemma_3": _load_gemma_3,
    "sparsify": _load_sparsify,
    "dictionary_learning_1": _load_dictionary_learning_1,
    "llama_scope": _load_llama_scope,
    "qwen_scope": _load_qwen_scope,
    "goodfire": _load_linear_relu,
    "deepseek_r1": _load_linear_relu,
}
"""SAELens ``conversion_func`` -> loader returning ``(cfg, tensors, extras)``."""


def load(entry: ReleaseSAE) -> Loaded:
    """Fetch and convert one release SAE, as SAELens' ``SAE.from_pretrained`` would.

    Args:
        entry: the registry record (:func:`saehooks.io.registry.lookup`).

    Returns:
        ``(cfg, tensors, extras)``: the config (``metadata`` holds ``release``,
        ``sae_id``, ``repo_id``, ``repo_path``, ``neuronpedia_id``, ``model_name`` and the
        release's provenance), the tensors under this library's names (checked against
        the config by the caller), extras (``feature_density [d_sae]`` from
        ``sparsity.safetensors``).

    Raises:
        SAEFileError: a kind of SAE saehooks does not run (transcoder, ``hook_z``,
            run-time normalisation; the reason named), missing tensors or fields,
            unreadable files.
        SAENotFoundError: a needed file is not cached and cannot be downloaded (the
            repository and file named, with the command that fetches them).
    """
    info = describe(entry)
    name = f"{entry.release}/{entry.sae_id}"
    if not info.loadable:
        raise SAEFileError(f"{name} ({_where(entry)}) is {info.reason}")
    try:
        cfg, tensors, extras = LOADERS[entry.conversion](entry)
    except SAEFileError as exc:
        raise SAEFileError(f"{name}: {exc}") from exc
    metadata = dict(cfg.metadata)
    kwargs = metadata.get("model_from_pretrained_kwargs")
    if isinstance(kwargs, dict):
        processing = {key: bool(kwargs[key]) for key in _PROCESSING_KEYS if key in kwargs}
        if processing:
            metadata.setdefault("model_processing", processing)
    if not metadata.get("model_name"):
        metadata["model_name"] = entry.model
    metadata.update(
        release=entry.release,
        sae_id=entry.sae_id,
        repo_id=entry.repo_id,
        repo_path=entry.path,
        saelens_conversion=entry.conversion,
    )
    if entry.neuronpedia_id is not None or "neuronpedia_id" not in metadata:
        metadata["neuronpedia_id"] = entry.neuronpedia_id
    return cfg.replace(metadata=metadata), tensors, extras
