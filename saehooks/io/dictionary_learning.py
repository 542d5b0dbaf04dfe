"""saprmarks/dictionary_learning's layout: ``ae.pt`` (a state dict) + ``config.json``.

Source: saprmarks/dictionary_learning, ``dictionary.py`` and ``trainers/*.py``: each
training run saves ``torch.save(ae.state_dict(), "ae.pt")`` and the trainer's config
as ``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer",
"lm_name", "submodule_name", ...}, "buffer": {...}}``. State-dict layouts by class
(``nn.Linear`` weights are ``[out, in]``):

================================  ====================================================
``AutoEncoder``                   ``encoder.weight [F, D]``, ``encoder.bias [F]``,
                                  ``decoder.weight [D, F]``, ``bias [D]`` (relu;
                                  ``bias`` is subtracted from the input)
``AutoEncoderNew``                ``encoder.*``, ``decoder.weight``, ``decoder.bias``
                                  (relu; nothing subtracted from the input)
``GatedAutoEncoder``              ``encoder.weight``, ``decoder.weight``,
                                  ``decoder_bias``, ``r_mag``, ``gate_bias``,
                                  ``mag_bias``
``JumpReluAutoEncoder``           ``W_enc [D, F]``, ``b_enc``, ``W_dec [F, D]``,
                                  ``b_dec``, ``threshold [F]`` (input not centred)
``AutoEncoderTopK``               ``encoder.*``, ``decoder.weight``, ``b_dec``,
                                  ``k``, ``threshold`` (scalar) -> topk
``BatchTopKSAE``                  as ``AutoEncoderTopK``; runs with its global
                                  ``threshold`` -> jumprelu
``MatryoshkaBatchTopKSAE``        ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``k``,
                                  ``threshold``, ``group_sizes`` -> jumprelu
================================  ====================================================

``ae.pt`` is a pickle. It is read only with ``torch.load(weights_only=True)``, which
refuses arbitrary Python objects; a file that needs more is refused, never unpickled.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.io.common import SAEFileError, cfg_dict, cfg_int, cfg_str, make_config, read_json
from saehooks.sae import SAEConfig

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"

LAYOUTS: dict[str, frozenset[str]] = {
    "AutoEncoder": frozenset({"encoder.weight", "encoder.bias", "decoder.weight", "bias"}),
    "AutoEncoderNew": frozenset(
        {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    ),
    "GatedAutoEncoder": frozenset(
        {"encoder.weight", "decoder.weight", "decoder_bias", "r_mag", "gate_bias", "mag_bias"}
    ),
    "JumpReluAutoEncoder": frozenset({"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}),
    "AutoEncoderTopK": frozenset(
        {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}
    ),
    "BatchTopKSAE": frozenset(
        {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}
    ),
    "MatryoshkaBatchTopKSAE": frozenset(
        {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"}
    ),
}
"""dictionary_learning class -> the tensors its ``state_dict`` holds."""


def is_format(path: Path) -> bool:
    """True when ``path`` holds dictionary_learning's ``ae.pt``."""
    return (path / WEIGHTS_FILE).is_file()


