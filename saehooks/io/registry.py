"""SAELens' registry of pretrained SAE releases, shipped as a data file.

Source: SAELens (jbloomAus/SAELens, MIT licence), ``sae_lens/pretrained_saes.yaml``:
each *release* (e.g. ``gpt2-small-res-jb``) names a Hugging Face repository, the model
its SAEs read, a ``conversion_func`` (how its files are laid out) and its SAEs by id
(e.g. ``blocks.8.hook_resid_pre``), each with a path inside the repository and, where
known, a Neuronpedia id and a ``norm_scaling_factor``. saehooks ships the fields it
reads as ``saehooks/io/data/saelens_registry.json`` (source version and licence notice
beside it; rebuilt by ``scripts/refresh_saelens_registry.py``). The environment
variable ``SAEHOOKS_SAELENS_REGISTRY`` points at another file of the same layout (a
newer registry, or a test's).

:func:`lookup` finds one SAE, :func:`split_name` reads the ``"release/sae_id"``
string form, :func:`list_releases` tabulates them all; loading is
:mod:`saehooks.io.releases`.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from saehooks.errors import InputError, InputTypeError, SAEFileError, SAENotFoundError

DATA_FILE = Path(__file__).resolve().parent / "data" / "saelens_registry.json"
ENV_VAR = "SAEHOOKS_SAELENS_REGISTRY"
FORMAT = 1
"""Layout version of the JSON file (written by ``scripts/refresh_saelens_registry.py``)."""


class ReleaseSAE(NamedTuple):
    """One SAE of a SAELens release, as the registry describes it."""

    release: str
    """Release name, e.g. ``"gpt2-small-res-jb"``."""
    sae_id: str
    """The SAE's id in the release, e.g. ``"blocks.8.hook_resid_pre"``."""
    repo_id: str
    """Hugging Face repository, ``"<owner>/<repo>"``."""
    path: str
    """Path of the SAE's folder (or file) inside the repository."""
    model: str
    """The model the SAEs read, as SAELens names it (e.g. ``"gpt2-small"``)."""
    conversion: str
    """SAELens' ``conversion_func``: the file layout (``"sae_lens"`` by default)."""
    overrides: dict[str, Any]
    """SAELens' ``config_overrides`` for the release (applied over the files' config)."""
    neuronpedia_id: str | None
    """Neuronpedia id of the SAE's dashboards, e.g. ``"gpt2-small/8-res-jb"``."""
    norm_scaling_factor: float | None
    """Input scale the SAE was trained with (``normalize_activations =
    "expected_average_only_in"``), folded into the weights on loading."""


