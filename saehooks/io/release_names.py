"""What the names of a SAELens release tell before any file is read.

Source: SAELens (jbloomAus/SAELens) 6.x, ``sae_lens/loading/pretrained_sae_loaders.py``:
several conversions take the hook point, the width or the architecture from the
repository and folder names (Gemma Scope's ``layer_12/width_16k/...``, Qwen Scope's
``...-W32K-L0_50``, Llama Scope's ``L3R-8x``). :func:`describe` reads them for the
listing (:func:`saehooks.io.registry.list_releases`) and for the loaders
(:mod:`saehooks.io.releases`), and says which kinds saehooks does not run.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from saehooks.io.registry import ReleaseSAE


class ReleaseInfo(NamedTuple):
    """What the registry's names tell about an SAE before any file is read."""

    hook_name: str | None
    """TransformerLens hook the SAE reads, when the names say it."""
    d_sae: int | None
    """Number of latents, when the names say it (e.g. Gemma Scope's ``width_16k``)."""
    architecture: str | None
    """This library's architecture name, when the conversion fixes it."""
    loadable: bool
    """False for kinds saehooks does not run (see ``reason``)."""
    reason: str = ""
    """Why not loadable."""


# ---- what the names say --------------------------------------------------------------------
_HOOK_RE = re.compile(
    r"blocks\.\d+\.(?:attn\.|mlp\.)?hook_(?:resid_pre|resid_mid|resid_post|"
    r"mlp_out|attn_out|mlp_in|z|q|k|v|pre|post|result)(?![a-z])"
)
_GEMMA_WIDTHS = {
    "width_4k": 4096,
    "width_16k": 16384,
    "width_32k": 32768,
    "width_65k": 65536,
    "width_131k": 131072,
    "width_262k": 262144,
    "width_524k": 524288,
    "width_1m": 1048576,
}
"""Gemma Scope folder names -> d_sae (SAELens' table; ``131k`` is 2**17)."""
GEMMA_2_MODELS = (
    ("2b-it", "gemma-2-2b-it"),
    ("9b-it", "gemma-2-9b-it"),
    ("27b-it", "gemma-2-27b-it"),
    ("2b", "gemma-2-2b"),
    ("9b", "gemma-2-9b"),
    ("27b", "gemma-2-27b"),
)
HOOK_Z = (
    "an SAE over the concatenated attention heads of hook_z (SAELens' "
    "reshape_activations='hook_z'), which saehooks cannot attach"
)
TRANSCODER = (
    "a transcoder (it reads one hook and writes another), which saehooks does "
    "not run; saehooks loads sparse autoencoders only"
)
UNSUPPORTED = {
    "gemma_2_transcoder": TRANSCODER,
    "mwhanna_transcoder": TRANSCODER,
    "mntss_clt_layer_transcoder": "a cross-layer " + TRANSCODER,
    "temporal": "a temporal SAE (its code depends on earlier tokens), which saehooks does not run",
    "connor_rob_hook_z": HOOK_Z,
    "llama_scope_r1_distill": "a Llama Scope R1-distill SAE, whose conversion saehooks "
    "does not implement",
}
"""SAELens conversions saehooks refuses, with the reason."""


def _gemma_width(path: str) -> int | None:
    return next((width for key, width in _GEMMA_WIDTHS.items() if key in path), None)


