"""Attach SAEs to a live TransformerLens model.

Inside ``with attach(model, sae):`` the activation at ``sae.cfg.hook_name`` is replaced
by the SAE's output, and the SAE's own hook points are part of the model's hook API
under ``"<hook_name>.hook_sae_acts_post"`` etc. (cacheable, hookable). On exit --
normal, by exception, or nested in other hook contexts -- the model holds exactly
the hooks it held before. The same semantics as SAELens' ``HookedSAETransformer``.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from saehooks import checks, tl
from saehooks.errors import ConcurrentUseError, DeviceError, InputError, InputTypeError
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
            raise InputTypeError(
                f"expected SAE objects (or lists of them), got "
                f"{type(item).__name__}; load one with saehooks.load_sae(...)"
            )
    return out


def check_compatible(model: nn.Module, sae: SAE) -> None:
    """Check, before any forward pass, that ``sae`` can attach to ``model``.

    Raises:
        HookNameError: ``sae.cfg.hook_name`` is not a hook point of the model
            (the message lists the closest valid names).
        InputError: the SAE has no hook name, or its ``d_in`` differs from the hook's
            width (measured on the model, classic and canonical names alike).
        DeviceError: the SAE is on another device than the model.

    Warns:
        ProcessingMismatchWarning: the SAE's metadata records a different weight
            processing (compatibility mode, folded LayerNorm, centring) than the model's.
    """
    if not isinstance(sae, SAE):
        raise InputTypeError(
            f"expected an SAE, got {type(sae).__name__}; load one with saehooks.load_sae(...)"
        )
    name = sae.cfg.hook_name
    if not name:
        raise InputError(
            "the SAE has no hook_name; set sae.cfg.hook_name, e.g. 'blocks.2.hook_resid_post'"
        )
    tl.check_hook_runs(model, name)
    width = tl.hook_width(model, name)
    if width is not None and width != sae.cfg.d_in and tl.is_per_head(model, name):
        n_heads = tl.hook_shapes(model)[name][0]
        heads = f"[batch, pos, {n_heads}, {width}]"
        flat = sae.cfg.d_in == n_heads * width
        layer = tl.block_index(name)
        raise InputError(
            f"{name!r} holds per-head activations {heads}; "
            + (
                "SAEs over the flattened heads (SAELens' hook_z reshaping) are not supported: "
                if flat
                else f"an SAE on it needs d_in={width}, this one has d_in={sae.cfg.d_in}: "
            )
            + "attach to a [batch, pos, d_model] hook such as "
            f"'blocks.{layer}.hook_attn_out' instead"
        )
    if width is not None and width != sae.cfg.d_in:
        raise InputError(
            f"SAE d_in={sae.cfg.d_in} does not match the width {width} of "
            f"{name!r} on this model; load the SAE trained for this model and hook"
        )
    device = tl.model_device(model)
    if sae.device != device:
        raise DeviceError(
            f"the SAE is on {sae.device} but the model is on {device}; "
            f"move it first: sae.to({str(device)!r})"
        )
    recorded = sae.cfg.metadata.get("model_processing") or {}
    current = tl.model_processing(model)
    diffs = [
        f"{key}: SAE {recorded[key]} vs model {current[key]}"
        for key in recorded
        if key != "backend"
        and recorded.get(key) is not None
        and current.get(key) is not None
        and recorded[key] != current[key]
    ]
    if diffs:
        warnings.warn(
            f"SAE at {name!r} was trained on a model with other weight processing "
            f"({'; '.join(diffs)}); its reconstructions will be off. Load the model with "
            "matching saehooks.load_model(...) options.",
            ProcessingMismatchWarning,
            stacklevel=3,
        )


def _adopt_hook_points(model: nn.Module, sae: SAE) -> None:
    """Give the SAE hook points of the model's own class (TransformerLens HookPoint)."""
    cls = tl.hook_point_class(model)
    for name, hp in sae.hook_points().items():
        if not isinstance(hp, cls):
            setattr(sae, name, cls())


# ---- one model, one thread ------------------------------------------------------------------
_OWNER_ATTR = "_saehooks_owner"
_LOCK = threading.Lock()


