"""File helpers shared by the formats: atomic writes, checked reads, strict config fields.

A config file is read field by field with :func:`cfg_int`, :func:`cfg_bool`,
:func:`cfg_str` and :func:`cfg_dict`: a field of the wrong JSON type is an error that
names the file and the field (``"false"`` in quotes is a string, not a boolean;
``4096.9`` is not a size), never a value coerced into another meaning.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saehooks.errors import InputError, InputTypeError, SAEFileError


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
        raise SAEFileError(
            f"{path}: not a readable safetensors file ({exc}); the file is "
            "truncated or corrupt: download or save it again"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAEFileError(f"{path}: file not found")
    try:
        out = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(
            f"{path}: not valid JSON ({exc}); the file is truncated or corrupt"
        ) from exc
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
            raise SAEFileError(
                f"{where}: tensor {name} has shape {tuple(found[name].shape)}, "
                f"expected {tuple(shape)} from the config"
            )


_REQUIRED: Any = object()
"""Default of the ``cfg_*`` readers: the field must be present."""


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _field(raw: dict[str, Any], key: str, where: str, default: Any) -> Any:
    if key in raw:
        return raw[key]
    if default is _REQUIRED:
        raise SAEFileError(f"{where}: missing required field {key!r}")
    return default


def cfg_int(
    raw: dict[str, Any], key: str, where: str, default: Any = _REQUIRED, minimum: int | None = None
) -> Any:
    """The integer field ``key`` of the config ``raw`` read from ``where``.

    A JSON integer, or a float with an integral value (``4096.0``); ``null`` only when
    ``default`` is None.

    Raises:
        SAEFileError: the field is missing (without a default), a string, a boolean,
            a number with a fraction (``4096.9``), or below ``minimum``.
    """
    value = _field(raw, key, where, default)
    if value is None and default is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        what = (
            f"{value!r}, which is not a whole number"
            if isinstance(value, float)
            else f"{json.dumps(value)} ({_json_kind(value)})"
        )
        raise SAEFileError(
            f"{where}: field {key!r} must be an integer, found {what}; write "
            f'it as a JSON integer, e.g. "{key}": 4096'
        )
    if minimum is not None and value < minimum:
        raise SAEFileError(f"{where}: field {key!r} must be >= {minimum}, found {value}")
    return value


def cfg_bool(raw: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> bool:
    """The boolean field ``key``: JSON ``true`` / ``false`` only.

    Raises:
        SAEFileError: missing (without a default), or any other JSON value; the string
            ``"false"`` is refused (``bool("false")`` would be True).
    """
    value = _field(raw, key, where, default)
    if isinstance(value, bool):
        return value
    hint = (
        f'; write it without quotes: "{key}": {value.strip().lower()}'
        if isinstance(value, str) and value.strip().lower() in ("true", "false")
        else f'; write "{key}": true or false'
    )
    raise SAEFileError(
        f"{where}: field {key!r} must be a JSON boolean (true or false), found "
        f"{json.dumps(value)} ({_json_kind(value)}){hint}"
    )


def cfg_str(raw: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> Any:
    """The string field ``key`` (``null`` only when ``default`` is None).

    Raises:
        SAEFileError: missing (without a default), or not a JSON string.
    """
    value = _field(raw, key, where, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise SAEFileError(
            f"{where}: field {key!r} must be a string, found "
            f"{json.dumps(value)} ({_json_kind(value)})"
        )
    return value


def cfg_dict(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """The object field ``key`` as a new dict; ``{}`` when missing or ``null``.

    Raises:
        SAEFileError: present but not a JSON object.
    """
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SAEFileError(
            f"{where}: field {key!r} must be a JSON object, found {_json_kind(value)}"
        )
    return dict(value)


def make_config(where: str, **fields: Any):
    """``SAEConfig(**fields)``, with a refusal reported as an error in the file ``where``.

    Raises:
        SAEFileError: the fields do not make a valid config (the message names the
            file and the field).
    """
    from saehooks.sae import SAEConfig

    try:
        return SAEConfig(**fields)
    except (InputError, InputTypeError) as exc:
        raise SAEFileError(f"{where}: {exc}") from None


def check_json_metadata(metadata: dict[str, Any]) -> str:
    """``metadata`` as JSON text, or an error naming the entry that JSON cannot hold.

    Raises:
        InputError: an entry JSON cannot write (e.g. a tensor or a set): storing its
            ``repr`` instead would change the SAE's config after a save and load.
    """
    try:
        return json.dumps(metadata)
    except (TypeError, ValueError):
        for key, value in metadata.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"cfg.metadata[{key!r}] cannot be written as JSON ({exc}); "
                    "keep metadata to strings, numbers, booleans, lists and "
                    "dicts, e.g. convert a tensor with .tolist()"
                ) from None
        raise