_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def registry_file() -> Path:
    """The registry in use: ``$SAEHOOKS_SAELENS_REGISTRY`` or the shipped file."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DATA_FILE


def _read() -> dict[str, Any]:
    path = registry_file()
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError as exc:
        raise SAENotFoundError(
            f"the SAELens release registry {path} is missing"
            + (f" ({ENV_VAR} points there)" if os.environ.get(ENV_VAR) else "; reinstall saehooks")
            + f": {exc}"
        ) from exc
    if key not in _CACHE:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SAEFileError(
                f"{path}: not a readable registry ({exc}); rebuild it with "
                "scripts/refresh_saelens_registry.py"
            ) from exc
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("releases"), dict)
        ):
            raise SAEFileError(
                f"{path}: not a saehooks SAELens registry of format {FORMAT}; "
                "rebuild it with scripts/refresh_saelens_registry.py"
            )
        _CACHE.clear()
        _CACHE[key] = data
    return _CACHE[key]


def releases() -> dict[str, dict[str, Any]]:
    """Release name -> its registry record (``repo_id``, ``model``, ``conversion``,
    ``overrides``, ``path_prefix``, ``saes`` rows ``[id, path, neuronpedia, scale]``)."""
    return _read()["releases"]


def source() -> str:
    """Where the registry in use comes from, e.g. ``"sae-lens 6.54.12, ..."``."""
    return str(_read().get("source", registry_file()))


def _entry(release: str, record: dict[str, Any], row: list[Any]) -> ReleaseSAE:
    sae_id = str(row[0])
    path = row[1] if len(row) > 1 and row[1] is not None else record.get("path_prefix", "") + sae_id
    return ReleaseSAE(
        release=release,
        sae_id=sae_id,
        repo_id=record["repo_id"],
        path=str(path),
        model=str(record.get("model", "")),
        conversion=record.get("conversion") or "sae_lens",
        overrides=dict(record.get("overrides") or {}),
        neuronpedia_id=row[2] if len(row) > 2 else None,
        norm_scaling_factor=float(row[3]) if len(row) > 3 and row[3] is not None else None,
    )


def entries(release: str) -> list[ReleaseSAE]:
    """Every SAE of ``release``, in registry order.

    Raises:
        SAENotFoundError: no such release (close names suggested).
    """
    table = releases()
    if release not in table:
        close = difflib.get_close_matches(release, list(table), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise SAENotFoundError(
            f"no SAELens release named {release!r}; {hint}list them with "
            "saehooks.list_pretrained_saes(include_releases=True) (registry: "
            f"{source()})"
        )
    record = table[release]
    return [_entry(release, record, row) for row in record["saes"]]


def lookup(release: str, sae_id: str) -> ReleaseSAE:
    """The registry's record of one SAE.

    Args:
        release: a SAELens release name, e.g. ``"gpt2-small-res-jb"``.
        sae_id: an SAE id in it, e.g. ``"blocks.8.hook_resid_pre"``.

    Returns:
        Its :class:`ReleaseSAE`.

    Raises:
        InputTypeError: ``release`` or ``sae_id`` is not a string.
        SAENotFoundError: no such release, or no such id in it (the message suggests
            close names and says how to list them).
    """
    for name, value, example in (
        ("release", release, "gpt2-small-res-jb"),
        ("sae_id", sae_id, "blocks.8.hook_resid_pre"),
    ):
        if not isinstance(value, str):
            raise InputTypeError(
                f"{name} must be a string such as {example!r}, got {type(value).__name__}"
            )
    found = entries(release)
    for entry in found:
        if entry.sae_id == sae_id:
            return entry
    ids = [e.sae_id for e in found]
    close = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
    raise SAENotFoundError(f"release {release!r} has no SAE {sae_id!r}; {hint}its ids: {shown}")


def split_name(name: str) -> tuple[str, str] | None:
    """``"release/sae_id"`` -> ``(release, sae_id)`` when the part before a ``/`` is a
    release of the registry (ids may hold ``/``, e.g. Gemma Scope's
    ``layer_0/width_16k/canonical``); None otherwise."""
    if not isinstance(name, str) or "/" not in name:
        return None
    table = releases()
    start = 0
    while (cut := name.find("/", start)) > 0:
        if name[:cut] in table and name[cut + 1 :]:
            return name[:cut], name[cut + 1 :]
        start = cut + 1
    return None


def close_releases(name: str) -> list[str]:
    """Release names close to the part of ``name`` before its first ``/``."""
    head = name.split("/", 1)[0]
    return difflib.get_close_matches(head, list(releases()), n=3, cutoff=0.7) if head else []


def list_releases(release: str | None = None):
    """Every SAE of the registry (or of one release) as a DataFrame.

    Args:
        release: only this release (default: all).

    Returns:
        ``pandas.DataFrame``, one row per SAE, columns ``release``, ``sae_id``, ``model``,
        ``hook_name``, ``d_sae``, ``architecture`` (None where the registry's names do
        not tell; the files do, on loading), ``loadable`` (False for kinds saehooks does
        not run: transcoders, SAEs over attention heads' ``hook_z``), ``repo_id``,
        ``path``, ``conversion``, ``neuronpedia_id``. Load one with
        ``saehooks.load_sae(release=..., sae_id=...)``.

    Raises:
        InputTypeError: ``release`` is not a string.
        SAENotFoundError: no such release.
    """
    import pandas as pd

    from saehooks.io.release_names import describe

    if release is not None and not isinstance(release, str):
        raise InputTypeError(f"release must be a string or None, got {type(release).__name__}")
    names = [release] if release is not None else list(releases())
    rows = []
    for name in names:
        for entry in entries(name):
            info = describe(entry)
            rows.append(
                {
                    "release": entry.release,
                    "sae_id": entry.sae_id,
                    "model": entry.model,
                    "hook_name": info.hook_name,
                    "d_sae": info.d_sae,
                    "architecture": info.architecture,
                    "loadable": info.loadable,
                    "repo_id": entry.repo_id,
                    "path": entry.path,
                    "conversion": entry.conversion,
                    "neuronpedia_id": entry.neuronpedia_id,
                }
            )
    frame = pd.DataFrame(rows)
    frame["d_sae"] = frame["d_sae"].astype("Int64")
    return frame


def check_name_arguments(path_or_name: Any, release: Any, sae_id: Any) -> None:
    """Refuse a mix of ``path_or_name`` with ``release`` / ``sae_id``, or half a pair.

    Raises:
        InputError: both forms given, or only one of ``release`` / ``sae_id``.
    """
    if release is None and sae_id is None:
        return
    if path_or_name is not None:
        raise InputError(
            "pass either a path or name, or release= with sae_id=, not both; "
            "e.g. load_sae(release='gpt2-small-res-jb', "
            "sae_id='blocks.8.hook_resid_pre')"
        )
    if release is None or sae_id is None:
        missing = "release" if release is None else "sae_id"
        raise InputError(
            f"load_sae needs both release= and sae_id=; {missing} is missing "
            "(list them with saehooks.list_pretrained_saes(include_releases=True))"
        )


def with_releases(shipped):
    """The shipped-SAE table of ``list_pretrained_saes`` with every registry SAE appended.

    Args:
        shipped: ``pandas.DataFrame`` indexed by shipped SAE name.

    Returns:
        One DataFrame indexed by the name ``saehooks.load_sae`` takes: the shipped
        names, then ``"<release>/<sae_id>"`` for each SAELens release SAE. Column
        ``source`` is ``"shipped"`` or ``"saelens_release"``; release rows carry the
        columns of :func:`list_releases` (``release``, ``sae_id``, ``model``,
        ``hook_name``, ``d_sae``, ``architecture``, ``loadable``, ...), shipped rows their
        metrics.
    """
    import pandas as pd

    table = list_releases()
    table.index = pd.Index(table["release"] + "/" + table["sae_id"], name=shipped.index.name)
    table["source"] = "saelens_release"
    shipped = shipped.assign(source="shipped")
    if "d_sae" in shipped:
        shipped["d_sae"] = shipped["d_sae"].astype("Int64")
    return pd.concat([shipped, table])