@contextmanager
def exclusive_use(model: nn.Module) -> Iterator[nn.Module]:
    """Claim ``model`` for saehooks work by this thread for the ``with`` block.

    TransformerLens hooks belong to the model, not to a thread: while one thread has
    SAEs attached (or runs :func:`saehooks.evaluate`), a forward pass from another
    thread would run through them. So every saehooks context claims the model; the
    claim is re-entrant within one thread, and while it is held a forward pass or a
    saehooks context from another thread raises :class:`ConcurrentUseError`. One
    model serves one thread at a time: give each thread its own model.

    Raises:
        ConcurrentUseError: another thread holds the model.
    """
    me = threading.get_ident()
    with _LOCK:
        state = model.__dict__.get(_OWNER_ATTR)
        if state is not None and state["thread"] != me:
            raise ConcurrentUseError(_concurrent_message(state))
        if state is None:
            state = {"thread": me, "name": threading.current_thread().name, "depth": 0}

            def guard(module: nn.Module, args: Any, state: dict = state) -> None:
                if threading.get_ident() != state["thread"]:
                    raise ConcurrentUseError(_concurrent_message(state))

            state["handle"] = model.register_forward_pre_hook(guard)
            model.__dict__[_OWNER_ATTR] = state
        state["depth"] += 1
    try:
        yield model
    finally:
        with _LOCK:
            state["depth"] -= 1
            if state["depth"] == 0:
                state["handle"].remove()
                model.__dict__.pop(_OWNER_ATTR, None)


def uses_model(fn: Callable) -> Callable:
    """Decorator: run ``fn(model, ...)`` under :func:`exclusive_use` of its model."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with exclusive_use(model):
            return fn(model, *args, **kwargs)

    return wrapper


def _concurrent_message(state: dict) -> str:
    return (
        f"this model is in use by saehooks in thread {state['name']!r} (SAEs attached or "
        "an evaluation running); TransformerLens hooks are shared by every thread, so one "
        "model serves one thread at a time: load a model per thread "
        "(saehooks.load_model()), or run the work in that thread"
    )


# ---- attachments ----------------------------------------------------------------------------
_ATTACHMENTS_ATTR = "_saehooks_attachments"


@dataclass
class Attachment:
    """One SAE spliced into one hook point of one model (see :func:`attach`)."""

    sae: SAE
    """The spliced SAE."""
    hook_name: str
    """The name it was attached under (``sae.cfg.hook_name``)."""
    hook_point: nn.Module
    """The model's hook-point object (aliases of one activation share it)."""
    use_error_term: bool
    """The error-term setting given to :func:`attach`."""
    previous_error_term: bool
    """``sae.use_error_term`` before the attachment, restored when it ends."""
    overrides: list = field(default_factory=list)
    """``(token, bool)`` error-term overrides of enclosing blocks, newest last."""
    handle: Any = None

    def error_term(self) -> bool:
        """The error-term setting in force: the newest override, else the attach's."""
        return self.overrides[-1][1] if self.overrides else self.use_error_term

    def sync(self) -> None:
        self.sae.use_error_term = self.error_term()


def attachments(model: nn.Module) -> list[Attachment]:
    """The SAEs attached to ``model`` now, outermost first."""
    return list(model.__dict__.get(_ATTACHMENTS_ATTR, {}).values())


def attached_saes(model: nn.Module) -> list[SAE]:
    """The SAEs spliced into ``model`` now (by :func:`attach` blocks), outermost first."""
    return [a.sae for a in attachments(model)]


def attachment(model: nn.Module, sae: SAE) -> Attachment | None:
    """The attachment of ``sae`` to ``model``, or None when it is not attached."""
    return next((a for a in attachments(model) if a.sae is sae), None)


@contextmanager
def error_term(model: nn.Module, sae: SAE, use_error_term: bool) -> Iterator[nn.Module]:
    """Run the attached ``sae`` with (or without) its error term for the block.

    The override is undone exactly on exit, whatever the order in which nested
    blocks exit: each block removes its own override, and when the SAE's attachment
    ends first, the SAE gets back the setting it had before it was attached.

    Raises:
        InputError: ``sae`` is not attached to ``model``.
    """
    found = attachment(model, sae)
    if found is None:
        raise InputError(
            f"the SAE at {sae.cfg.hook_name!r} is not attached to this model; "
            "attach it first: with saehooks.attach(model, sae): ..."
        )
    token = object()
    found.overrides.append((token, bool(use_error_term)))
    found.sync()
    try:
        yield model
    finally:
        found.overrides = [o for o in found.overrides if o[0] is not token]
        if attachment(model, sae) is found:
            found.sync()


def splice_hook(sae: SAE) -> HookFn:
    """The forward hook that replaces an activation by ``sae(activation)``.

    The SAE computes in its own dtype; the result is cast back to the stream's dtype.
    """

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        return sae(act).to(act.dtype)

    return hook


