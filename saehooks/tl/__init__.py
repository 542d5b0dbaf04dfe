"""Loading TransformerLens models, and the little we need to know about them.

This is the only module that imports ``transformer_lens`` (lazily, inside functions),
so the SAE core imports and works without it. Two backends are supported:

* TransformerLens 4 ``TransformerBridge`` (booted with ``boot_transformers`` and put
  into compatibility mode for the classic hook names), the main target;
* TransformerLens 3 ``HookedTransformer``, where the hook API is the same.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saehooks.errors import HookNameError, InputError, SAENotFoundError

PROCESSING_ATTR = "saehooks_processing"
REFERENCE_MODEL_NAME = "saehooks-reference-lm"


def tl_major_version() -> int | None:
    """Installed TransformerLens major version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0])
    except PackageNotFoundError:
        return None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def load_model(
    name_or_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Load a model ready for hooking.

    Args:
        name_or_dir: ``None`` for the shipped reference model; a local Hugging Face
            directory; or a model name TransformerLens knows (downloads when online).
        device: where to put the model.
        dtype: parameter dtype.
        compatibility_mode: TransformerLens 4 only: call ``enable_compatibility_mode``
            (classic hook names such as ``blocks.2.hook_resid_post``).
        fold_ln, center_writing_weights, center_unembed, fold_value_biases: the
            weight processing of HookedTransformer, applied by compatibility mode
            (TL 4) or ``from_pretrained`` (TL 3). It changes residual-stream values,
            not outputs; SAEs record it in their metadata.
        **kwargs: passed on to ``boot_transformers`` / ``from_pretrained``.

    Returns:
        A ``TransformerBridge`` (TL 4) or ``HookedTransformer`` (TL 3) in eval mode,
        with its processing recorded (see :func:`model_processing`).

    Raises:
        SAENotFoundError: a local path that does not exist.
        InputError: a directory that holds no model (no ``config.json``).
        DeviceError: a device this machine does not have (e.g. ``"cuda"`` without a GPU).
        ImportError: TransformerLens is not installed.
    """
    from saehooks.checks import check_device
    from saehooks.reference import reference_model_dir

    device = check_device(device)
    target = str(reference_model_dir() if name_or_dir is None else name_or_dir)
    if _looks_like_path(target):
        path = Path(target).expanduser()
        if not path.exists():
            raise SAENotFoundError(
                f"model directory {str(path)!r} does not exist; pass a "
                "folder written by save_pretrained, or a hub model name"
            )
        if not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else "a file"
            raise InputError(
                f"{str(path)!r} is not a model directory: it has no config.json "
                f"(found {found}); pass a folder written by save_pretrained"
            )
        target = str(path)
    major = tl_major_version()
    if major is None:
        raise ImportError("TransformerLens is not installed: pip install 'transformer-lens>=4'")
    processing = {
        "compatibility_mode": compatibility_mode,
        "fold_ln": fold_ln and compatibility_mode,
        "center_writing_weights": center_writing_weights and compatibility_mode,
        "center_unembed": center_unembed and compatibility_mode,
        "fold_value_biases": fold_value_biases and compatibility_mode,
    }
    if major >= 4:
        model = _load_bridge(target, device, dtype, processing, **kwargs)
    else:
        from saehooks.tl.hooked import load_hooked_transformer

        model = load_hooked_transformer(target, device, dtype, processing, **kwargs)
    setattr(model, PROCESSING_ATTR, {"backend": type(model).__name__, **processing})
    # a stable name in SAE metadata instead of this machine's path
    model.saehooks_model_name = REFERENCE_MODEL_NAME if name_or_dir is None else target
    return model.eval()


def _patch_bridge_kv_cache() -> None:
    """Make TransformerLens 4's KV cache work under transformers >= 5.2x (idempotent).

    transformers now hands attention its KV cache as ``cache=``, but the bridge's
    ``AttentionBridge._update_kv_cache`` reads only ``past_key_values``/``layer_past``:
    the cache stays empty and ``generate(use_past_kv_cache=True)`` attends to the
    newest token alone. Passing ``cache`` on as ``past_key_values`` restores it
    (greedy cached and uncached generation then agree; see tests).
    """
    try:
        from transformer_lens.model_bridge.generalized_components import attention
    except ImportError:
        return
    original = getattr(attention.AttentionBridge, "_update_kv_cache", None)
    if original is None or getattr(original, "_saehooks_patched", False):
        return

    def update(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
            kwargs["past_key_values"] = kwargs.get("cache")
        return original(self, *args, **kwargs)

    update._saehooks_patched = True
    attention.AttentionBridge._update_kv_cache = update


def _load_bridge(target: str, device, dtype, processing: dict, **kwargs: Any) -> nn.Module:
    from transformer_lens.model_bridge import TransformerBridge

    _patch_bridge_kv_cache()

    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar of every load
    try:
        model = TransformerBridge.boot_transformers(target, device=device, dtype=dtype, **kwargs)
    except OSError as exc:
        raise OSError(
            f"could not load model {target!r}: {exc}. Offline, pass a local "
            "directory written by save_pretrained."
        ) from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    _pass_cache_as_transformers_wants(model)
    if processing["compatibility_mode"]:
        model.enable_compatibility_mode(
            disable_warnings=True,
            fold_ln=processing["fold_ln"],
            center_writing_weights=processing["center_writing_weights"],
            center_unembed=processing["center_unembed"],
            fold_value_biases=processing["fold_value_biases"],
        )
    return model


def _pass_cache_as_transformers_wants(model: nn.Module) -> None:
    """Hand the Hugging Face model its KV cache as ``cache=`` where its forward takes that.

    TransformerLens 4's ``generate`` passes ``past_key_values=``, which transformers 5
    still accepts but warns about (a FutureWarning on every cached generation). A
    forward pre-hook on the wrapped HF model renames the argument; models whose forward
    has no ``cache`` parameter are left alone.
    """
    import inspect

    hf_model = getattr(model, "original_model", None)
    if hf_model is None or "cache" not in inspect.signature(hf_model.forward).parameters:
        return

    def rename(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "past_key_values" in kwargs and kwargs.get("cache") is None:
            kwargs["cache"] = kwargs.pop("past_key_values")
        return args, kwargs

    hf_model.register_forward_pre_hook(rename, with_kwargs=True)


def model_processing(model: nn.Module) -> dict[str, Any]:
    """How the model's weights were processed, as SAEs record it in their metadata.

    Returns ``{"backend", "compatibility_mode", "fold_ln", "center_writing_weights",
    "center_unembed", "fold_value_biases"}``; values that cannot be told from a model
    not loaded by :func:`load_model` are ``None``.
    """
    recorded = getattr(model, PROCESSING_ATTR, None)
    if recorded is not None:
        return dict(recorded)
    out: dict[str, Any] = {"backend": type(model).__name__}
    if hasattr(model, "compatibility_mode"):
        out["compatibility_mode"] = bool(model.compatibility_mode)
        processed = bool(getattr(model, "_weights_processed", False))
        out["fold_ln"] = processed or None
    else:  # HookedTransformer
        out["compatibility_mode"] = True
        out["fold_ln"] = getattr(model.cfg, "normalization_type", None) in ("LNPre", "RMSPre")
    for key in ("center_writing_weights", "center_unembed", "fold_value_biases"):
        out.setdefault(key, None)
    return out


def model_name(model: nn.Module) -> str:
    """The name SAE metadata records: the hub name or local path it was loaded from,
    ``saehooks-reference-lm`` for the shipped model."""
    name = getattr(model, "saehooks_model_name", None)
    return str(name or getattr(model.cfg, "model_name", type(model).__name__))


def hook_dict(model: nn.Module) -> dict[str, nn.Module]:
    """Every hook point of the model by name (aliases included)."""
    return dict(model.hook_dict)


def architecture_name(model: nn.Module) -> str:
    """The model's Hugging Face architecture, e.g. ``"LlamaForCausalLM"`` (TL 4 bridge:
    ``cfg.architecture``; TL 3: ``cfg.original_architecture``), else its class name."""
    cfg = getattr(model, "cfg", None)
    for key in ("architecture", "original_architecture"):
        value = getattr(cfg, key, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def _missing_hook_reason(model: nn.Module, name: str) -> str:
    """Why TransformerLens has no hook ``name`` on this architecture, where known."""
    if name.endswith("hook_resid_mid") and getattr(model.cfg, "parallel_attn_mlp", False):
        return (
            "; attention and MLP read the same residual stream in parallel there, so "
            "TransformerLens has no hook_resid_mid (use hook_resid_pre, hook_attn_out or "
            "hook_mlp_out)"
        )
    return ""


def check_hook_name(model: nn.Module, name: str) -> None:
    """Raise :class:`HookNameError` if ``name`` is not a hook of ``model``.

    The message names the model's architecture and the hook, says why TransformerLens
    lacks it where that is known (e.g. ``hook_resid_mid`` on parallel-attention models
    such as GPT-NeoX / Pythia), and lists the closest valid names.
    """
    names = list(hook_dict(model))
    if name in names:
        return
    hint = _missing_hook_reason(model, name)
    layer = re.match(r"blocks\.(\d+)\.", name)
    n_layers = getattr(model.cfg, "n_layers", None)
    if layer and n_layers is not None and int(layer.group(1)) >= n_layers:
        hint = f"; the model has {n_layers} layers (blocks.0 … blocks.{n_layers - 1})"
        name_in_range = re.sub(r"blocks\.\d+\.", f"blocks.{n_layers - 1}.", name, count=1)
        close = difflib.get_close_matches(name_in_range, names, n=3, cutoff=0.6)
    else:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise HookNameError(
        f"hook {name!r} not found on this {architecture_name(model)} model{hint}{suggestion}"
    )


_D_MODEL_HOOKS = re.compile(
    r"(hook_resid_(pre|mid|post)|hook_attn_out|hook_mlp_out|hook_embed|hook_pos_embed|"
    r"ln_final\.hook_normalized)$"
)
_D_MLP_HOOKS = re.compile(r"mlp\.hook_(pre|post)$")
HEAD_HOOKS = re.compile(r"attn\.hook_(q|k|v|z)$")
"""Per-head hooks (classic names): activations ``[batch, pos, n_heads, d_head]``."""
SHAPES_ATTR = "_saehooks_hook_shapes"
SAE_HOOK_INFIX = ".hook_sae_"


def hook_point(model: nn.Module, name: str) -> nn.Module:
    """The hook-point object behind ``name`` (aliases give the same object).

    Raises:
        HookNameError: the model has no such hook (closest names suggested).
    """
    check_hook_name(model, name)
    return hook_dict(model)[name]


CLASSIC_HOOK = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_(scale|normalized)"
    r"|blocks\.\d+\.(hook_(resid_pre|resid_mid|resid_post|attn_in|q_input|k_input|v_input"
    r"|mlp_in|attn_out|mlp_out)"
    r"|ln\d(_post)?\.hook_(scale|normalized)"
    r"|attn\.hook_(q|k|v|z|attn_scores|pattern|result|rot_q|rot_k)"
    r"|mlp\.hook_(pre|pre_linear|post)))$"
)
"""Hook names of TransformerLens 3's ``HookedTransformer``, the form SAELens files use
(``blocks.3.hook_resid_post``, ``blocks.3.attn.hook_z``); TransformerLens 4 bridges offer
them as aliases of their canonical names (``blocks.3.hook_out``, ``blocks.3.attn.o.hook_in``)."""


def hook_aliases(model: nn.Module, name: str) -> list[str]:
    """Every name of the hook point ``name`` names (itself included), in the model's
    ``hook_dict`` order: on a TransformerLens 4 bridge the canonical module path and its
    aliases (``blocks.0.hook_out``, ``blocks.0.hook_resid_post``).

    Raises:
        HookNameError: the model has no such hook (closest names suggested).
    """
    point = hook_point(model, name)
    return [n for n, hp in hook_dict(model).items() if hp is point]


def classic_hook_name(model: nn.Module, name: str) -> str:
    """The classic (HookedTransformer / SAELens) name of the hook point ``name`` names.

    ``blocks.3.hook_out`` -> ``blocks.3.hook_resid_post``, ``blocks.0.attn.o.hook_in``
    -> ``blocks.0.attn.hook_z``, ``blocks.0.mlp.out.hook_in`` -> ``blocks.0.mlp.hook_post``
    (which canonical name a classic one stands for depends on the architecture, e.g.
    ``mlp.hook_pre`` is ``mlp.gate.hook_out`` on gated MLPs, so the mapping is read from
    the model's own aliases: names of one hook-point object). A classic name is returned
    as is; a hook point with no classic name (``blocks.0.attn.q.hook_in``,
    ``hook_unembed``) gets its canonical name (:func:`canonical_hook_name`), so the
    result depends only on the hook point, not on which of its names was passed.
    SAE metadata stores this form so that an SAE moves between bridges booted with and
    without ``enable_compatibility_mode()`` and SAELens.

    Raises:
        HookNameError: the model has no such hook.
    """
    if CLASSIC_HOOK.match(name):
        check_hook_name(model, name)
        return name
    classic = next((n for n in hook_aliases(model, name) if CLASSIC_HOOK.match(n)), None)
    return classic or canonical_hook_name(model, name)


def canonical_hook_name(model: nn.Module, name: str) -> str:
    """The TransformerLens 4 canonical name of the hook point ``name`` names: its module
    path (``blocks.3.hook_resid_post`` -> ``blocks.3.hook_out``, ``hook_unembed`` ->
    ``unembed.hook_out``); on a TransformerLens 3 ``HookedTransformer``, which has only
    classic names, ``name`` itself.

    Raises:
        HookNameError: the model has no such hook.
    """
    names = [n for n in hook_aliases(model, name) if not CLASSIC_HOOK.match(n)]
    structural = {n for n, _ in model.named_modules()}  # real paths, not alias attributes
    return next((n for n in names if n in structural), names[0] if names else name)


def check_hook_runs(model: nn.Module, name: str) -> None:
    """Raise unless the hook point ``name`` carries an activation in a forward pass.

    Some TransformerLens hook points exist but stay empty until switched on
    (``hook_attn_in``, ``hook_q/k/v_input``, ``attn.hook_result``, ``hook_mlp_in``); an
    SAE there would never run. The measured shapes are refreshed once before refusing,
    in case the user switched such a hook on since they were measured.

    Raises:
        HookNameError: an unknown name (closest names suggested) or a hook that does not run.
    """
    check_hook_name(model, name)
    if name in hook_shapes(model):
        return
    model.__dict__.pop(SHAPES_ATTR, None)
    if name in hook_shapes(model):
        return
    raise HookNameError(
        f"hook {name!r} carries no activation in a forward pass of this "
        f"{architecture_name(model)} model: TransformerLens fills hook_attn_in, "
        "hook_q/k/v_input, attn.hook_result and hook_mlp_in only after "
        "model.set_use_attn_in(True), set_use_split_qkv_input(True), "
        "set_use_attn_result(True) or set_use_hook_mlp_in(True); switch it on or use a hook "
        "that runs, e.g. 'blocks.0.hook_resid_post'"
    )


def hook_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per hook name (aliases and canonical names alike): the activation's shape after
    ``[batch, pos]``, e.g. ``(256,)`` for a residual stream, ``(8, 32)`` for per-head
    ``attn.hook_z``.

    Measured once per model by a forward pass over two tokens with a recording hook on
    every hook point, then cached on the model; hook points that do not run in a plain
    forward pass (backward-only or optional hooks) are absent.
    """
    cached = model.__dict__.get(SHAPES_ATTR)
    registry = hook_dict(model)
    names = [n for n in registry if SAE_HOOK_INFIX not in n]
    if cached is not None and cached["names"].issuperset(names):
        return cached["shapes"]
    by_object: dict[int, list[str]] = {}
    points: dict[int, nn.Module] = {}
    for name in names:
        hp = registry[name]
        by_object.setdefault(id(hp), []).append(name)
        points[id(hp)] = hp
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(key: int):
        def record(act: Any, hook: Any = None) -> None:
            if isinstance(act, torch.Tensor) and act.ndim >= 2:
                for alias in by_object[key]:
                    shapes.setdefault(alias, tuple(act.shape[2:]))

        return record

    # hooks added on the hook-point objects themselves (the shapes user hooks see, after
    # TransformerLens 4's per-head reshaping) and removed again, whatever happens
    added = []
    try:
        for key in by_object:
            added.append((points[key], add_permanent_hook(points[key], recorder(key))))
        tokens = torch.zeros(1, 2, dtype=torch.long, device=model_device(model))
        with torch.no_grad():
            model(tokens)
    finally:
        for hp, handle in added:
            remove_hook(hp, handle)
    model.__dict__[SHAPES_ATTR] = {"shapes": shapes, "names": frozenset(names)}
    return shapes


def hook_width(model: nn.Module, name: str) -> int | None:
    """Last-dimension width of the activation at ``name``.

    Taken from one measured forward pass (:func:`hook_shapes`), so it is right for
    classic and canonical TransformerLens 4 names alike; hooks that do not run in a
    forward pass fall back to the model's config. Returns ``d_head`` for per-head
    hooks, and None when the width cannot be told (attention patterns and scores).
    """
    shape = hook_shapes(model).get(name)
    if shape is not None:
        return shape[-1] if shape else None
    cfg = model.cfg
    if HEAD_HOOKS.search(name):
        return getattr(cfg, "d_head", None)
    if _D_MLP_HOOKS.search(name):
        return getattr(cfg, "d_mlp", None)
    if _D_MODEL_HOOKS.search(name):
        return cfg.d_model
    return None


def is_per_head(model: nn.Module, name: str) -> bool:
    """Whether the activation at ``name`` is ``[batch, pos, n_heads, d_head]``."""
    shape = hook_shapes(model).get(name)
    if shape is not None:
        return len(shape) == 2 and shape[1] == getattr(model.cfg, "d_head", None)
    return bool(HEAD_HOOKS.search(name))


def block_index(hook_name: str) -> int | None:
    """``3`` for ``blocks.3.hook_resid_post``; None for hooks outside the blocks."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def n_layers(model: nn.Module) -> int:
    return int(model.cfg.n_layers)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def register_hook_point(model: nn.Module, name: str, hook_point: nn.Module) -> None:
    """Make ``hook_point`` reachable under ``name`` by the model's hook API
    (``run_with_cache``, ``run_with_hooks``, ``hooks``, ``add_hook``)."""
    hook_point.name = name
    if hasattr(model, "_hook_registry"):  # TL 4 bridge
        model._hook_registry[name] = hook_point
    else:  # TL 3 HookedTransformer
        model.hook_dict[name] = hook_point
        model.mod_dict[name] = hook_point


def unregister_hook_point(model: nn.Module, name: str) -> None:
    if hasattr(model, "_hook_registry"):
        model._hook_registry.pop(name, None)
    else:
        model.hook_dict.pop(name, None)
        model.mod_dict.pop(name, None)


def add_permanent_hook(hook_point: nn.Module, fn: Any) -> Any:
    """Add ``fn(act, hook) -> act | None`` to ``hook_point`` as a permanent forward hook
    (kept by ``model.reset_hooks()``); returns the handle for :func:`remove_hook`."""
    before = list(hook_point.fwd_hooks)
    hook_point.add_hook(fn, dir="fwd", is_permanent=True)
    return next(h for h in hook_point.fwd_hooks if not any(h is b for b in before))


def remove_hook(hook_point: nn.Module, handle: Any) -> None:
    """Remove one hook added by :func:`add_permanent_hook` (or ``add_hook``)."""
    handle.hook.remove()
    hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not handle]
    if hasattr(hook_point, "bwd_hooks"):
        hook_point.bwd_hooks = [h for h in hook_point.bwd_hooks if h is not handle]


def hook_snapshot(hook_point: nn.Module) -> tuple:
    """The hooks on ``hook_point`` now, for :func:`restore_hooks`."""
    return (
        list(hook_point.fwd_hooks),
        list(getattr(hook_point, "bwd_hooks", [])),
        set(hook_point._forward_hooks),
        set(hook_point._forward_pre_hooks),
        set(hook_point._backward_hooks),
    )


def restore_hooks(hook_point: nn.Module, snapshot: tuple) -> None:
    """Remove every hook added to ``hook_point`` since ``snapshot`` was taken
    (TransformerLens handles, permanent ones included, and raw torch hooks)."""
    fwd, bwd, f_keys, pre_keys, b_keys = snapshot
    for handle in list(hook_point.fwd_hooks) + list(getattr(hook_point, "bwd_hooks", [])):
        if not any(handle is h for h in fwd + bwd):
            handle.hook.remove()
    hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if any(h is k for k in fwd)]
    if hasattr(hook_point, "bwd_hooks"):
        hook_point.bwd_hooks = [h for h in hook_point.bwd_hooks if any(h is k for k in bwd)]
    for hooks_dict, keys in (
        (hook_point._forward_hooks, f_keys),
        (hook_point._forward_pre_hooks, pre_keys),
        (hook_point._backward_hooks, b_keys),
    ):
        for key in [k for k in hooks_dict if k not in keys]:
            del hooks_dict[key]


def hook_point_class(model: nn.Module) -> type:
    """The class of the model's hook points (TransformerLens' ``HookPoint``)."""
    return type(next(iter(model.hook_dict.values())))


def hook_state(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per hook point: (number of forward hooks, number of backward hooks).

    Used by tests and by :func:`saehooks.attach` to prove hooks never leak.
    """
    return {name: (len(hp.fwd_hooks), len(hp.bwd_hooks)) for name, hp in model.hook_dict.items()}
