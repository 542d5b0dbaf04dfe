"""Which activation store a run reads, and what every store offers the trainer.

The stores themselves live in two modules, one idea each: the live store that runs
the model (:mod:`.activation_store`: :class:`TokenSource`, :class:`ActivationStore`)
and the on-disk cache (:mod:`.activation_cache`: :func:`write_activation_cache`,
:class:`CachedActivationStore`). They stay apart because they are used apart (a
cache is written once and read by many runs) and together they would pass the
package's ~400-line module size. This module holds what joins them: the
:class:`Store` interface the trainer relies on and :func:`make_store`.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from saehooks import tl
from saehooks.errors import InputError
from saehooks.training.activation_cache import (
    CachedActivationStore,
    model_fingerprint,
    read_cache_info,
    write_activation_cache,
)
from saehooks.training.activation_store import ActivationStore
from saehooks.training.config import TrainConfig
from saehooks.training.device import training_device


class Store(Protocol):
    """What the trainer needs from an activation store (the live store, the cache, or
    a test's stand-in). A store may also have ``context``: ``(context_size,
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


def make_store(
    model: nn.Module, token_source: Any, cfg: TrainConfig
) -> ActivationStore | CachedActivationStore:
    """The activation store of a run: live, or over the on-disk cache of ``cfg.cache_dir``
    (written first if missing, too small, or made for another hook or model).

    A live store keeps its buffer on the training device
    (:func:`~saehooks.training.device.training_device`). Reads ``hook_name``,
    ``batch_size``, ``buffer_tokens``, ``model_batch_rows``, ``drop_bos``, ``seed``,
    ``context_size``, ``device``, ``cache_dir``, ``cache_tokens``, ``shard_tokens``,
    ``total_tokens`` and ``progress_bar``.

    Raises:
        HookNameError: the model has no such hook, or it carries no activation.
        InputError: a per-head hook (``attn.hook_z`` ...): SAEs train on
            ``[batch, pos, d]`` activations.
        InputTypeError, InputError: a bad token source (see :class:`ActivationStore`).
        DeviceError: ``cfg.device`` is not on this machine.
    """
    tl.check_hook_runs(model, cfg.hook_name)
    if tl.is_per_head(model, cfg.hook_name):
        layer = tl.block_index(cfg.hook_name)
        raise InputError(
            f"{cfg.hook_name!r} holds per-head activations [batch, pos, n_heads, d_head]; "
            f"train on a [batch, pos, d_model] hook such as 'blocks.{layer}.hook_attn_out'"
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
        device=training_device(model, cfg),
    )
    if not cfg.cache_dir:
        return live
    info = read_cache_info(cfg.cache_dir)
    stale = (
        info is None
        or info["hook_name"] != cfg.hook_name
        or info.get("model_fingerprint") != model_fingerprint(model)
        or (cfg.cache_tokens and info["n_tokens"] < cfg.cache_tokens)
    )
    if stale:
        finite = live.source.finite_rows is not None
        n = cfg.cache_tokens or (None if finite else cfg.total_tokens)
        write_activation_cache(live, cfg.cache_dir, n, cfg.shard_tokens, cfg.progress_bar)
    return CachedActivationStore(cfg.cache_dir, cfg.batch_size, cfg.seed, context=live.context)