@contextmanager
def attach(
    model: nn.Module, *saes: SAE | Sequence[SAE], use_error_term: bool = False
) -> Iterator[nn.Module]:
    """Splice SAEs into ``model`` for the duration of a ``with`` block.

    At its hook point each SAE replaces the activation ``x`` by ``sae(x)``, and the
    SAE's own hook points join the model's hook API under ``"<hook_name>.<hook>"``
    (cached by ``run_with_cache``, hookable by ``run_with_hooks``/``hooks``). What a
    hook that edits the SAE's tensors does to the model's activation ``out``:

    * ``hook_sae_input`` (``x``, ``[batch, pos, d_in]``): the edited input goes
      through the SAE: ``out = decode(encode(x'))`` (+ error term).
    * ``hook_sae_acts_pre`` (pre-activations ``[batch, pos, d_sae]``): the edit goes
      through the activation function and the decoder.
    * ``hook_sae_acts_post`` (latents ``[batch, pos, d_sae]``): the edit is decoded;
      zeroing latent ``j`` moves ``out`` by ``-a_j · W_dec[j]``.
    * ``hook_sae_recons`` (``[batch, pos, d_in]``): the edit moves ``out`` by itself.
    * ``hook_sae_error`` (with the error term only): replaces the error term.
    * ``hook_sae_output``: replaces ``out``.

    With ``use_error_term=True``, ``out = recons + stopgrad(x - decode(encode(x)))``
    where the error is computed from the raw input with no hooks, so with no edit
    ``out == x`` (to float rounding) and every edit above moves ``out`` by exactly
    what it changes in ``recons``.

    Hooks a user adds to the SAE's hook points inside the block are removed on exit,
    and ``model.reset_hooks()`` inside the block keeps the splice (it is a permanent
    hook, as SAELens keeps attached SAEs).

    Args:
        model: a TransformerLens ``TransformerBridge`` or ``HookedTransformer``.
        *saes: SAEs (or lists of them) at distinct hook points.
        use_error_term: add the SAE's reconstruction error back, so the model's
            output is unchanged unless a hook on the SAE intervenes (SAELens semantics).

    Yields:
        The model.

    Raises:
        HookNameError, InputError, DeviceError: see :func:`check_compatible`; also
            two SAEs at one hook point (aliases such as ``blocks.2.hook_resid_post``
            and ``blocks.2.hook_out`` name one point), or an SAE already attached.
        ConcurrentUseError: another thread is using the model with saehooks.
    """
    use_error_term = checks.check_bool(use_error_term, "use_error_term")
    sae_list = _flatten(saes)
    if not sae_list:
        raise InputError("attach() needs at least one SAE")
    with exclusive_use(model):
        for sae in sae_list:
            check_compatible(model, sae)
        points = [tl.hook_point(model, sae.cfg.hook_name) for sae in sae_list]
        taken = {id(a.hook_point): a for a in attachments(model)}
        seen: dict[int, SAE] = {}
        for sae, hp in zip(sae_list, points):
            if any(sae is a.sae for a in taken.values()) or any(sae is s for s in seen.values()):
                raise InputError(
                    f"this SAE ({sae.cfg.hook_name!r}) is already attached; attach each SAE once"
                )
            other = seen.get(id(hp)) or (taken[id(hp)].sae if id(hp) in taken else None)
            if other is not None:
                raise InputError(
                    f"two SAEs at the same hook point: {other.cfg.hook_name!r} and "
                    f"{sae.cfg.hook_name!r} name the same activation; attach one SAE per "
                    "hook point"
                    + (" (exit the other's attach() block first)" if id(hp) in taken else "")
                )
            seen[id(hp)] = sae
        with ExitStack() as stack:
            for sae, hp in zip(sae_list, points):
                stack.enter_context(_spliced(model, sae, hp, use_error_term))
            yield model


@contextmanager
def _spliced(model: nn.Module, sae: SAE, point: nn.Module, use_error_term: bool) -> Iterator[None]:
    _adopt_hook_points(model, sae)
    prefix = sae.cfg.hook_name
    snapshots = {name: tl.hook_snapshot(hp) for name, hp in sae.hook_points().items()}
    registry = model.__dict__.setdefault(_ATTACHMENTS_ATTR, {})
    att = Attachment(sae, prefix, point, bool(use_error_term), sae.use_error_term)
    registered: list[str] = []
    try:
        att.sync()
        # under the SAE's own hook name and, where that is a TransformerLens 4 canonical
        # name, also under the classic one SAELens users cache (registered last: TL names
        # cache entries after it)
        classic = tl.classic_hook_name(model, prefix)
        for base in dict.fromkeys([prefix, classic]):
            for name, hp in sae.hook_points().items():
                tl.register_hook_point(model, f"{base}.{name}", hp)
                registered.append(f"{base}.{name}")
        registry[id(point)] = att
        att.handle = tl.add_permanent_hook(point, splice_hook(sae))
        yield
    finally:
        if att.handle is not None:
            tl.remove_hook(point, att.handle)
        registry.pop(id(point), None)
        for name in registered:
            tl.unregister_hook_point(model, name)
        for name, hp in sae.hook_points().items():
            tl.restore_hooks(hp, snapshots[name])
        sae.use_error_term = att.previous_error_term


_KEPT_ATTR = "_saehooks_kept"


