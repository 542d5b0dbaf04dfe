"""Resuming a forward pass at a block: where a pass that changes the activation at a
hook may start instead of at the embedding (:func:`resume_point`), and running the
blocks from there (:func:`run_from_layer`). :mod:`saehooks.evaluation` uses it so that
the spliced and ablated passes recompute only the blocks after the SAE's hook.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch
from torch import nn

from saehooks.errors import InputError
from saehooks.tl import classic_hook_name, hook_dict, is_per_head, n_layers

_RESUME_INSIDE_BLOCK = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_attn_out|hook_mlp_out"
    r"|mlp\.hook_(pre|post))$"
)
_RESUME_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


class ResumePoint(NamedTuple):
    """Where a forward pass that changes the activation at a hook may start instead of
    at the embedding (see :func:`resume_point`)."""

    layer: int
    """The block the resumed pass starts at."""
    carries_activation: bool
    """True: the hook's activation *is* the residual entering block ``layer`` (the hook
    is ``blocks.{layer-1}.hook_resid_post``), so the pass resumes from the changed
    activation itself. False: the hook sits inside block ``layer``, so the pass resumes
    from the clean residual entering that block, with the hook in place."""


def _blocks_are_plain(model: nn.Module) -> bool:
    """Whether every block of a TransformerLens 4 bridge is a plain ``BlockBridge`` (or
    ``ParallelBlockBridge``: GPT-NeoX, GPT-J) on the standard ``blocks`` stack of a
    decoder-only text model (no AltUp, Bloom, SSM, MLA, scaled-residual, T5 or
    encoder-decoder blocks, whose loops may carry state between blocks)."""
    try:
        from transformer_lens.model_bridge.generalized_components.block import (
            BlockBridge,
            ParallelBlockBridge,
        )
    except ImportError:
        return False
    cfg = model.cfg
    if any(
        getattr(cfg, flag, False)
        for flag in ("is_multimodal", "is_visual_model", "is_audio_model", "is_encoder_decoder")
    ):
        return False
    if any(hasattr(model, alt) for alt in ("encoder_blocks", "decoder_blocks")):
        return False
    blocks = getattr(model, "blocks", None)
    if (
        blocks is None
        or len(blocks) != n_layers(model)
        or not hasattr(model, "_setup_start_at_layer")
    ):
        return False
    hf = getattr(model, "original_model", None)
    if getattr(getattr(hf, "config", None), "is_encoder_decoder", False):
        return False
    return all(type(b) in (BlockBridge, ParallelBlockBridge) for b in blocks)


def can_resume(model: nn.Module) -> bool:
    """Whether :func:`run_from_layer` can start a forward pass of ``model`` at a block.

    TransformerLens 3 ``HookedTransformer``: unless its positional embedding is
    ``shortformer`` (added inside every block) or its tokenizer pads on the left (the
    attention mask is then computed from the tokens). TransformerLens 4 bridge: a
    decoder-only text model whose blocks are all plain ``BlockBridge`` (or
    ``ParallelBlockBridge``) modules.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "cfg"):
        return False
    if hasattr(model, "_hook_registry"):  # TL 4 bridge
        return _blocks_are_plain(model)
    if getattr(model.cfg, "positional_embedding_type", "standard") == "shortformer":
        return False
    tokenizer = getattr(model, "tokenizer", None)
    return getattr(tokenizer, "padding_side", "right") != "left"


def resume_point(model: nn.Module, hook_name: str) -> ResumePoint | None:
    """Where a forward pass that changes only the activation at ``hook_name`` may start.

    Everything below that point equals the clean pass, so a caller holding the clean
    pass's residual can run only the blocks above (:func:`run_from_layer`).

    * ``blocks.L.hook_resid_post`` (L not the last block): ``ResumePoint(L + 1, True)``,
      resume from the changed activation.
    * ``blocks.L.hook_resid_pre``, ``hook_resid_mid``, ``hook_attn_out``,
      ``hook_mlp_out``, ``mlp.hook_pre``, ``mlp.hook_post`` (and
      ``blocks.{last}.hook_resid_post``): ``ResumePoint(L, False)``, rerun block L from
      its clean input with the hook in place.
    * anything else (embeddings, ``ln_final``, attention internals, per-head hooks), or a
      model :func:`can_resume` refuses: None (run the whole model).

    Names are read through :func:`classic_hook_name`, so TransformerLens 4 canonical
    names (``blocks.2.hook_out``) resume as their classic aliases do.

    Raises:
        HookNameError: the model has no such hook.
    """
    classic = classic_hook_name(model, hook_name)
    if not can_resume(model) or is_per_head(model, hook_name):
        return None
    match = _RESUME_RESID_POST.match(classic)
    if match:
        layer = int(match.group(1))
        if layer + 1 < n_layers(model):
            return ResumePoint(layer + 1, True)
        return ResumePoint(layer, False)
    match = _RESUME_INSIDE_BLOCK.match(classic)
    if match:
        return ResumePoint(int(match.group(1)), False)
    return None


