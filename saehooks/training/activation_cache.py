"""On-disk activation caches: safetensors shards written once, read in shuffled epochs.

Several SAEs (different objectives, seeds, widths) can train on the same activations
without rerunning the model; memory stays bounded by one group of shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import tl
from saehooks.checks import check_int, check_positive_int
from saehooks.errors import InputError, SAENotFoundError
from saehooks.io.common import atomic_write_text, read_safetensors, write_safetensors
from saehooks.training.activation_store import ActivationStore

CACHE_INFO = "cache.json"


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of the model's weights: Σ|w| per parameter, hashed."""
    sums = ",".join(f"{float(p.detach().double().abs().sum()):.6e}" for p in model.parameters())
    return hashlib.sha256(sums.encode()).hexdigest()[:16]


def write_activation_cache(
    store: ActivationStore,
    cache_dir: str | Path,
    n_tokens: int | None,
    shard_tokens: int = 65536,
    progress: bool = True,
) -> Path:
    """Write ``n_tokens`` activations of ``store`` into safetensors shards.

    Shards (``shard_00000.safetensors`` with one tensor ``acts [n, d_in]``) are written
    atomically one by one; ``cache.json`` (hook, width, token count, model) is written
    last, so a folder without it is an unfinished cache and is overwritten. Memory is
    bounded by the store's buffer plus one shard.

    Args:
        store: a live store (its shuffling mixes sequences before they reach disk).
        cache_dir: target folder.
        n_tokens: activations to write; None for one pass over a finite source.
        shard_tokens: activations per shard.
        progress: show a tqdm bar.

    Returns:
        ``cache_dir`` as a Path.

    Raises:
        InputError: ``n_tokens=None`` with a source of unknown length.
    """
    from tqdm.auto import tqdm

    shard_tokens = check_positive_int(shard_tokens, "shard_tokens")
    if n_tokens is not None:
        n_tokens = check_positive_int(n_tokens, "n_tokens")
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_INFO).unlink(missing_ok=True)
    for old in out.glob("shard_*.safetensors"):
        old.unlink()
    row_limit = None
    if n_tokens is None:
        row_limit = store.source.finite_rows
        if row_limit is None:
            raise InputError(
                "pass n_tokens for a token source of unknown length (an "
                "iterable or a text folder): how many activations to cache"
            )
        row_limit += store.source.rows_served
    target = n_tokens if n_tokens is not None else -1
    pool = torch.empty(0, store.d_in, device=getattr(store, "device", "cpu"))
    written, n_shards, source_done = 0, 0, False
    bar = tqdm(total=n_tokens, unit="tok", disable=not progress, desc=f"caching {store.hook_name}")
    while True:
        enough = target >= 0 and written + pool.shape[0] >= target
        if row_limit is not None and store.source.rows_served >= row_limit:
            source_done = True
        if not (enough or source_done):
            max_rows = None if row_limit is None else row_limit - store.source.rows_served
            try:
                pool = torch.cat([pool, store.fresh_activations(max_rows)])
            except StopIteration:
                source_done = True
            continue_filling = pool.shape[0] < 2 * shard_tokens
            if continue_filling and not source_done:
                continue
        if pool.shape[0] == 0:
            break
        pool = pool[torch.randperm(pool.shape[0], generator=store.generator).to(pool.device)]
        want = shard_tokens if target < 0 else min(shard_tokens, target - written)
        shard, pool = pool[:want], pool[want:]
        write_safetensors(out / f"shard_{n_shards:05d}.safetensors", {"acts": shard})
        n_shards += 1
        written += shard.shape[0]
        bar.update(shard.shape[0])
        if target >= 0 and written >= target:
            break
        if (enough or source_done) and pool.shape[0] == 0:
            break
    bar.close()
    info = {
        "hook_name": store.hook_name,
        "d_in": store.d_in,
        "n_tokens": written,
        "n_shards": n_shards,
        "shard_tokens": shard_tokens,
        "model_name": tl.model_name(store.model),
        "model_fingerprint": model_fingerprint(store.model),
        "model_processing": tl.model_processing(store.model),
        "drop_bos": store.drop_bos,
        "rows_read": store.source.rows_served,
    }
    atomic_write_text(out / CACHE_INFO, json.dumps(info, indent=2) + "\n")
    return out


