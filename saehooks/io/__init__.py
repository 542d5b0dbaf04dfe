"""Saving and loading SAEs in the formats researchers use.

``load_sae`` detects the format of a folder (or fetches an ``hf://`` address):

* ``saelens``: SAELens v6 and pre-v6 (``cfg.json`` + ``sae_weights.safetensors``);
* ``sparsify``: EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``);
* ``dictionary_learning``: saprmarks/dictionary_learning (``ae.pt`` + ``config.json``).

``save_sae`` writes SAELens' v6 layout by default, so saehooks files are SAELens
files; ``format="sparsify"`` writes a sparsify hook-point folder (top-k SAEs).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from saehooks.io import dictionary_learning, hub, saelens, sparsify
from saehooks.io.common import SAEFileError, check_tensors
from saehooks.io.folding import fold_W_dec_norm
from saehooks.sae import SAE, SAEConfig, dtype_name

FORMATS: dict[str, ModuleType] = {
    "saelens": saelens,
    "sparsify": sparsify,
    "dictionary_learning": dictionary_learning,
}
"""Format name -> module with ``is_format(path)`` and ``load(path)``; detection order."""
SAVE_FORMATS = ("saelens", "sparsify")
FORMAT_FILES = {
    "saelens": "cfg.json + sae_weights.safetensors",
    "sparsify": "cfg.json + sae.safetensors",
    "dictionary_learning": "ae.pt (+ config.json)",
}


def expected_shapes(cfg: SAEConfig) -> dict[str, torch.Size]:
    """Tensor name -> shape that an SAE of this config holds."""
    return {name: p.shape for name, p in SAE(cfg.replace(device="meta")).state_dict().items()}


def build_sae(cfg: SAEConfig, tensors: dict, where: str, device=None, dtype=None) -> SAE:
    """Check ``tensors`` against ``cfg`` and make the SAE (on ``device``, in ``dtype``)."""
    check_tensors(expected_shapes(cfg), tensors, where)
    target = cfg.replace(
        dtype=dtype_name(dtype) if dtype is not None else cfg.dtype,
        device=str(device) if device is not None else "cpu",
    )
    sae = SAE(target)
    with torch.no_grad():
        for name, param in sae.state_dict().items():
            param.copy_(tensors[name].to(param.dtype))
    return sae


def resolve_path(path_or_name: str | Path) -> Path:
    """A folder, an ``hf://`` address, or the name of a shipped SAE."""
    from saehooks.reference import pretrained_sae_dir

    if not str(path_or_name).strip():
        raise ValueError("load_sae needs a folder, an hf:// address or a shipped name, got an "
                         "empty string; see saehooks.list_pretrained_saes()")
    if hub.is_hub_url(path_or_name):
        return hub.resolve(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    shipped = pretrained_sae_dir() / str(path_or_name)
    if shipped.is_dir():
        return shipped
    import difflib

    names = sorted(p.parent.name for p in pretrained_sae_dir().glob("*/cfg.json"))
    close = difflib.get_close_matches(str(path_or_name), names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise FileNotFoundError(
        f"no SAE folder or shipped SAE named {str(path_or_name)!r}; {hint}pass a folder holding "
        "an SAE (SAELens, sparsify or dictionary_learning files), an address "
        "hf://<owner>/<repo>/<folder>, or one of the shipped names "
        "(saehooks.list_pretrained_saes())")


def detect_format(path: Path) -> str:
    """The name of the format of the SAE folder ``path`` (a key of :data:`FORMATS`).

    Raises:
        SAEFileError: no known format; the message lists sub-folders that hold SAEs
            (a sparsify run keeps one per hook point).
    """
    for name, module in FORMATS.items():
        if module.is_format(path):
            return name
    inner = sorted(p.name for p in path.iterdir()
                   if p.is_dir() and any(m.is_format(p) for m in FORMATS.values()))
    if inner:
        shown = ", ".join(inner[:8]) + (" ..." if len(inner) > 8 else "")
        raise SAEFileError(f"{path}: this folder holds {len(inner)} SAEs in sub-folders "
                           f"({shown}); load one of them, e.g. load_sae({str(path / inner[0])!r})")
    listing = sorted(p.name for p in path.iterdir())[:20]
    expected = "; ".join(f"{k}: {v}" for k, v in FORMAT_FILES.items())
    raise SAEFileError(f"{path}: no known SAE format here (found {listing}); expected {expected}")


def load_sae(path_or_name: str | Path, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None) -> SAE:
    """Load an SAE from a folder, an ``hf://`` address or a shipped name, detecting the format.

    Args:
        path_or_name: a folder in SAELens, sparsify or dictionary_learning layout;
            ``hf://<owner>/<repo>[@<revision>]/<folder>`` (downloaded when online,
            from the local hub cache when offline); or the name of an SAE in
            ``pretrained/saes``.
        device: where to put the parameters (default: CPU), over the file's value.
        dtype: parameter dtype (default: the file's), e.g. ``torch.bfloat16``.

    Returns:
        The SAE, in eval mode; ``sae.feature_density [d_sae]`` when the files carry it
        (SAELens' ``sparsity.safetensors``), else None.

    Raises:
        FileNotFoundError: no such folder or shipped name; a hub SAE that is neither
            cached nor downloadable (the message says what to download).
        SAEFileError: missing, truncated or corrupt files; tensors missing,
            unexpected or of the wrong shape for the config (named); a pickle that
            ``torch.load(weights_only=True)`` refuses.
        ValueError: an unsupported architecture, activation or dtype.
    """
    if dtype is not None:
        dtype_name(dtype)  # fail on a bad dtype before reading anything
    path = resolve_path(path_or_name)
    fmt = detect_format(path)
    cfg, tensors, extras = FORMATS[fmt].load(path)
    sae = build_sae(cfg, tensors, str(path), device=device, dtype=dtype)
    density = extras.get("feature_density")
    sae.feature_density = density.to(sae.device) if density is not None else None
    return sae.eval()


def save_sae(sae: SAE, path: str | Path, format: str = "saelens") -> None:
    """Write ``sae`` to the folder ``path``.

    Args:
        sae: the SAE.
        path: the folder (created if needed; files in it are replaced atomically).
        format: ``"saelens"`` (default; SAELens 6 loads it as the same SAE) or
            ``"sparsify"`` (one sparsify hook-point folder; top-k SAEs only).

    Raises:
        ValueError: an unknown format, or an SAE the format cannot hold.
    """
    if format not in SAVE_FORMATS:
        readable = f" ({format} is read-only)" if format in FORMATS else ""
        raise ValueError(f"cannot save in format {format!r}{readable}; choose one of "
                         f"{list(SAVE_FORMATS)}")
    FORMATS[format].save(sae, Path(path))


__all__ = ["FORMATS", "SAEFileError", "detect_format", "fold_W_dec_norm", "load_sae",
           "save_sae"]
