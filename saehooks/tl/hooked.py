"""TransformerLens 3: a ``HookedTransformer`` for a hub name or a local Hugging Face
directory (:func:`saehooks.tl.load_model` calls this when TransformerLens 3 is
installed; TransformerLens 4 boots a ``TransformerBridge`` instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from saehooks.errors import InputError


def _gpt2_hooked_config(hf_config: Any) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Hugging Face GPT-2 config.

    TransformerLens 3 reads ``n_ctx`` from the HF config, which transformers 5 no
    longer has for GPT-2 (it is ``n_positions``), so these fields are built here.
    """
    return {
        "d_model": hf_config.n_embd,
        "d_head": hf_config.n_embd // hf_config.n_head,
        "n_heads": hf_config.n_head,
        "d_mlp": hf_config.n_inner or 4 * hf_config.n_embd,
        "n_layers": hf_config.n_layer,
        "n_ctx": hf_config.n_positions,
        "eps": hf_config.layer_norm_epsilon,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.activation_function,
        "use_attn_scale": getattr(hf_config, "scale_attn_weights", True),
        "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": hf_config.scale_attn_by_inverse_layer_idx,
        "normalization_type": "LN",
        "original_architecture": "GPT2LMHeadModel",
    }


def _tl3_config_from_dir(target: str, loading: Any) -> dict[str, Any]:
    """TransformerLens 3's ``convert_hf_model_config`` for a local directory.

    TransformerLens 3 guesses the architecture from substrings of the name it is given
    (``"llama"``, ``"gemma"``) before it reads ``config.json``, and then fails on a
    directory such as ``models/llama-1b`` (no config read) or ``my-gemma`` (taken for
    Gemma 1). So the directory is handed over under a neutral name (a symlink).

    Raises:
        InputError: TransformerLens 3 cannot build this architecture from a local
            config (it knows Gemma 2 and 3 only by their official hub names).
    """
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "model"
            try:
                link.symlink_to(Path(target).resolve(), target_is_directory=True)
                name = str(link)
            except OSError:  # no symlinks here: the original name
                name = target
            return loading.convert_hf_model_config(name)
    except NotImplementedError as exc:
        raise InputError(
            f"TransformerLens 3 cannot load the local model {target!r}: {exc} "
            "(it knows some architectures, e.g. Gemma 2 and 3, only by their "
            "official hub names); install TransformerLens 4 "
            "(pip install 'transformer-lens>=4'), or pass the hub name"
        ) from exc


def load_hooked_transformer(
    target: str, device, dtype, processing: dict, **kwargs: Any
) -> nn.Module:
    """A TransformerLens 3 ``HookedTransformer`` for a hub name or a local HF directory.

    ``HookedTransformer.from_pretrained`` accepts only the official model names it
    lists, so a local directory (the shipped reference model, offline) is loaded by
    hand with TransformerLens 3's own pieces: the HF model and config from the
    directory, its ``get_pretrained_state_dict`` weight conversion, and
    ``load_and_process_state_dict`` applying ``processing`` (fold_ln,
    center_writing_weights, center_unembed, fold_value_biases) exactly as
    ``from_pretrained`` would.

    Args:
        target: an official model name or a local directory holding ``config.json``.
        device, dtype: where and in which dtype to put the model.
        processing: the flags computed by :func:`load_model`.
        **kwargs: passed on to ``from_pretrained`` (hub names only).

    Raises:
        OSError: the hub name cannot be loaded (offline); the message says what to do.
    """
    from transformer_lens import HookedTransformer

    flags = {
        key: processing[key]
        for key in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    }
    if not Path(target).is_dir():
        try:
            return HookedTransformer.from_pretrained(
                target, device=device, dtype=dtype, **flags, **kwargs
            )
        except OSError as exc:
            raise OSError(
                f"could not load model {target!r}: {exc}. Offline, pass a local "
                "directory written by save_pretrained."
            ) from exc

    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(target)
    if hf_config.architectures and hf_config.architectures[0] == "GPT2LMHeadModel":
        cfg_dict = _gpt2_hooked_config(hf_config)
    else:
        cfg_dict = _tl3_config_from_dir(target, loading)
    if flags["fold_ln"] and cfg_dict.get("normalization_type") in ("LN", "RMS"):
        cfg_dict["normalization_type"] += "Pre"
    cfg_dict |= {
        "model_name": Path(target).name,
        "tokenizer_name": target,
        "init_weights": False,
        "device": str(device),
        "dtype": dtype,
        "n_devices": 1,
        "default_prepend_bos": True,
        "from_checkpoint": False,
    }
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    hf_model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    state_dict = loading.get_pretrained_state_dict(target, cfg, hf_model, dtype=dtype)
    del hf_model
    model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(target), move_to_device=False)
    model.load_and_process_state_dict(state_dict, **flags)
    return model.to(device)
