"""Attach SAEs to a live TransformerLens model.

Inside ``with attach(model, sae):`` the activation at ``sae.cfg.hook_name`` is replaced
by the SAE's output, and the SAE's own hook points are part of the model's hook API
under ``"<hook_name>.hook_sae_acts_post"`` etc. (cacheable, hookable). On exit --
normal, by exception, or nested in other hook contexts -- the model holds exactly
the hooks it held before. The same semantics as SAELens' ``HookedSAETransformer``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import models
from saehooks.sae import SAE

HookFn = Callable[..., Any]


class ProcessingMismatchWarning(UserWarning):
    """The SAE was trained on a model with other weight processing than this one."""


def _flatten(saes: Iterable[SAE | Sequence[SAE]]) -> list[SAE]:
    out: list[SAE] = []
    for item in saes:
        if isinstance(item, SAE):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            raise TypeError(f"expected SAE objects, got {type(item).__name__}")
    return out


def check_compatible(model: nn.Module, sae: SAE) -> None:
    """Check, before any forward pass, that ``sae`` can attach to ``model``.

    Raises:
        HookNameError: ``sae.cfg.hook_name`` is not a hook point of the model
            (the message lists the closest valid names).
        ValueError: the SAE's ``d_in`` differs from the hook's width, or the SAE
            is on another device than the model.

    Warns:
        ProcessingMismatchWarning: the SAE's metadata records a different weight
            processing (compatibility mode, folded LayerNorm, centring) than the model's.
    """
    name = sae.cfg.hook_name
    if not name:
        raise ValueError("the SAE has no hook_name; set sae.cfg.hook_name, e.g. "
                         "'blocks.2.hook_resid_post'")
    models.check_hook_name(model, name)
    width = models.hook_width(model, name)
    if width is not None and width != sae.cfg.d_in and models.HEAD_HOOKS.search(name):
        heads = f"[batch, pos, {model.cfg.n_heads}, {width}]"
        flat = sae.cfg.d_in == model.cfg.n_heads * width
        raise ValueError(
            f"{name!r} holds per-head activations {heads}; "
            + ("SAEs over the flattened heads (SAELens' hook_z reshaping) are not supported: "
               if flat else f"an SAE on it needs d_in={width}, this one has "
               f"d_in={sae.cfg.d_in}: ")
            + "attach to a [batch, pos, d_model] hook such as "
            f"'blocks.{models.block_index(name)}.hook_attn_out' instead")
    if width is not None and width != sae.cfg.d_in:
        raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the width {width} of "
                         f"{name!r} on this model; load the SAE trained for this model and hook")
    device = models.model_device(model)
    if sae.device != device:
        raise ValueError(f"the SAE is on {sae.device} but the model is on {device}; "
                         f"move it first: sae.to({str(device)!r})")
    recorded = sae.cfg.metadata.get("model_processing") or {}
    current = models.model_processing(model)
    diffs = [f"{key}: SAE {recorded[key]} vs model {current[key]}" for key in recorded
             if key != "backend" and recorded.get(key) is not None
             and current.get(key) is not None and recorded[key] != current[key]]
    if diffs:
        warnings.warn(
            f"SAE at {name!r} was trained on a model with other weight processing "
            f"({'; '.join(diffs)}); its reconstructions will be off. Load the model with "
            "matching saehooks.load_model(...) options.", ProcessingMismatchWarning,
            stacklevel=3)


def _adopt_hook_points(model: nn.Module, sae: SAE) -> None:
    """Give the SAE hook points of the model's own class (TransformerLens HookPoint)."""
    cls = models.hook_point_class(model)
    for name, hp in sae.hook_points().items():
        if not isinstance(hp, cls):
            setattr(sae, name, cls())


def splice_hook(sae: SAE) -> HookFn:
    """The forward hook that replaces an activation by ``sae(activation)``.

    The SAE computes in its own dtype; the result is cast back to the stream's dtype.
    """

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        return sae(act).to(act.dtype)

    return hook