def block_input_hook(model: nn.Module, layer: int) -> str:
    """The hook carrying the residual stream entering block ``layer``
    (``blocks.{layer}.hook_resid_pre``; ``blocks.{layer}.hook_in`` on a bridge booted
    without compatibility mode)."""
    names = hook_dict(model)
    classic = f"blocks.{layer}.hook_resid_pre"
    return classic if classic in names else f"blocks.{layer}.hook_in"


def _skip_block(*args: Any, **kwargs: Any) -> Any:
    """A block that does nothing: its input hidden states, untouched."""
    return args[0] if args else kwargs["hidden_states"]


def run_from_layer(
    model: nn.Module,
    layer: int,
    residual: torch.Tensor,
    fwd_hooks: list[tuple[str, Any]] | tuple = (),
) -> torch.Tensor:
    """Logits of a forward pass started at block ``layer`` from ``residual``.

    TransformerLens 3: ``run_with_hooks(residual, start_at_layer=layer)``. TransformerLens
    4 bridge: the same call, with blocks ``0 .. layer-1`` made pass-throughs for its
    duration (the bridge otherwise still runs them on the embedding and throws their
    output away when block ``layer`` swaps ``residual`` in); the Hugging Face model
    still computes its embedding, position ids and attention mask, and applies its
    final norm, head and any logit soft-capping itself. Hooks on the skipped blocks do
    not fire. Use only where :func:`can_resume` holds.

    Args:
        model: a hooked TransformerLens model.
        layer: the first block to run, ``0 <= layer < n_layers``.
        residual: ``[batch, pos, d_model]`` the residual stream entering block ``layer``
            (the stream's dtype, the model's device).
        fwd_hooks: ``[(hook_name, fn)]`` as for ``run_with_hooks``; hooks in blocks
            below ``layer`` or outside the blocks before them never run.

    Returns:
        ``[batch, pos, d_vocab]`` logits, as the full forward pass would give them.

    Raises:
        InputError: ``layer`` outside ``0 .. n_layers - 1``.
    """
    n = n_layers(model)
    if not 0 <= layer < n:
        raise InputError(f"layer {layer} is not a block of this {n}-layer model; pass 0..{n - 1}")
    hooks_ = list(fwd_hooks)
    if not hasattr(model, "_hook_registry"):  # TL 3: the blocks below never run
        return model.run_with_hooks(residual, start_at_layer=layer, fwd_hooks=hooks_)
    skipped = list(model.blocks)[:layer]
    # set on the bridge module itself: the bridge's __setattr__ would hand ``forward``
    # to the wrapped Hugging Face block
    for block in skipped:
        object.__setattr__(block, "forward", _skip_block)
    try:
        return model.run_with_hooks(residual, start_at_layer=layer, fwd_hooks=hooks_)
    finally:
        for block in skipped:
            if "forward" in block.__dict__:
                object.__delattr__(block, "forward")


def residual_entering(model: nn.Module, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` (the embedding for 0): ``model`` run
    on ``tokens`` ``[batch, pos]`` and stopped there (``stop_at_layer``), with whatever
    hooks are in force; ``[batch, pos, d_model]`` in the stream's dtype, on the model's
    device. The input :func:`run_from_layer` resumes from.

    Raises:
        InputError: ``layer`` outside ``0 .. n_layers - 1``.
    """
    n = n_layers(model)
    if not 0 <= layer < n:
        raise InputError(f"layer {layer} is not a block of this {n}-layer model; pass 0..{n - 1}")
    return model(tokens, stop_at_layer=layer)
