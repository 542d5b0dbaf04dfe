"""Saving and loading SAEs in the formats researchers use.

``load_sae`` detects the format of a folder (or fetches an ``hf://`` address, or a
SAELens pretrained release by name: :mod:`saehooks.io.registry`,
:mod:`saehooks.io.releases`):

* ``saelens``: SAELens v6 and pre-v6 (``cfg.json`` + ``sae_weights.safetensors``);
* ``sparsify``: EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``);
* ``dictionary_learning``: saprmarks/dictionary_learning (``ae.pt`` + ``config.json``).

``save_sae`` writes SAELens' v6 layout by default, so saehooks files are SAELens
files (but for the ``mlp`` architecture, which SAELens has no class for: stored in the
same layout for saehooks only); ``format="sparsify"`` writes a sparsify hook-point
folder (top-k SAEs). A save
replaces the whole folder at once (:mod:`saehooks.io.atomic`): after a crash at any
moment the folder loads as the old SAE or the new one, never a mix, and no file of
the previous SAE survives into the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch

from saehooks import checks
from saehooks.errors import InputError, InputTypeError, SAENotFoundError
from saehooks.io import atomic, dictionary_learning, hub, registry, releases, saelens, sparsify
from saehooks.io.common import SAEFileError, check_tensors
from saehooks.io.folding import fold_W_dec_norm
from saehooks.sae import SAE, SAEConfig, dtype_name

FORMATS: dict[str, ModuleType] = {
    "saelens": saelens,
    "sparsify": sparsify,
    "dictionary_learning": dictionary_learning,
}
"""Format name -> module with ``is_format(path)`` and ``load(path)``, in detection order.
The writable ones (:data:`SAVE_FORMATS`) also have ``check_writable(sae)``,
``save(sae, folder)`` and ``FILES`` (every file ``save`` may write)."""
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
    """A folder, an ``hf://`` address, or the name of a shipped SAE.

    Raises:
        InputError: an empty string.
        SAENotFoundError: a file instead of its folder (the message names the folder
            to pass), or nothing of that name (with close shipped names).
    """
    from saehooks.reference import pretrained_sae_dir

    if not str(path_or_name).strip():
        raise InputError(
            "load_sae needs a folder, an hf:// address or a shipped name, got an "
            "empty string; see saehooks.list_pretrained_saes()"
        )
    if hub.is_hub_url(path_or_name):
        return hub.resolve(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if not path.exists():
        atomic.tidy(path)  # a save killed half-way: its complete folder, or nothing
    if path.is_dir() or (not path.exists() and atomic.current(path) is not None):
        return path
    if path.is_file():
        parent = path.parent
        what = (
            "the SAE folder that holds it"
            if any(m.is_format(parent) for m in FORMATS.values())
            else "the folder of an SAE"
        )
        raise SAENotFoundError(
            f"{path} is a file; load_sae takes {what}: pass the folder, "
            f"e.g. load_sae({str(parent)!r})"
        )
    shipped = pretrained_sae_dir() / str(path_or_name)
    if shipped.is_dir():
        return shipped
    import difflib

    names = sorted(p.parent.name for p in pretrained_sae_dir().glob("*/cfg.json"))
    close = difflib.get_close_matches(str(path_or_name), names, n=3, cutoff=0.6)
    close += [f"{name}/..." for name in registry.close_releases(str(path_or_name))]
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise SAENotFoundError(
        f"no SAE folder, shipped SAE or SAELens release named {str(path_or_name)!r}; {hint}pass "
        "a folder holding an SAE (SAELens, sparsify or dictionary_learning files), an address "
        "hf://<owner>/<repo>/<folder>, one of the shipped names, or a SAELens release as "
        "'<release>/<sae_id>' (saehooks.list_pretrained_saes(include_releases=True))"
    )


def release_name(path_or_name: object) -> tuple[str, str] | None:
    """``(release, sae_id)`` when ``path_or_name`` is the string ``"<release>/<sae_id>"`` of
    a SAELens release and names no existing folder or shipped SAE; None otherwise."""
    if not isinstance(path_or_name, str) or hub.is_hub_url(path_or_name):
        return None
    from saehooks.reference import pretrained_sae_dir

    path = Path(path_or_name).expanduser()
    if (
        path.exists()
        or atomic.current(path) is not None
        or (pretrained_sae_dir() / path_or_name).is_dir()
    ):
        return None
    return registry.split_name(path_or_name)


def detect_format(path: Path) -> str:
    """The name of the format of the SAE folder ``path`` (a key of :data:`FORMATS`).

    Raises:
        SAEFileError: no known format; the message lists sub-folders that hold SAEs
            (a sparsify run keeps one per hook point).
    """
    for name, module in FORMATS.items():
        if module.is_format(path):
            return name
    inner = sorted(
        p.name
        for p in path.iterdir()
        if p.is_dir() and any(m.is_format(p) for m in FORMATS.values())
    )
    if inner:
        shown = ", ".join(inner[:8]) + (" ..." if len(inner) > 8 else "")
        raise SAEFileError(
            f"{path}: this folder holds {len(inner)} SAEs in sub-folders "
            f"({shown}); load one of them, e.g. load_sae({str(path / inner[0])!r})"
        )
    listing = sorted(p.name for p in path.iterdir())[:20]
    expected = "; ".join(f"{k}: {v}" for k, v in FORMAT_FILES.items())
    raise SAEFileError(f"{path}: no known SAE format here (found {listing}); expected {expected}")


def load_sae(
    path_or_name: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    release: str | None = None,
    sae_id: str | None = None,
) -> SAE:
    """Load an SAE from a folder, an ``hf://`` address, a shipped name or a SAELens
    release, detecting the format.

    The folder is read under a shared lock, so a save running at the same time is
    seen whole or not at all; a save that was killed half-way is settled first (see
    :mod:`saehooks.io.atomic`). Config files are read strictly: a field of the wrong
    JSON type or an ambiguous config is an error naming the file and the field.

    Args:
        path_or_name: a folder in SAELens, sparsify or dictionary_learning layout;
            ``hf://<owner>/<repo>[@<revision>]/<folder>`` (downloaded when online,
            from the local hub cache when offline); the name of an SAE in
            ``pretrained/saes``; or ``"<release>/<sae_id>"``, a SAELens pretrained
            release (e.g. ``"gpt2-small-res-jb/blocks.8.hook_resid_pre"``).
        device: where to put the parameters (default: CPU), over the file's value.
        dtype: parameter dtype (default: the file's; float32 for a SAELens release, as
            SAELens' ``SAE.from_pretrained``), e.g. ``torch.bfloat16``.
        release: a SAELens release name (with ``sae_id``, instead of ``path_or_name``),
            resolved through SAELens' registry (:mod:`saehooks.io.registry`), its files
            fetched with ``huggingface_hub`` (cache first; ``HF_HUB_OFFLINE`` honoured)
            and converted with the release's conventions (:mod:`saehooks.io.releases`):
            the SAE encodes as SAELens' does, and ``cfg.metadata`` holds ``release``,
            ``sae_id``, ``neuronpedia_id`` and ``model_name``.
        sae_id: the SAE's id in ``release``.

    Returns:
        The SAE, in eval mode; ``sae.feature_density [d_sae]`` when the files carry it
        (SAELens' ``sparsity.safetensors``), else None.

    Raises:
        SAENotFoundError: no such folder, shipped name or release (close names
            suggested), or a file passed instead of its folder; a hub SAE that is
            neither cached nor downloadable (the message names the repository and file
            and says how to fetch them).
        SAEFileError: missing, truncated or corrupt files; tensors missing,
            unexpected or of the wrong shape for the config (named); a config field of
            the wrong type, an ambiguous or unsupported config (file and field named);
            a pickle that ``torch.load(weights_only=True)`` refuses.
            A release of a kind saehooks does not run (transcoders, SAEs over
            ``hook_z``, run-time input normalisation): the reason named.
        InputError: an unsupported ``dtype``; ``release`` / ``sae_id`` mixed with
            ``path_or_name``, or one of them without the other.
        DeviceError: a ``device`` this machine does not have (e.g. ``"cuda"`` without
            a GPU); the message lists the devices there are.
    """
    registry.check_name_arguments(path_or_name, release, sae_id)
    if dtype is not None:
        dtype_name(dtype)  # fail on a bad dtype or device before reading anything
    if device is not None:
        device = checks.check_device(device, "device")
    if release is None:
        if path_or_name is None:
            raise InputError(
                "load_sae needs a folder, an hf:// address, a shipped name or a "
                "SAELens release: pass path_or_name, or release= and sae_id="
            )
        named = release_name(path_or_name)
        if named is not None:
            release, sae_id = named
    if release is not None:
        entry = registry.lookup(release, sae_id)
        cfg, tensors, extras = releases.load(entry)
        sae = build_sae(
            cfg,
            tensors,
            f"{release}/{sae_id}",
            device=device,
            dtype=dtype if dtype is not None else torch.float32,
        )
        density = extras.get("feature_density")
        sae.feature_density = density.to(sae.device) if density is not None else None
        return sae.eval()
    path = resolve_path(path_or_name)
    with atomic.reading(path) as folder:
        fmt = detect_format(folder)
        cfg, tensors, extras = FORMATS[fmt].load(folder)
    sae = build_sae(cfg, tensors, str(path), device=device, dtype=dtype)
    density = extras.get("feature_density")
    sae.feature_density = density.to(sae.device) if density is not None else None
    return sae.eval()


def _check_target(path: Path, format: str, overwrite: bool) -> None:
    """Refuse to replace what ``path`` holds unless it is an SAE of ``format``, alone."""
    if not path.is_dir():
        raise InputError(
            f"{path} exists and is not a folder; save_sae writes a folder of "
            "files: pass a new or existing SAE folder path"
        )
    entries = sorted(os.listdir(path))
    if not entries:
        return
    found = next((name for name, m in FORMATS.items() if m.is_format(path)), None)
    if found == format:
        foreign = [e for e in entries if e not in FORMATS[format].FILES]
        if not foreign or overwrite:
            return
        raise InputError(
            f"{path} holds a {format} SAE and also {foreign[:10]}, which saving "
            "replaces with the new SAE's files only (they would be deleted); "
            "move them out, or pass overwrite=True to replace the whole folder"
        )
    if overwrite:
        return
    if found is not None:
        raise InputError(
            f"{path} holds a {found} SAE ({FORMAT_FILES[found]}); saving "
            f"format={format!r} there would replace it: pass overwrite=True to "
            "replace the folder, or save into another folder"
        )
    shown = entries[:10] + (["..."] if len(entries) > 10 else [])
    raise InputError(
        f"{path} is not empty and holds no SAE (found {shown}); saving replaces "
        "the whole folder, which would delete them: pass a new or empty folder, "
        "or overwrite=True"
    )


def save_sae(sae: SAE, path: str | Path, format: str = "saelens", overwrite: bool = False) -> None:
    """Write ``sae`` to the folder ``path``, replacing the folder whole.

    The files are written into a temporary sibling folder and swapped in with renames
    (:mod:`saehooks.io.atomic`): killed at any moment, ``path`` loads as the previous
    SAE or as this one, complete, and no file of the previous SAE (e.g. its
    ``sparsity.safetensors``) is left beside the new one.

    Args:
        sae: the SAE. Its config must be one the format stores exactly; a setting the
            format cannot express is refused, never dropped.
        path: the folder (created if needed, with its parents).
        format: ``"saelens"`` (default; SAELens 6 loads it as the same SAE, except
            an ``mlp`` SAE, stored in the same layout for saehooks only) or
            ``"sparsify"`` (one sparsify hook-point folder; plain top-k SAEs only).
        overwrite: also replace a folder that holds an SAE of another format, or other
            files (they are deleted). Without it such a folder is refused; re-saving an
            SAE of the same format over itself needs no flag.

    Raises:
        InputTypeError: ``sae`` is not an SAE, or ``overwrite`` not a bool.
        InputError: an unknown or read-only format; an SAE the format cannot hold
            (named setting); ``path`` is a file, is (or holds) the current working
            directory, or holds another format or other files and ``overwrite`` is
            False.
    """
    if not isinstance(sae, SAE):
        raise InputTypeError(f"save_sae saves a saehooks SAE, got {type(sae).__name__}")
    if format not in SAVE_FORMATS:
        readable = f" ({format} is read-only)" if format in FORMATS else ""
        raise InputError(
            f"cannot save in format {format!r}{readable}; choose one of {list(SAVE_FORMATS)}"
        )
    overwrite = checks.check_bool(overwrite, "overwrite")
    writer = FORMATS[format]
    writer.check_writable(sae)
    target = Path(os.path.abspath(Path(path).expanduser()))
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (target.resolve() == cwd or target.resolve() in cwd.parents):
        raise InputError(
            f"save_sae replaces the whole folder {str(path)!r}, which is (or holds) "
            "the current working directory; pass a sub-folder, e.g. './sae'"
        )
    atomic.replace_folder(
        target,
        lambda folder: writer.save(sae, folder),
        check=lambda existing: _check_target(existing, format, overwrite),
    )


__all__ = ["FORMATS", "SAEFileError", "detect_format", "fold_W_dec_norm", "load_sae", "save_sae"]