@contextmanager
def attach(model: nn.Module, *saes: SAE | Sequence[SAE],
           use_error_term: bool = False) -> Iterator[nn.Module]:
    """Splice SAEs into ``model`` for the duration of a ``with`` block.

    Args:
        model: a TransformerLens ``TransformerBridge`` (compatibility mode) or
            ``HookedTransformer``.
        *saes: SAEs (or lists of them) at distinct hook points.
        use_error_term: add the SAE's reconstruction error back, so the model's
            output is unchanged unless a hook on the SAE intervenes (SAELens semantics).

    Yields:
        The model. Its SAE hook points are cached by ``run_with_cache`` as
        ``"<hook_name>.hook_sae_acts_post"`` ``[batch, pos, d_sae]`` etc.

    Raises:
        HookNameError, ValueError: see :func:`check_compatible`; also two SAEs at
            one hook point, or an SAE already attached.
    """
    sae_list = _flatten(saes)
    names = [s.cfg.hook_name for s in sae_list]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two SAEs at the same hook point {duplicates}; attach one per hook")
    for sae in sae_list:
        check_compatible(model, sae)
    registry = models.hook_dict(model)
    for sae in sae_list:
        taken = [f"{sae.cfg.hook_name}.{h}" for h in sae.hook_points()
                 if f"{sae.cfg.hook_name}.{h}" in registry]
        if taken:
            raise ValueError(f"an SAE is already attached at {sae.cfg.hook_name!r}; exit its "
                             "attach() block first")
    with ExitStack() as stack:
        for sae in sae_list:
            stack.enter_context(_spliced(model, sae, use_error_term))
        yield model


@contextmanager
def _spliced(model: nn.Module, sae: SAE, use_error_term: bool) -> Iterator[None]:
    _adopt_hook_points(model, sae)
    prefix = sae.cfg.hook_name
    registered: list[str] = []
    previous_error_term = sae.use_error_term
    try:
        sae.use_error_term = use_error_term
        for name, hp in sae.hook_points().items():
            models.register_hook_point(model, f"{prefix}.{name}", hp)
            registered.append(f"{prefix}.{name}")
        with model.hooks(fwd_hooks=[(prefix, splice_hook(sae))]):
            yield
    finally:
        sae.use_error_term = previous_error_term
        for name in registered:
            models.unregister_hook_point(model, name)


def run_with_saes(model: nn.Module, tokens: Tensor | str, saes: SAE | Sequence[SAE],
                  use_error_term: bool = False, **kwargs: Any) -> Any:
    """``model(tokens, **kwargs)`` with ``saes`` attached (see :func:`attach`).

    Returns whatever the model returns (logits ``[batch, pos, d_vocab]`` by default).
    """
    with attach(model, saes, use_error_term=use_error_term):
        return model(tokens, **kwargs)


def run_with_cache_with_saes(model: nn.Module, tokens: Tensor | str,
                             saes: SAE | Sequence[SAE], use_error_term: bool = False,
                             **kwargs: Any) -> tuple[Any, Any]:
    """``model.run_with_cache(tokens, **kwargs)`` with ``saes`` attached.

    Returns:
        ``(output, cache)``; the cache includes the SAE hook points, e.g.
        ``cache["blocks.2.hook_resid_post.hook_sae_acts_post"]`` ``[batch, pos, d_sae]``.
    """
    with attach(model, saes, use_error_term=use_error_term):
        return model.run_with_cache(tokens, **kwargs)


def run_with_hook(model: nn.Module, tokens: Tensor, hook_name: str, fn: HookFn,
                  **kwargs: Any) -> Any:
    """Run ``model`` on ``tokens`` with one temporary forward hook ``fn(act, hook)``."""
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, fn)], **kwargs)


def capture(model: nn.Module, tokens: Tensor, hook_name: str,
            stop: bool = False) -> tuple[Tensor | None, Tensor]:
    """Logits and the activation at ``hook_name`` for ``tokens``.

    Args:
        stop: stop the forward pass right after the hook's block (no logits).

    Returns:
        ``(logits [batch, pos, d_vocab] or None, activation [batch, pos, ...])``.
    """
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any = None) -> None:
        store["act"] = act.detach()

    kwargs: dict[str, Any] = {}
    layer = models.block_index(hook_name) if stop else None
    if layer is not None and layer + 1 < models.n_layers(model):
        kwargs["stop_at_layer"] = layer + 1
        logits = None
        run_with_hook(model, tokens, hook_name, save, **kwargs)
    else:
        logits = run_with_hook(model, tokens, hook_name, save)
        logits = None if stop else logits
    return logits, store["act"]


def replace_where(mask: Tensor, new: Tensor) -> HookFn:
    """Hook that replaces the activation by ``new`` at positions where ``mask`` is True.

    Args:
        mask: ``[batch, pos]`` booleans.
        new: ``[batch, pos, d]`` or broadcastable (e.g. ``[d]`` for a mean, 0 for zeros).
    """

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        value = torch.as_tensor(new, dtype=act.dtype, device=act.device).expand_as(act)
        return torch.where(mask[..., None].to(act.device), value, act)

    return hook