def read_state_dict(path: Path) -> dict[str, Any]:
    """Load ``ae.pt`` with ``torch.load(weights_only=True)`` only.

    Raises:
        SAEFileError: the file is missing, truncated or corrupt, holds pickled Python
            objects beyond tensors and plain containers, or is not a state dict.
    """
    if not path.is_file():
        raise SAEFileError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SAEFileError(
            f"{path}: refusing to load: the file holds pickled Python objects that "
            f"torch.load(weights_only=True) will not rebuild ({str(exc).splitlines()[0]}). "
            "Unpickling could run arbitrary code, so saehooks never does it. Where you "
            "trust the file, re-save the weights alone: "
            "torch.save(ae.state_dict(), 'ae.pt')"
        ) from exc
    except Exception as exc:  # zip / EOF / storage errors from a damaged file
        raise SAEFileError(
            f"{path}: not a readable torch file ({type(exc).__name__}: {exc}); "
            "it is truncated or corrupt: download or save it again"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SAEFileError(
            f"{path}: expected a state dict (str -> tensor), found "
            f"{type(state).__name__}; save it with torch.save(ae.state_dict())"
        )
    return state


def _detect_class(tensor_names: set[str], config_class: str | None, where: str) -> str:
    if config_class is not None:
        if config_class not in LAYOUTS:
            raise SAEFileError(
                f"{where}: dictionary class {config_class!r} is not supported; "
                f"supported: {sorted(LAYOUTS)}"
            )
        return config_class
    matches = [name for name, keys in LAYOUTS.items() if keys == tensor_names]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise SAEFileError(
            f"{where}: the tensors fit {matches}, which run differently; "
            f"add {CONFIG_FILE} with trainer.dict_class to say which"
        )
    closest = min(LAYOUTS, key=lambda n: len(LAYOUTS[n] ^ tensor_names))
    raise SAEFileError(
        f"{where}: tensors {sorted(tensor_names)} match no dictionary_learning class; "
        f"closest is {closest}: missing {sorted(LAYOUTS[closest] - tensor_names)}, "
        f"unexpected {sorted(tensor_names - LAYOUTS[closest])}"
    )


def _hook_name(trainer: dict[str, Any], where: str) -> str:
    """TransformerLens hook for the trainer's ``layer`` / ``submodule_name``."""
    hook_name = cfg_str(trainer, "hook_name", where, None)
    if hook_name:
        return hook_name
    layer = cfg_int(trainer, "layer", where, None, minimum=0)
    if layer is None:
        return ""
    sub = (cfg_str(trainer, "submodule_name", where, None) or "").lower()
    if re.search(r"mlp", sub):
        return f"blocks.{layer}.hook_mlp_out"
    if re.search(r"attn|attention", sub):
        return f"blocks.{layer}.hook_attn_out"
    return f"blocks.{layer}.hook_resid_post"


def _convert(dict_class: str, sd: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(architecture fields, tensors under this library's names) for one class."""
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        tensors = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    else:
        tensors = {
            "W_enc": sd["encoder.weight"].T.contiguous(),
            "W_dec": sd["decoder.weight"].T.contiguous(),
        }
    d_sae = tensors["W_enc"].shape[1]
    ref = tensors["W_enc"]
    if dict_class == "AutoEncoder":
        tensors |= {"b_enc": sd["encoder.bias"], "b_dec": sd["bias"]}
        return {"architecture": "relu", "apply_b_dec_to_input": True}, tensors
    if dict_class == "AutoEncoderNew":
        tensors |= {"b_enc": sd["encoder.bias"], "b_dec": sd["decoder.bias"]}
        return {"architecture": "relu", "apply_b_dec_to_input": False}, tensors
    if dict_class == "GatedAutoEncoder":
        tensors |= {
            "b_dec": sd["decoder_bias"],
            "b_gate": sd["gate_bias"],
            "r_mag": sd["r_mag"],
            "b_mag": sd["mag_bias"],
            "b_enc": torch.zeros(d_sae, dtype=ref.dtype),
        }
        return {"architecture": "gated", "apply_b_dec_to_input": True}, tensors
    if dict_class == "JumpReluAutoEncoder":
        tensors["threshold"] = sd["threshold"]
        return {"architecture": "jumprelu", "apply_b_dec_to_input": False}, tensors
    if dict_class == "AutoEncoderTopK":
        tensors |= {"b_enc": sd["encoder.bias"], "b_dec": sd["b_dec"]}
        return {"architecture": "topk", "k": int(sd["k"]), "apply_b_dec_to_input": True}, tensors
    # BatchTopKSAE / MatryoshkaBatchTopKSAE: inference keeps latents above one threshold
    if dict_class == "BatchTopKSAE":
        tensors |= {"b_enc": sd["encoder.bias"], "b_dec": sd["b_dec"]}
    threshold = float(sd["threshold"])
    if threshold < 0:
        raise SAEFileError(
            f"{dict_class} has threshold {threshold} (never calibrated: "
            "training stopped before threshold_start_step), so its inference "
            "rule is undefined"
        )
    tensors["threshold"] = torch.full((d_sae,), threshold, dtype=ref.dtype)
    return {"architecture": "jumprelu", "apply_b_dec_to_input": True}, tensors


def load(path: Path) -> tuple[SAEConfig, dict[str, Tensor], dict[str, Any]]:
    """Read a dictionary_learning folder (``ae.pt`` and, optionally, ``config.json``).

    Args:
        path: the folder.

    Returns:
        ``(cfg, tensors, extras)`` with tensors under this library's names. The hook
        is ``blocks.<layer>.hook_resid_post`` (``hook_mlp_out`` / ``hook_attn_out``
        when ``submodule_name`` names an MLP / attention module); the trainer config
        is kept in ``cfg.metadata["dictionary_learning_config"]``.

    Raises:
        SAEFileError: an unreadable or refused ``ae.pt``; tensors that fit no class
            (named); a class whose tensors disagree with ``config.json``.
            An unsupported ``dict_class``; a ``config.json`` field of the wrong type
            (``trainer.layer`` not an integer, ...).
    """
    where = str(path / WEIGHTS_FILE)
    state = read_state_dict(path / WEIGHTS_FILE)
    non_tensors = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    sd = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    config_where = str(path / CONFIG_FILE)
    config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
    trainer = cfg_dict(config, "trainer", config_where)
    trainer_where = f"{config_where} (trainer)"
    dict_class = _detect_class(set(sd), cfg_str(trainer, "dict_class", trainer_where, None), where)
    expected = LAYOUTS[dict_class]
    if set(sd) != expected:
        raise SAEFileError(
            f"{where}: {dict_class} holds {sorted(expected)}; missing "
            f"{sorted(expected - set(sd))}, unexpected {sorted(set(sd) - expected)}"
        )
    try:
        fields, tensors = _convert(dict_class, sd)
    except SAEFileError as exc:
        raise SAEFileError(f"{where}: {exc}") from None
    d_in, d_sae = tensors["W_enc"].shape
    metadata: dict[str, Any] = {"dictionary_class": dict_class}
    if trainer.get("lm_name"):
        metadata["model_name"] = trainer["lm_name"]
    if config:
        metadata["dictionary_learning_config"] = config
    if non_tensors:
        metadata["dictionary_learning_extras"] = {k: repr(v) for k, v in non_tensors.items()}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        metadata["dictionary_learning_threshold"] = float(sd["threshold"])
        if dict_class != "AutoEncoderTopK":
            metadata["batch_topk_k"] = int(sd["k"])
    if "group_sizes" in sd:
        metadata["group_sizes"] = sd["group_sizes"].tolist()
    cfg = make_config(
        where,
        d_in=int(d_in),
        d_sae=int(d_sae),
        hook_name=_hook_name(trainer, trainer_where),
        dtype=str(tensors["W_enc"].dtype),
        metadata=metadata,
        **fields,
    )
    return cfg, tensors, {}
