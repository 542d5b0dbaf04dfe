"""The one home of Hugging Face Hub access: ``hf://`` addresses and single files.

Two entry points, both over ``huggingface_hub``'s local cache layout
(``<cache>/models--<owner>--<repo>/snapshots/<commit>/...``, ``refs/<branch>``):

* :func:`resolve` fetches the folder of ``hf://<owner>/<repo>[@<revision>]/<folder>``
  (``snapshot_download``);
* :func:`download` fetches one file (``hf_hub_download``), as the SAELens release
  loader (:mod:`saehooks.io.releases`) does for each file a release needs.

Online, files are downloaded (or refreshed) into the cache; offline --
``HF_HUB_OFFLINE=1``, or no connection -- the cached copy is used, and when there is
none the error names the repository and file and says how to fetch them. The cache is
``HF_HUB_CACHE`` (or ``$HF_HOME/hub``) as set when the call is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from saehooks.errors import InputError, SAENotFoundError

PREFIX = "hf://"
_TRUE = ("1", "true", "yes", "on")


class HubLocation(NamedTuple):
    """A parsed ``hf://`` address."""

    repo_id: str
    """``"<owner>/<repo>"``."""
    revision: str | None
    """Branch, tag or commit after ``@``; None for the default branch."""
    folder: str
    """Path of the SAE's folder inside the repository; ``""`` for its root."""


def is_hub_url(path_or_name: object) -> bool:
    """True for a string starting with ``hf://``."""
    return isinstance(path_or_name, str) and path_or_name.startswith(PREFIX)


def parse(url: str) -> HubLocation:
    """Split ``hf://owner/repo@rev/some/folder`` into its parts.

    Raises:
        InputError: not of the form ``hf://<owner>/<repo>[/<folder>]``.
    """
    parts = [p for p in url.removeprefix(PREFIX).split("/") if p]
    if not is_hub_url(url) or len(parts) < 2:
        raise InputError(
            f"{url!r} is not a hub address; write hf://<owner>/<repo>/<folder>, "
            "e.g. hf://jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre"
        )
    name, _, revision = parts[1].partition("@")
    return HubLocation(f"{parts[0]}/{name}", revision or None, "/".join(parts[2:]))


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set now (or was when huggingface_hub loaded)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def cache_dir() -> str | None:
    """The hub cache named by ``HF_HUB_CACHE`` / ``HF_HOME`` now; None: the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _download_hint(loc: HubLocation) -> str:
    include = f" --include '{loc.folder}/*'" if loc.folder else ""
    revision = f" --revision {loc.revision}" if loc.revision else ""
    return (
        f"download it where the Hub is reachable with `hf download {loc.repo_id}"
        f"{include}{revision}` (or huggingface_hub.snapshot_download) and copy that "
        "cache here, or point HF_HUB_CACHE at it"
    )


def resolve(url: str) -> Path:
    """The local folder holding the SAE at ``url``, downloading it when online.

    Args:
        url: ``hf://<owner>/<repo>[@<revision>]/<folder>``.

    Returns:
        The folder inside the hub cache's snapshot.

    Raises:
        InputError: a malformed address.
        ImportError: ``huggingface_hub`` is not installed.
        SAENotFoundError: not cached and cannot be downloaded (offline, no
            connection, no such repository or folder); the message says what to
            download.
    """
    loc = parse(url)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(
            f"loading {url} needs huggingface_hub: pip install huggingface_hub"
        ) from exc
    is_offline = offline()
    cache = cache_dir()
    where = cache or "the default Hugging Face cache"
    try:
        root = snapshot_download(
            loc.repo_id,
            revision=loc.revision,
            allow_patterns=[f"{loc.folder}/*"] if loc.folder else None,
            cache_dir=cache,
            local_files_only=is_offline,
        )
    except Exception as exc:  # huggingface_hub's own error types vary between versions
        reason = (
            "HF_HUB_OFFLINE is set"
            if is_offline
            else f"the Hub could not be used ({type(exc).__name__}: {exc})"
        )
        raise SAENotFoundError(
            f"{url}: not in {where} and {reason}; {_download_hint(loc)}"
        ) from exc
    folder = Path(root) / loc.folder
    if not folder.is_dir() or not any(folder.iterdir()):
        raise SAENotFoundError(
            f"{url}: the cached snapshot {root} has no folder {loc.folder!r}; {_download_hint(loc)}"
        )
    return folder


def _file_hint(repo_id: str, filename: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"fetch it where the Hub is reachable with `hf download {repo_id} {filename}{rev}` "
        "(or huggingface_hub.hf_hub_download) and copy that cache here, or point "
        "HF_HUB_CACHE at a cache that has it"
    )


def download(
    repo_id: str, filename: str, revision: str | None = None, required: bool = True
) -> Path | None:
    """The local path of one file of a Hub repository, downloading it when online.

    Source: ``huggingface_hub.hf_hub_download`` (``local_files_only`` when
    :func:`offline`; cache from :func:`cache_dir`).

    Args:
        repo_id: ``"<owner>/<repo>"``.
        filename: path of the file inside the repository, e.g.
            ``"blocks.8.hook_resid_pre/cfg.json"``.
        revision: branch, tag or commit (default: the default branch).
        required: when False, a file that cannot be had gives None instead of an
            error (an optional file such as SAELens' ``sparsity.safetensors``; offline,
            a file that was never cached counts as absent).

    Returns:
        The path of the file in the hub cache's snapshot, or None (see ``required``).

    Raises:
        ImportError: ``huggingface_hub`` is not installed.
        SAENotFoundError: ``required`` and the file is not cached and cannot be
            downloaded (offline, no connection, no such repository, revision or file);
            the message names the repository and the file and says how to fetch them.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:
        raise ImportError(
            f"downloading {filename} from {repo_id} needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from exc
    is_offline = offline()
    cache = cache_dir()
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache, local_files_only=is_offline
            )
        )
    except Exception as exc:  # huggingface_hub's own error types vary between versions
        if not required:
            return None
        where = cache or "the default Hugging Face cache"
        missing = isinstance(exc, EntryNotFoundError) and not isinstance(
            exc, LocalEntryNotFoundError
        )
        if missing:
            raise SAENotFoundError(
                f"the Hub repository {repo_id} has no file {filename!r}"
                f"{f' at revision {revision}' if revision else ''}; check "
                "the name (or, for a SAELens release, whether the "
                "registry is out of date)"
            ) from exc
        if is_offline:
            reason = f"it is not in {where} and HF_HUB_OFFLINE is set"
        else:
            reason = (
                f"it is not in {where} and the Hub could not be used "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            )
        raise SAENotFoundError(
            f"needed file {filename!r} of the Hub repository {repo_id}: "
            f"{reason}; {_file_hint(repo_id, filename, revision)}"
        ) from exc
