"""Saving and loading SAEs in the formats researchers use.

``load_sae`` detects the format of a folder; ``save_sae`` writes SAELens' v6 layout
by default, so saehooks files are SAELens files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saehooks.io import saelens
from saehooks.io.common import SAEFileError, check_tensors
from saehooks.sae import DTYPES, SAE, SAEConfig, dtype_name

FORMATS = {"saelens": saelens}


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
    """A folder, or the name of a shipped SAE (``pretrained/saes/<name>``)."""
    from saehooks.reference import pretrained_sae_dir

    path = Path(path_or_name)
    if path.is_dir():
        return path
    shipped = pretrained_sae_dir() / str(path_or_name)
    if shipped.is_dir():
        return shipped
    raise FileNotFoundError(
        f"no SAE folder or shipped SAE named {str(path_or_name)!r}; pass a folder holding "
        f"cfg.json + sae_weights.safetensors, or one of the shipped names "
        f"(saehooks.list_pretrained_saes())")


def detect_format(path: Path) -> str:
    for name, module in FORMATS.items():
        if module.is_format(path):
            return name
    listing = sorted(p.name for p in path.iterdir())[:20]
    raise SAEFileError(f"{path}: no known SAE format here (found {listing}); expected "
                       "SAELens (cfg.json + sae_weights.safetensors)")


def load_sae(path_or_name: str | Path, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None) -> SAE:
    """Load an SAE from a folder or by shipped name, detecting the format.

    Args:
        path_or_name: a folder, or the name of an SAE in ``pretrained/saes``.
        device: where to put the parameters (default: CPU), over the file's value.
        dtype: parameter dtype (default: the file's), e.g. ``torch.bfloat16``.

    Returns:
        The SAE, in eval mode.

    Raises:
        FileNotFoundError: no such folder or shipped name.
        SAEFileError: missing, truncated or corrupt files; tensors missing,
            unexpected or of the wrong shape for the config.
        ValueError: an unsupported architecture or dtype.
    """
    path = resolve_path(path_or_name)
    fmt = detect_format(path)
    cfg, tensors, extras = FORMATS[fmt].load(path)
    if dtype is not None and dtype_name(dtype) not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    sae = build_sae(cfg, tensors, str(path), device=device, dtype=dtype)
    sae.feature_density = extras.get("feature_density")
    return sae.eval()


def save_sae(sae: SAE, path: str | Path, format: str = "saelens") -> None:
    """Write ``sae`` to the folder ``path`` in ``format`` (``"saelens"``).

    Raises:
        ValueError: an unknown format.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown SAE format {format!r}; choose one of {sorted(FORMATS)}")
    FORMATS[format].save(sae, Path(path))


__all__ = ["SAEFileError", "load_sae", "save_sae"]