def layer_number(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def gemma_2_hook(repo_id: str, path: str) -> str | None:
    """SAELens' rule: the repository says res / mlp / att, the folder the layer."""
    layer = layer_number(r"layer_(\d+)", path)
    if "res" in repo_id:
        if "embedding" in path:
            return "hook_embed"
        return f"blocks.{layer}.hook_resid_post" if layer is not None else None
    if layer is None:
        return None
    if "mlp" in repo_id:
        return f"blocks.{layer}.hook_mlp_out"
    if "att" in repo_id:
        return f"blocks.{layer}.attn.hook_z"
    return None


def gemma_3_hook(path: str) -> tuple[str | None, str]:
    """(hook, kind) from a Gemma Scope 2 folder name; kind: sae / hook_z / transcoder."""
    layer = layer_number(r"layer_(\d+)", path)
    if "transcoder" in path or "clt" in path:
        return (f"blocks.{layer}.hook_mlp_in" if layer is not None else None), "transcoder"
    if layer is None:
        return None, "sae"
    if "resid_post" in path:
        return f"blocks.{layer}.hook_resid_post", "sae"
    if "attn_out" in path:
        return f"blocks.{layer}.attn.hook_z", "hook_z"
    if "mlp_out" in path:
        return f"blocks.{layer}.hook_mlp_out", "sae"
    return None, "sae"


_LLAMA_SCOPE_HOOKS = {"R": "hook_resid_post", "A": "hook_attn_out", "M": "hook_mlp_out"}


def describe(entry: ReleaseSAE) -> ReleaseInfo:
    """Hook, width and architecture of a registry SAE as far as its names tell.

    Args:
        entry: the SAE's registry record.

    Returns:
        A :class:`ReleaseInfo`; fields the names do not fix are None (the files fix
        them on loading).
    """
    conv, path, repo = entry.conversion, entry.path, entry.repo_id
    if conv in UNSUPPORTED:
        return ReleaseInfo(None, None, None, False, UNSUPPORTED[conv])
    if conv == "sae_lens":
        match = _HOOK_RE.search(entry.sae_id) or _HOOK_RE.search(path)
        hook = entry.overrides.get("hook_name") or (match.group(0) if match else None)
        if hook is not None and hook.endswith("hook_z"):
            return ReleaseInfo(hook, None, None, False, HOOK_Z)
        norm = entry.overrides.get("normalize_activations")
        if norm in ("constant_norm_rescale", "layer_norm"):
            return ReleaseInfo(hook, None, None, False, _runtime_norm(norm))
        return ReleaseInfo(hook, None, None, True)
    if conv == "gemma_2":
        hook = gemma_2_hook(repo, path)
        if hook is not None and hook.endswith("hook_z"):
            return ReleaseInfo(hook, _gemma_width(path), "jumprelu", False, HOOK_Z)
        return ReleaseInfo(hook, _gemma_width(path), "jumprelu", True)
    if conv == "gemma_3":
        hook, kind = gemma_3_hook(path)
        if kind == "transcoder":
            return ReleaseInfo(hook, _gemma_width(path), None, False, TRANSCODER)
        if kind == "hook_z":
            return ReleaseInfo(hook, _gemma_width(path), "jumprelu", False, HOOK_Z)
        return ReleaseInfo(hook, _gemma_width(path), "jumprelu", True)
    if conv == "sparsify":
        from saehooks.io.sparsify import hook_name_from_module

        return ReleaseInfo(
            hook_name_from_module(path.rstrip("/").split("/")[-1]) or None, None, "topk", True
        )
    if conv == "dictionary_learning_1":
        layer = layer_number(r"resid_post_layer_(\d+)", path)
        match = _HOOK_RE.search(entry.sae_id)
        hook = (
            f"blocks.{layer}.hook_resid_post"
            if layer is not None
            else match.group(0)
            if match
            else None
        )
        return ReleaseInfo(hook, None, None, True)
    if conv == "llama_scope":
        match = re.search(r"L(\d+)([RAM])-(\d+)x", path)
        if match is None:
            return ReleaseInfo(None, None, "jumprelu", True)
        layer, kind, factor = int(match.group(1)), match.group(2), int(match.group(3))
        return ReleaseInfo(
            f"blocks.{layer}.{_LLAMA_SCOPE_HOOKS[kind]}", 4096 * factor, "jumprelu", True
        )
    if conv == "qwen_scope":
        layer = layer_number(r"layer(\d+)\.sae\.pt", path)
        width = layer_number(r"-W(\d+)K-", repo)
        return ReleaseInfo(
            f"blocks.{layer}.hook_resid_post" if layer is not None else None,
            width * 1024 if width is not None else None,
            "topk",
            True,
        )
    if conv in ("goodfire", "deepseek_r1"):
        layer = layer_number(r"(?:layer_|-l|l)(\d+)", entry.sae_id if conv == "goodfire" else path)
        return ReleaseInfo(
            f"blocks.{layer}.hook_resid_post" if layer is not None else None, None, "relu", True
        )
    return ReleaseInfo(
        None, None, None, False, f"its conversion {conv!r} is unknown to this saehooks version"
    )


def _runtime_norm(norm: str) -> str:
    return (
        f"normalize_activations={norm!r}: SAELens normalises every input token at run "
        "time, which saehooks' SAE does not implement"
    )