def add_sae(model: nn.Module, sae: SAE, use_error_term: bool = False) -> None:
    """Splice ``sae`` into ``model`` until :func:`reset_saes` (SAELens' ``add_sae`` habit).

    The same splice as :func:`attach`, kept past the current block: use it in
    notebooks, and the ``with`` form in scripts. It claims the model for this thread
    (see :func:`exclusive_use`) until it is reset. ``model.reset_hooks()`` keeps it.

    Raises:
        HookNameError, InputError, DeviceError, ConcurrentUseError: as :func:`attach`.
    """
    context = attach(model, sae, use_error_term=use_error_term)
    context.__enter__()
    model.__dict__.setdefault(_KEPT_ATTR, []).append((sae, context))


def reset_saes(model: nn.Module, saes: SAE | Sequence[SAE] | None = None) -> None:
    """Remove SAEs added with :func:`add_sae` (all of them, or the ones given); the
    model then holds exactly the hooks it held before they were added.

    Raises:
        InputError: an SAE given that was not added with :func:`add_sae`.
    """
    kept = model.__dict__.get(_KEPT_ATTR, [])
    chosen = kept if saes is None else []
    if saes is not None:
        for sae in _flatten([saes]):
            match = [item for item in kept if item[0] is sae]
            if not match:
                raise InputError(
                    f"the SAE at {sae.cfg.hook_name!r} was not added with saehooks.add_sae; "
                    "an attach() block removes its own SAEs on exit"
                )
            chosen += match
    for item in reversed(list(chosen)):
        kept.remove(item)
        item[1].__exit__(None, None, None)


def run_with_saes(
    model: nn.Module,
    tokens: Tensor | str,
    saes: SAE | Sequence[SAE],
    use_error_term: bool = False,
    **kwargs: Any,
) -> Any:
    """``model(tokens, **kwargs)`` with ``saes`` attached (see :func:`attach`).

    Returns whatever the model returns (logits ``[batch, pos, d_vocab]`` by default).
    """
    with attach(model, saes, use_error_term=use_error_term):
        return model(tokens, **kwargs)


def run_with_cache_with_saes(
    model: nn.Module,
    tokens: Tensor | str,
    saes: SAE | Sequence[SAE],
    use_error_term: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``model.run_with_cache(tokens, **kwargs)`` with ``saes`` attached.

    Returns:
        ``(output, cache)``; the cache includes the SAE hook points, e.g.
        ``cache["blocks.2.hook_resid_post.hook_sae_acts_post"]`` ``[batch, pos, d_sae]``.
    """
    with attach(model, saes, use_error_term=use_error_term):
        return model.run_with_cache(tokens, **kwargs)


# ---- hooks on SAE latents -------------------------------------------------------------------
@contextmanager
def latent_hooks(
    model: nn.Module, items: Sequence[tuple[SAE, HookFn | None]], use_error_term: bool | None = None
) -> Iterator[nn.Module]:
    """Run hooks on SAE latents (``hook_sae_acts_post``), attaching the SAEs if needed.

    SAEs not yet attached are attached for the block (with the error term unless
    ``use_error_term=False``); SAEs already attached by an enclosing :func:`attach`
    keep that attachment, and their error-term setting unless ``use_error_term`` is
    given (then it is set for the block and restored after). The model is claimed for
    this thread (:func:`exclusive_use`).

    Args:
        model: a hooked model.
        items: ``(sae, fn)`` pairs; ``fn(acts [batch, pos, d_sae], hook) -> acts``
            (``[batch, pos, n_heads, d_sae]`` on per-head hooks), or None to attach
            the SAE without a hook (e.g. to read its latents with
            :func:`saehooks.data.capture`).
        use_error_term: None (default: True, or the enclosing attach's setting), or a bool.

    Yields:
        The model.

    Raises:
        InputTypeError: ``use_error_term`` is neither None nor a bool.
        HookNameError, InputError, DeviceError: an SAE cannot attach (see :func:`attach`).
    """
    if use_error_term is not None:
        checks.check_bool(use_error_term, "use_error_term")
    saes: list[SAE] = []
    for sae, _ in items:
        if not any(s is sae for s in saes):
            saes.append(sae)
    with ExitStack() as stack:
        stack.enter_context(exclusive_use(model))
        fresh = [s for s in saes if attachment(model, s) is None]
        for sae in saes:
            if sae in fresh or use_error_term is None:
                continue
            stack.enter_context(error_term(model, sae, use_error_term))
        if fresh:
            stack.enter_context(
                attach(
                    model, *fresh, use_error_term=True if use_error_term is None else use_error_term
                )
            )
        fwd = [
            (f"{sae.cfg.hook_name}.hook_sae_acts_post", fn) for sae, fn in items if fn is not None
        ]
        stack.enter_context(model.hooks(fwd_hooks=fwd))
        yield model
