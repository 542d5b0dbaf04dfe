"""Which activation store a run reads, what every store offers the trainer, and the
stores over materialised activations.

* the live store runs the model (:mod:`.activation_store`: :class:`TokenSource`,
  :class:`ActivationStore`);
* :class:`CachedActivationStore` reads an on-disk cache written by
  :func:`~saehooks.training.activation_cache.cache_activations` (``saehooks cache``),
  memory-mapped; :class:`TensorStore` reads a float tensor ``[n, d_in]``. Both serve the
  same seeded stream of global batches on every rank and split each batch between the
  ranks (:class:`ShardedRows`).

:func:`make_store` picks one from a run's config; :class:`Store` is what the trainer
relies on.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from saehooks import distributed, tl
from saehooks.checks import check_finite_tensor, check_int, check_positive_int
from saehooks.errors import InputError, InputTypeError, SAEFileError, SAENotFoundError
from saehooks.training.activation_cache import (
    CACHE_INFO,
    cache_activations,
    model_fingerprint,
    read_cache_info,
    shard_file,
)
from saehooks.training.activation_store import ActivationStore, TokenSource
from saehooks.training.config import TrainConfig
from saehooks.training.device import to_training_device, training_device

_SAFETENSORS_DTYPES = {"F32": (np.float32, None), "F16": (np.float16, None)}
_SAFETENSORS_DTYPES["BF16"] = (np.uint16, torch.bfloat16)  # numpy has no bfloat16


class Store(Protocol):
    """What the trainer needs from an activation store (the live store, the cache, a
    tensor, or a test's stand-in). A store may also have ``context``: ``(context_size,
    prepend_bos)`` of its token rows, recorded in the trained SAE's metadata."""

    d_in: int
    """Width of the activations."""

    def next_batch(self) -> Tensor:
        """The next shuffled batch ``[batch_size, d_in]`` of raw activations."""
        ...

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, JSON values)`` to resume exactly where it stands."""
        ...

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        ...


class ShardedRows:
    """Rows of several 2-D shards served as shuffled batches, in epochs, split by rank.

    Each epoch visits the shards in a seeded random order, ``shards_per_group`` at a
    time; the rows of a group are served in a seeded random permutation (only the
    permutation is held: rows are gathered from the shards batch by batch; the streams
    of the old in-memory cache reader, for the same seed, are the same). The global
    stream of batches of ``batch_size`` rows is the same on every rank; rank ``r`` of
    ``w`` serves rows ``[r·B/w, (r+1)·B/w)`` of each and reads only those, so ``w`` ranks
    together see exactly what one process sees. The state ``(epoch, group, offset)`` is
    the global stream's, the same on every rank.

    Subclasses give the shard sizes and :meth:`open_shard`.

    Args:
        sizes: rows per shard (each >= 1).
        batch_size: rows per global batch (``B``).
        seed: seed of the shard order and of the permutations.
        shards_per_group: shards mixed together.
        device: where batches are served (default: the CPU).
        rank, world_size: this process's rank and the number of ranks (default:
            :func:`saehooks.distributed.rank` / :func:`~saehooks.distributed.world_size`).

    Raises:
        InputError: ``batch_size`` is not divisible by ``world_size``; no rows.
    """

    kind = "rows"
    rank_batches = True
    """:meth:`next_batch` returns this rank's rows of the global batch."""
    rank_state = False
    """The state is the global stream's, identical on every rank."""

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        seed: int,
        shards_per_group: int,
        device: str | torch.device | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = check_int(seed, "seed", minimum=0)
        self.shards_per_group = check_positive_int(shards_per_group, "shards_per_group")
        self.world = distributed.world_size() if world_size is None else world_size
        self.world = check_positive_int(self.world, "world_size")
        self.rank = check_int(
            distributed.rank() if rank is None else rank, "rank", minimum=0, maximum=self.world - 1
        )
        if self.batch_size % self.world:
            raise InputError(
                f"a global batch of {self.batch_size} rows cannot be split evenly over "
                f"{self.world} ranks; pass a batch_size divisible by {self.world}"
            )
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise InputError(f"no rows to serve (shard sizes {self.sizes[:8]})")
        self.n_rows = sum(self.sizes)
        self.device = torch.device("cpu" if device is None else device)
        self.epoch, self.group, self.offset = 0, 0, 0
        self._loaded: tuple[int, int] | None = None

    def open_shard(self, index: int) -> Tensor:
        """Shard ``index`` as a 2-D tensor (memory-mapped where it lives on disk)."""
        raise NotImplementedError

    def _groups_per_epoch(self) -> int:
        return -(-len(self.sizes) // self.shards_per_group)

    def _load_group(self) -> None:
        base = self.seed * 1_000_003 + self.epoch
        order = torch.randperm(len(self.sizes), generator=torch.Generator().manual_seed(base))
        start = self.group * self.shards_per_group
        ids = order[start : start + self.shards_per_group].tolist()
        self._before = sum(self.sizes[i] for i in order[:start].tolist())
        self._shards = [self.open_shard(i) for i in ids]
        bounds = torch.tensor([0] + [self.sizes[i] for i in ids]).cumsum(0)
        self._bounds = bounds
        gen = torch.Generator().manual_seed(base * 7919 + self.group)
        self._perm = torch.randperm(int(bounds[-1]), generator=gen)
        self._loaded = (self.epoch, self.group)

    def _gather(self, index: Tensor) -> Tensor:
        if len(self._shards) == 1:
            return self._shards[0][index].float()
        which = torch.searchsorted(self._bounds[1:], index, right=True)
        out = torch.empty(index.shape[0], self._shards[0].shape[1], dtype=torch.float32)
        for j in which.unique().tolist():
            mask = which == j
            out[mask] = self._shards[j][index[mask] - self._bounds[j]].float()
        return out

    def next_batch(self) -> Tensor:
        """This rank's rows of the next global batch: ``[batch_size / world_size, d_in]``
        float32 on :attr:`device`."""
        lo = self.rank * self.batch_size // self.world
        hi = lo + self.batch_size // self.world
        parts, pos = [], 0
        while pos < self.batch_size:
            if self._loaded != (self.epoch, self.group):
                self._load_group()
            take = self._perm[self.offset : self.offset + self.batch_size - pos]
            a, b = max(lo - pos, 0), min(hi - pos, take.shape[0])
            if a < b:
                parts.append(self._gather(take[a:b]))
            pos += take.shape[0]
            self.offset += take.shape[0]
            if self.offset >= self._perm.shape[0]:
                self.offset, self.group = 0, self.group + 1
                if self.group >= self._groups_per_epoch():
                    self.group, self.epoch = 0, self.epoch + 1
                self._shards, self._loaded = [], None
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        return to_training_device(batch, self.device)

    @property
    def epochs_done(self) -> float:
        """Epochs served so far (fractional)."""
        if self._loaded != (self.epoch, self.group):
            self._load_group()
        return self.epoch + (self._before + self.offset) / self.n_rows

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``({}, {"kind", "rows", "epoch", "group", "offset"})``, the same on every rank."""
        return {}, {"kind": self.kind, "rows": self.n_rows, "epoch": self.epoch,
                    "group": self.group, "offset": self.offset}  # fmt: skip

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (at any world size).

        Raises:
            InputError: the state of another kind of store (a run started on live
                activations resumed from a cache, or the reverse).
        """
        if values.get("kind") != self.kind:
            raise InputError(
                f"this run's checkpoint holds the state of a {values.get('kind')!r} store, "
                f"not of a {self.kind!r} one: resume with the data the run started with"
            )
        if values.get("rows", self.n_rows) != self.n_rows:
            raise InputError(
                f"this run's checkpoint was made on {values['rows']} rows of activations, "
                f"these hold {self.n_rows}: resume with the data the run started with"
            )
        self.epoch, self.group = int(values["epoch"]), int(values["group"])
        self.offset, self._loaded = int(values["offset"]), None


def _shard_layout(path: Path) -> tuple[str, list[int], int]:
    """``(safetensors dtype, shape, byte offset of the data)`` of the ``acts`` tensor."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            entry = json.loads(f.read(n))["acts"]
        begin, end = entry["data_offsets"]
        dtype, shape = entry["dtype"], [int(s) for s in entry["shape"]]
        itemsize = np.dtype(_SAFETENSORS_DTYPES[dtype][0]).itemsize
        ok = len(shape) == 2 and end - begin == shape[0] * shape[1] * itemsize
    except FileNotFoundError:
        raise SAEFileError(f"{path}: shard missing; write the cache again") from None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise SAEFileError(f"{path}: not a cache shard ({exc}); write the cache again") from exc
    if not ok or path.stat().st_size < 8 + n + end:
        raise SAEFileError(f"{path}: truncated or malformed shard; write the cache again")
    return dtype, shape, 8 + n + begin


class CachedActivationStore(ShardedRows):
    """Shuffled batches from an on-disk activation cache (see :class:`ShardedRows`).

    Shards are memory-mapped; a batch reads only its rows, so memory holds one group's
    permutation, not the shards. Reads caches written by
    :func:`~saehooks.training.activation_cache.cache_activations`
    (any storage dtype; served as float32) and older ones without a shard list.

    Args:
        cache_dir: the folder of one hook's cache (holding ``cache.json``).
        batch_size: rows per global batch.
        seed: seed of the shard order and shuffling.
        shards_per_group: shards mixed together.
        context: ``(context_size, prepend_bos)`` of the token rows the cache was made
            from, for a trained SAE's metadata (default: the manifest's).
        device, rank, world_size: see :class:`ShardedRows`.

    Raises:
        SAENotFoundError: the folder holds no finished cache.
        SAEFileError: a shard is missing, truncated, or disagrees with the manifest.
        InputError: see :class:`ShardedRows`.
    """

    kind = "cache"

    def __init__(
        self,
        cache_dir: str | Path,
        batch_size: int = 4096,
        seed: int = 0,
        shards_per_group: int = 4,
        context: tuple[int, bool | None] | None = None,
        device: str | torch.device | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        info = read_cache_info(self.cache_dir)
        if info is None:
            raise SAENotFoundError(
                f"{self.cache_dir} holds no finished activation cache ({CACHE_INFO} "
                "missing); write one with `saehooks cache` or cache_activations"
            )
        self.info, self.d_in, self.hook_name = info, int(info["d_in"]), info["hook_name"]
        files = [s["file"] for s in info["shards"]] if "shards" in info else None
        files = files or [shard_file(i) for i in range(int(info["n_shards"]))]
        self._layouts = [_shard_layout(self.cache_dir / f) for f in files]
        self._files = files
        listed = [s["tokens"] for s in info.get("shards", [])] or None
        sizes = [shape[0] for _, shape, _ in self._layouts]
        if any(shape[1] != self.d_in for _, shape, _ in self._layouts) or (
            listed is not None and listed != sizes
        ):
            raise SAEFileError(
                f"{self.cache_dir}: shards disagree with {CACHE_INFO} (rows or width); "
                "write the cache again"
            )
        super().__init__(sizes, batch_size, seed, shards_per_group, device, rank, world_size)
        self.context = context or (info.get("context_size"), info.get("prepend_bos"))
        """``(context_size, prepend_bos)`` of the cached rows (None where unknown)."""
        self.norm_scale: float | None = info.get("norm_scale")
        """``sqrt(d_in) / E‖x‖`` over the cache (None for caches that predate it)."""

    def open_shard(self, index: int) -> Tensor:
        dtype, shape, start = self._layouts[index]
        np_dtype, torch_view = _SAFETENSORS_DTYPES[dtype]
        path = self.cache_dir / self._files[index]
        array = np.memmap(path, dtype=np_dtype, mode="c", offset=start, shape=tuple(shape))
        tensor = torch.from_numpy(array)
        return tensor.view(torch_view) if torch_view is not None else tensor


def check_activation_tensor(acts: Any, name: str = "activations") -> Tensor:
    """``acts`` if it is a finite floating-point ``[n >= 1, d_in >= 1]`` tensor.

    Raises:
        InputTypeError: not a tensor, or not floating point (token ids go to a model).
        InputError: not 2-d, empty, or NaN / infinite values (the message counts them).
    """
    if not isinstance(acts, Tensor) or not acts.dtype.is_floating_point:
        got = acts.dtype if isinstance(acts, Tensor) else type(acts).__name__
        raise InputTypeError(
            f"{name} must be a floating-point tensor [n, d_in] of activations, got {got}; "
            "token ids need a model (train_sae(model, tokens, cfg))"
        )
    if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] == 0:
        raise InputError(
            f"{name} must be [n >= 1, d_in >= 1], got shape {tuple(acts.shape)}; flatten "
            "[batch, pos, d_in] activations with acts.reshape(-1, d_in)"
        )
    return check_finite_tensor(acts, name).detach()


class TensorStore(ShardedRows):
    """Shuffled batches from activations in memory: a float tensor ``[n, d_in]`` (any
    floating dtype, on any device; served as float32 on :attr:`device`), in seeded
    epochs, split across ranks like the cache (see :class:`ShardedRows`). The tensor is
    not copied.

    Args:
        acts: activations ``[n, d_in]``.
        batch_size: rows per global batch.
        seed: seed of each epoch's permutation.
        device, rank, world_size: see :class:`ShardedRows`.

    Raises:
        InputTypeError: not a floating-point tensor.
        InputError: not ``[n >= 1, d_in >= 1]``, or NaN / infinite values.
    """

    kind = "tensor"
    context = None
    """No token rows behind the activations."""

    def __init__(
        self,
        acts: Tensor,
        batch_size: int = 4096,
        seed: int = 0,
        device: str | torch.device | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.acts = check_activation_tensor(acts)
        self.d_in = int(self.acts.shape[1])
        super().__init__([self.acts.shape[0]], batch_size, seed, 1, device, rank, world_size)

    def open_shard(self, index: int) -> Tensor:
        return self.acts


def cache_folder(cache_dir: str, hook_name: str) -> Path:
    """``cache_dir`` if it holds a cache, else ``cache_dir/<hook_name>`` if that does (a
    ``saehooks cache`` root), else ``cache_dir`` (where a new cache goes)."""
    root = Path(cache_dir)
    if not (root / CACHE_INFO).is_file() and (root / hook_name / CACHE_INFO).is_file():
        return root / hook_name
    return root


def _check_cache_matches(info: dict, folder: Path, model: nn.Module | None, cfg) -> None:
    if info["hook_name"] != cfg.hook_name:
        raise InputError(
            f"cache_dir {str(folder)!r} holds activations of {info['hook_name']!r}, not of "
            f"hook_name {cfg.hook_name!r}; point cache_dir at a cache of {cfg.hook_name!r} "
            "(saehooks cache writes one folder per hook) or at an empty folder"
        )
    if bool(info.get("drop_bos", True)) != cfg.drop_bos:
        raise InputError(
            f"the cache in {str(folder)!r} was written with drop_bos={info.get('drop_bos')}, "
            f"the config says drop_bos={cfg.drop_bos}; pass drop_bos={info.get('drop_bos')} "
            "(--drop-bos / --no-drop-bos) or another cache_dir"
        )
    if model is not None and info.get("model_fingerprint") != model_fingerprint(model):
        raise InputError(
            f"the cache in {str(folder)!r} was written from other model weights "
            f"({info.get('model_name')!r}, fingerprint {info.get('model_fingerprint')}); "
            "train with that model, with model=None to train from the cache as it is, or "
            "pick another cache_dir"
        )


def _source_context(model: nn.Module, token_source: Any, cfg: TrainConfig) -> tuple:
    tokenizer = getattr(model, "tokenizer", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    source = (
        token_source
        if isinstance(token_source, TokenSource)
        else TokenSource(token_source, tokenizer, cfg.context_size, bos_id)
    )
    n_ctx, prepend_bos = source.context(bos_id)
    return (n_ctx or cfg.context_size, prepend_bos)


def _check_trainable_hook(model: nn.Module, hook_name: str) -> None:
    tl.check_hook_runs(model, hook_name)
    if tl.is_per_head(model, hook_name):
        layer = tl.block_index(hook_name)
        raise InputError(
            f"{hook_name!r} holds per-head activations [batch, pos, n_heads, d_head]; "
            f"train on a [batch, pos, d_model] hook such as 'blocks.{layer}.hook_attn_out'"
        )


def make_store(model: nn.Module | None, token_source: Any, cfg: TrainConfig) -> Store:
    """The activation store of a run, on the training device
    (:func:`~saehooks.training.device.training_device`):

    * ``token_source`` a float tensor ``[n, d_in]`` of activations: a
      :class:`TensorStore` (``model`` may be None);
    * ``cfg.cache_dir`` holding a finished cache of ``cfg.hook_name`` (the hook's folder,
      or a ``saehooks cache`` root with a ``<hook_name>/`` folder): a
      :class:`CachedActivationStore`, with no model forward (``model`` and
      ``token_source`` may be None; a given model must be the one the cache was made
      from);
    * ``cfg.cache_dir`` without one, or with fewer than ``cfg.cache_tokens`` tokens (of a
      source not yet exhausted): the cache is written first (one pass over a finite
      source, else ``cfg.cache_tokens`` or ``cfg.total_tokens``), then read;
    * otherwise the live :class:`~saehooks.training.activation_store.ActivationStore`.

    Reads ``hook_name``, ``batch_size`` (the global batch: with several ranks each
    serves its share), ``buffer_tokens``, ``model_batch_rows``, ``drop_bos``, ``seed``,
    ``context_size``, ``device``, ``cache_dir``, ``cache_tokens``, ``shard_tokens``,
    ``total_tokens`` and ``progress_bar``.

    Raises:
        HookNameError: the model has no such hook, or it carries no activation.
        InputError: a per-head hook (SAEs train on ``[batch, pos, d]`` activations);
            activations whose width differs from the hook's; a cache of another hook,
            model or ``drop_bos``; ``model=None`` without activations or a finished cache.
        InputTypeError, InputError: a bad token source (see :class:`ActivationStore`) or
            activation tensor (see :class:`TensorStore`).
        DeviceError: ``cfg.device`` is not on this machine.
    """
    device = training_device(model, cfg)
    if isinstance(token_source, Tensor) and token_source.dtype.is_floating_point:
        store = TensorStore(token_source, cfg.batch_size, cfg.seed, device=device)
        if model is not None:
            _check_trainable_hook(model, cfg.hook_name)
            width = tl.hook_width(model, cfg.hook_name)
            if width is not None and width != store.d_in:
                raise InputError(
                    f"the activations are {store.d_in} wide, the model's {cfg.hook_name!r} "
                    f"is {width}; pass activations of that hook, or model=None"
                )
        return store
    if model is not None:
        _check_trainable_hook(model, cfg.hook_name)
    folder = cache_folder(cfg.cache_dir, cfg.hook_name) if cfg.cache_dir else None
    info = read_cache_info(folder) if folder is not None else None
    if folder is not None and info is not None:
        _check_cache_matches(info, folder, model, cfg)
        short = cfg.cache_tokens and info["n_tokens"] < cfg.cache_tokens
        if not short or info.get("source_exhausted") or model is None or token_source is None:
            context = None  # caches of older versions do not say whether rows start with BOS
            if info.get("prepend_bos") is None and model is not None and token_source is not None:
                context = _source_context(model, token_source, cfg)
            return CachedActivationStore(
                folder, cfg.batch_size, cfg.seed, context=context, device=device
            )
    if model is None and isinstance(token_source, Tensor):
        raise InputError(
            f"a {token_source.dtype} tensor without a model: token ids need the model "
            "that reads them, train_sae(model, tokens, cfg); activations must be a float "
            "tensor [n, d_in], train_sae(acts.float(), cfg)"
        )
    if model is None or token_source is None:
        where = f"cache_dir {cfg.cache_dir!r} holds no finished cache of {cfg.hook_name!r}"
        raise InputError(
            (where if cfg.cache_dir else "no model or no token source")
            + "; pass a model and token rows, a float tensor [n, d_in] of activations, or "
            f"a cache_dir written by `saehooks cache --hooks {cfg.hook_name} --out DIR`"
        )
    live = ActivationStore(
        model,
        token_source,
        cfg.hook_name,
        cfg.batch_size,
        cfg.buffer_tokens,
        cfg.model_batch_rows,
        cfg.drop_bos,
        cfg.seed,
        cfg.context_size,
        device=device,
    )
    if folder is None:
        return live
    finite = live.source.finite_rows is not None
    n_cache = cfg.cache_tokens or (None if finite else cfg.total_tokens)
    amount = "every token of the source" if n_cache is None else f"{n_cache:,} tokens"
    width = tl.hook_width(model, cfg.hook_name)
    warnings.warn(
        f"no finished activation cache of {cfg.hook_name!r} at {str(folder)!r}: writing one "
        f"there first ({amount}, {4 * (width or 0):,} bytes each; cache_tokens= / "
        "--cache-tokens caps it), then training from it",
        stacklevel=2,
    )
    cache_activations(
        model,
        live.source,
        [cfg.hook_name],
        folder,
        n_cache,
        shard_tokens=cfg.shard_tokens,
        model_batch_rows=cfg.model_batch_rows,
        drop_bos=cfg.drop_bos,
        seed=cfg.seed,
        context_size=cfg.context_size,
        progress=cfg.progress_bar,
        folder_per_hook=False,
    )
    return CachedActivationStore(
        folder, cfg.batch_size, cfg.seed, context=live.context, device=device
    )