def read_cache_info(cache_dir: str | Path) -> dict[str, Any] | None:
    """``cache.json`` of a finished cache, or None if there is none."""
    path = Path(cache_dir) / CACHE_INFO
    return json.loads(path.read_text()) if path.is_file() else None


class CachedActivationStore:
    """Shuffled batches from an on-disk activation cache, in epochs.

    Each epoch visits the shards in a random order, ``shards_per_group`` at a time;
    a group is concatenated and shuffled, then served. Memory holds one group. The
    state is ``(epoch, group, offset)``: a resumed store reloads its group and goes
    on exactly where it stopped.

    Args:
        cache_dir: folder written by :func:`write_activation_cache`.
        batch_size: activations per batch.
        seed: seed of the shard order and shuffling.
        shards_per_group: shards mixed together.
        context: ``(context_size, prepend_bos)`` of the token rows the cache was made
            from (see ``ActivationStore.context``), for a trained SAE's metadata; None
            if unknown.

    Raises:
        SAENotFoundError: the folder holds no finished cache.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        batch_size: int = 4096,
        seed: int = 0,
        shards_per_group: int = 4,
        context: tuple[int, bool | None] | None = None,
    ) -> None:
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_int(seed, "seed", minimum=0)
        shards_per_group = check_positive_int(shards_per_group, "shards_per_group")
        self.cache_dir = Path(cache_dir)
        info = read_cache_info(self.cache_dir)
        if info is None:
            raise SAENotFoundError(
                f"{self.cache_dir} holds no finished activation cache "
                f"({CACHE_INFO} missing); write one with "
                "write_activation_cache"
            )
        self.info, self.d_in, self.hook_name = info, int(info["d_in"]), info["hook_name"]
        self.batch_size, self.seed, self.shards_per_group = batch_size, seed, shards_per_group
        self.n_shards = int(info["n_shards"])
        self.epoch, self.group, self.offset = 0, 0, 0
        self._data: Tensor | None = None
        self.context = context
        """``(context_size, prepend_bos)`` of the cached rows, or None if unknown."""

    def _groups_per_epoch(self) -> int:
        return -(-self.n_shards // self.shards_per_group)

    def _load_group(self) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_shards, generator=gen)
        ids = order[self.group * self.shards_per_group : (self.group + 1) * self.shards_per_group]
        data = torch.cat(
            [
                read_safetensors(self.cache_dir / f"shard_{int(i):05d}.safetensors")["acts"].float()
                for i in ids
            ]
        )
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 7919 + self.group
        )
        return data[torch.randperm(data.shape[0], generator=gen)]

    def next_batch(self) -> Tensor:
        """A shuffled batch ``[batch_size, d_in]`` (float32)."""
        parts, need = [], self.batch_size
        while need:
            if self._data is None:
                self._data = self._load_group()
            take = self._data[self.offset : self.offset + need]
            parts.append(take)
            need -= take.shape[0]
            self.offset += take.shape[0]
            if self.offset >= self._data.shape[0]:
                self._data, self.offset = None, 0
                self.group += 1
                if self.group >= self._groups_per_epoch():
                    self.group, self.epoch = 0, self.epoch + 1
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def epochs_done(self) -> float:
        """Fractional epochs served so far."""
        return self.epoch + self.group / self._groups_per_epoch()

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {
            "kind": "cache",
            "epoch": self.epoch,
            "group": self.group,
            "offset": self.offset,
        }

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        self.epoch, self.group = int(values["epoch"]), int(values["group"])
        self.offset, self._data = int(values["offset"]), None
