"""File helpers shared by the formats: atomic writes, checked reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.errors import SAEFileError  # noqa: F401  (re-exported: its old home)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
    """Save contiguous CPU copies of ``tensors`` to ``path`` atomically."""
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file raises SAEFileError."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise SAEFileError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad headers
        raise SAEFileError(f"{path}: not a readable safetensors file ({exc}); the file is "
                           "truncated or corrupt: download or save it again") from exc


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAEFileError(f"{path}: file not found")
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(f"{path}: not valid JSON ({exc}); the file is truncated or "
                           "corrupt") from exc
    if not isinstance(out, dict):
        raise SAEFileError(f"{path}: expected a JSON object, found {type(out).__name__}")
    return out


def check_tensors(expected: dict[str, torch.Size], found: dict[str, Tensor], where: str) -> None:
    """Raise SAEFileError naming missing, unexpected or mis-shaped tensors."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise SAEFileError(f"{where}: {'; '.join(parts)} for this architecture")
    for name, shape in expected.items():
        if tuple(found[name].shape) != tuple(shape):
            raise SAEFileError(f"{where}: tensor {name} has shape {tuple(found[name].shape)}, "
                               f"expected {tuple(shape)} from the config")
