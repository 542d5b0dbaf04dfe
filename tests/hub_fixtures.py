"""A local Hugging Face hub cache written by the tests, and a test SAELens registry.

The cache layout is the one ``huggingface_hub`` reads offline (``hf_hub_download`` and
``snapshot_download`` with ``local_files_only``)::

    <cache>/models--<owner>--<repo>/refs/main              the commit hash of "main"
    <cache>/models--<owner>--<repo>/snapshots/<commit>/... the repository's files

(real caches store each file once under ``blobs/`` and link to it from the snapshot;
``huggingface_hub`` only needs the snapshot path to exist, so plain files are used).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from saehooks.io import registry


class HubCache:
    """A hub cache in a folder; :meth:`add` puts files into a repository's ``main``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def snapshot(self, repo_id: str) -> Path:
        """The ``main`` snapshot folder of ``repo_id`` (created with its ref)."""
        repo = self.root / ("models--" + repo_id.replace("/", "--"))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        folder = repo / "snapshots" / commit
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add(self, repo_id: str, filename: str, data: bytes | str | dict) -> Path:
        """Write ``data`` (bytes, text, or a dict written as JSON) as ``filename``."""
        path = self.snapshot(repo_id) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, dict):
            data = json.dumps(data)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def add_safetensors(self, repo_id: str, filename: str, tensors: dict[str, torch.Tensor]):
        from safetensors.torch import save

        return self.add(repo_id, filename, save({k: v.contiguous() for k, v in tensors.items()}))

    def add_npz(self, repo_id: str, filename: str, arrays: dict[str, Any]) -> Path:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        return self.add(repo_id, filename, buffer.getvalue())

    def add_torch(self, repo_id: str, filename: str, state: dict[str, Any]) -> Path:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return self.add(repo_id, filename, buffer.getvalue())


def offline_hub_cache(tmp_path, monkeypatch) -> HubCache:
    """An empty offline hub cache: HF_HOME / HF_HUB_CACHE point at it, HF_HUB_OFFLINE=1,
    and the shipped SAELens registry is in use. Wrap it in a fixture:
    ``hub_cache = pytest.fixture(lambda tmp_path, monkeypatch: offline_hub_cache(...))``."""
    home = tmp_path / "hf_home"
    cache = HubCache(home / "hub")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    return cache


def use_registry(monkeypatch, path: Path, releases: dict[str, dict[str, Any]]) -> None:
    """Write a registry of ``releases`` (the shipped file's layout) to ``path`` and use it.

    ``releases``: name -> ``{"repo_id", "model", "conversion", "overrides"?, "saes":
    [[id, path?, neuronpedia?, norm_scaling_factor?], ...]}``.
    """
    data = {"format": registry.FORMAT, "source": "test registry", "releases": releases}
    path.write_text(json.dumps(data))
    monkeypatch.setenv(registry.ENV_VAR, str(path))
