"""Activation stores: token sources -> model activations -> shuffled training batches.

* :class:`TokenSource` reads token rows ``[n_ctx]`` from a LongTensor ``[n_seq, n_ctx]``
  (e.g. the shipped token arrays), a ``.safetensors`` file holding ``tokens``, a
  folder of text files tokenised with the model's tokenizer, or any iterable of
  token tensors. It counts the rows it served, so a run can resume where it stopped.
* :class:`ActivationStore` runs the model only up to the hook (``stop_at_layer``),
  drops BOS positions, and serves batches from a mixing buffer of bounded size, kept
  on the training device (activations move there once, as they are captured). Every
  model batch of token ids is checked against the model's vocabulary and context.
* the on-disk cache (:mod:`.activation_cache`) keeps activations in safetensors
  shards, read back in shuffled epochs with bounded memory, so several SAEs can train
  on the same activations without rerunning the model.

Both stores expose ``next_batch() -> [batch_size, d_in]`` and ``state_dict`` /
``load_state_dict`` (tensors + JSON-able values) for exact resumption.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import data, tl
from saehooks.checks import check_bool, check_int, check_positive_int, check_tokens
from saehooks.errors import InputError, InputTypeError, SAEFileError, SAENotFoundError
from saehooks.io.common import read_safetensors

# consecutive model batches without one activation (all BOS) before a source is refused
_MAX_EMPTY_BATCHES = 64


def _generator_state(gen: torch.Generator) -> Tensor:
    return gen.get_state().clone()


class TokenSource:
    """Token rows from a tensor, a ``.safetensors`` file, a text folder or an iterable.

    Args:
        source: LongTensor ``[n_seq, n_ctx]``; path of a ``.safetensors`` file with a
            ``tokens`` tensor; path of a folder of text files (``*.py``, ``*.txt``,
            ``*.md``, recursively, sorted), tokenised with ``tokenizer`` into rows of
            ``context_size`` tokens, each ``[BOS, …]``, documents separated by BOS;
            or any iterable of LongTensors ``[n_ctx]`` / ``[n, n_ctx]``.
        tokenizer: a Hugging Face tokenizer (text folders only).
        context_size: tokens per row for text folders.
        bos_id: the BOS token id (text folders only).
        shard: ``(rank, world)``: serve only the rows ``rank::world`` of each epoch
            (data-parallel training: each rank runs the model on its own rows); None
            serves every row. :attr:`rows_served` then counts this rank's rows.

    Tensors, files and folders restart when exhausted (epochs); a one-shot iterator
    raises ``StopIteration`` at its end.

    Raises:
        InputTypeError: an unsupported source, or token arrays that are not integers.
        InputError: token arrays that are not ``[n_seq, n_ctx]``, a folder without text
            files, or a text folder without tokenizer / BOS id.
        SAENotFoundError: a path that does not exist.
        SAEFileError: a ``.safetensors`` file without a ``tokens`` tensor.
    """

    TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")

    def __init__(
        self,
        source: Any,
        tokenizer: Any = None,
        context_size: int = 256,
        bos_id: int | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.tokenizer, self.context_size, self.bos_id = tokenizer, context_size, bos_id
        if shard is not None and not (0 <= shard[0] < shard[1]):
            raise InputError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.shard = shard
        self.rows_served = 0
        self._warned_repeat = False
        self._tensor: Tensor | None = None
        self._files: list[Path] | None = None
        self._iterable: Iterable | None = None
        if isinstance(source, Tensor):
            self._tensor = self._check_rows(source)
        elif isinstance(source, (str, Path)) and Path(source).is_dir():
            self._files = sorted(
                p for p in Path(source).rglob("*") if p.is_file() and p.suffix in self.TEXT_SUFFIXES
            )
            if not self._files:
                raise InputError(
                    f"no text files ({', '.join(self.TEXT_SUFFIXES)}) under "
                    f"{str(source)!r}; pass a folder that holds some, or a "
                    ".safetensors file of token ids"
                )
            if tokenizer is None or bos_id is None:
                raise InputError(
                    "a text folder needs the model's tokenizer and BOS id; pass "
                    "tokenizer= and bos_id= (or token ids instead of text)"
                )
        elif isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise SAENotFoundError(
                    f"token source {str(path)!r} does not exist; pass a "
                    "LongTensor, a .safetensors file or a text folder"
                )
            stored = read_safetensors(path)
            if "tokens" not in stored:
                raise SAEFileError(
                    f"{path} holds no 'tokens' tensor (it has "
                    f"{sorted(stored)}); save the token ids under the name "
                    "'tokens'"
                )
            self._tensor = self._check_rows(stored["tokens"])
        elif isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
            self._iterable = source
        else:
            raise InputTypeError(
                f"unsupported token source {type(source).__name__}; pass a "
                "LongTensor [n_seq, n_ctx], a path, or an iterable of "
                "tensors"
            )

    @staticmethod
    def _check_rows(tokens: Tensor) -> Tensor:
        if (
            not isinstance(tokens, Tensor)
            or tokens.dtype.is_floating_point
            or tokens.dtype.is_complex
            or tokens.dtype == torch.bool
        ):
            got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
            raise InputTypeError(
                f"token arrays must hold integer ids, got {got}; tokenize "
                "with the model's tokenizer (model.to_tokens)"
            )
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise InputError(
                f"token arrays must be [n_seq >= 1, n_ctx >= 1], got shape "
                f"{tuple(tokens.shape)}; stack rows with torch.stack, or use "
                "tokens[None] for a single row"
            )
        return tokens.long()

    @property
    def finite_rows(self) -> int | None:
        """Rows in one epoch when known without reading everything, else None."""
        return None if self._tensor is None else self._tensor.shape[0]

    @property
    def tensor(self) -> Tensor | None:
        """The token rows ``[n_seq, n_ctx]`` of a tensor or ``.safetensors`` source, else
        None (a text folder or an iterable is read lazily)."""
        return self._tensor

    def context(self, bos_id: int | None = None) -> tuple[int | None, bool | None]:
        """``(tokens per row, whether every row starts with BOS)`` as far as they can be
        told without consuming the source: a tensor (all rows), a list or tuple (its
        first item), a text folder (``context_size``, True); None where unknown.

        Args:
            bos_id: the BOS id (default: the one this source was given).
        """
        bos_id = self.bos_id if bos_id is None else bos_id
        rows = self._tensor
        if rows is None and isinstance(self._iterable, (list, tuple)) and self._iterable:
            first = torch.as_tensor(self._iterable[0])
            rows = first if first.ndim == 2 else first[None]
        if rows is not None:
            return int(rows.shape[1]), bool(bos_id is not None and (rows[:, 0] == bos_id).all())
        if self._files is not None:
            return self.context_size, True
        return None, None

    def _text_rows(self) -> Iterator[Tensor]:
        body = self.context_size - 1
        pending: list[int] = []
        for path in self._files:  # type: ignore[union-attr]
            text = path.read_text(encoding="utf-8", errors="replace")
            pending.append(self.bos_id)  # type: ignore[arg-type]
            pending.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            while len(pending) >= body:
                yield torch.tensor([self.bos_id, *pending[:body]], dtype=torch.long)
                pending = pending[body:]

    def _epoch(self) -> Iterator[Tensor]:
        if self.shard is None:
            yield from self._all_rows()
            return
        rank, world = self.shard
        for i, row in enumerate(self._all_rows()):
            if i % world == rank:
                yield row

    def _all_rows(self) -> Iterator[Tensor]:
        if self._tensor is not None:
            yield from self._tensor
        elif self._files is not None:
            yield from self._text_rows()
        else:
            for item in self._iterable:  # type: ignore[union-attr]
                item = torch.as_tensor(item).long()
                yield from (item if item.ndim == 2 else item[None])

    def iter_rows(self) -> Iterator[Tensor]:
        """Rows ``[n_ctx]`` from row ``rows_served`` on, counting them as they go."""
        skip = self.rows_served
        restartable = self._iterable is None or isinstance(self._iterable, (list, tuple))
        while True:
            n_this_epoch = 0
            for row in self._epoch():
                n_this_epoch += 1
                if skip:
                    skip -= 1
                    continue
                self.rows_served += 1
                yield row
            if not restartable:
                return
            if n_this_epoch == 0:
                raise InputError("the token source is empty; pass at least one row of token ids")
            if not self._warned_repeat:
                self._warned_repeat = True
                warnings.warn(
                    f"the token source ran out after {n_this_epoch} rows and starts "
                    "over: the SAE will see its tokens more than once (give more "
                    "data or fewer total_tokens to avoid it)",
                    stacklevel=2,
                )
            skip %= n_this_epoch


class ActivationStore:
    """Shuffled activations at one hook, computed on the fly.

    The mixing buffer keeps at most ``buffer_tokens`` activations: when it is full it
    is shuffled, half of it is served, and fresh activations fill it again, so batches
    mix tokens from many sequences (SAELens' scheme).

    Args:
        model: a TransformerLens model (see :func:`saehooks.load_model`).
        tokens: a :class:`TokenSource` or anything it accepts.
        hook_name: the hook point, e.g. ``blocks.2.hook_resid_post``.
        batch_size: activations per :meth:`next_batch`.
        buffer_tokens: mixing-buffer capacity (activations).
        model_batch_rows: sequences per forward pass.
        drop_bos: drop positions whose token is the BOS id.
        seed: seed of the shuffling.
        context_size: row length for text folders.
        device: where the buffer and the served batches live (None: the CPU).

    Raises:
        HookNameError: the model has no such hook.
        InputTypeError, InputError: a bad argument or token source (see
            :class:`TokenSource`); token ids outside the model's vocabulary or rows
            longer than its context window (a tensor source is checked at once, others
            batch by batch).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens: Any,
        hook_name: str,
        batch_size: int = 4096,
        buffer_tokens: int = 131072,
        model_batch_rows: int = 32,
        drop_bos: bool = True,
        seed: int = 0,
        context_size: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        batch_size = check_positive_int(batch_size, "batch_size")
        buffer_tokens = check_positive_int(buffer_tokens, "buffer_tokens")
        model_batch_rows = check_positive_int(model_batch_rows, "model_batch_rows")
        drop_bos = check_bool(drop_bos, "drop_bos")
        seed = check_int(seed, "seed", minimum=0)
        context_size = check_int(context_size, "context_size", minimum=2)
        tl.check_hook_name(model, hook_name)
        self.model, self.hook_name = model, hook_name
        self.device = torch.device("cpu" if device is None else device)
        cfg = getattr(model, "cfg", None)
        self.d_vocab, self.n_ctx = getattr(cfg, "d_vocab", None), getattr(cfg, "n_ctx", None)
        tokenizer = getattr(model, "tokenizer", None)
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        if drop_bos and self.bos_id is None:
            raise InputError(
                "drop_bos needs the model's tokenizer BOS id, and this model has "
                "no tokenizer; pass drop_bos=False"
            )
        self.source = (
            tokens
            if isinstance(tokens, TokenSource)
            else TokenSource(tokens, tokenizer, context_size, self.bos_id)
        )
        rows = self.source.tensor
        if rows is not None:  # check all of it now, not minutes in
            self._check_ids(rows)
            if drop_bos and bool((rows == self.bos_id).all()):
                raise InputError(
                    "every token of the token source is BOS, so with drop_bos "
                    "there are no activations to train on; pass real text"
                )
        n_ctx, prepend_bos = self.source.context(self.bos_id)
        self.context: tuple[int, bool | None] = (n_ctx or context_size, prepend_bos)
        """``(context_size, prepend_bos)`` of the rows, for a trained SAE's metadata
        (``prepend_bos`` None when it cannot be told without consuming the source)."""
        self.batch_size, self.buffer_tokens = batch_size, max(buffer_tokens, 2 * batch_size)
        self.model_batch_rows, self.drop_bos = model_batch_rows, drop_bos
        self.generator = torch.Generator().manual_seed(seed)
        width = tl.hook_width(model, hook_name)
        self.d_in = int(width) if width is not None else self._probe_width()
        self._pool = torch.empty(0, self.d_in, device=self.device)
        self._ready = torch.empty(0, self.d_in, device=self.device)
        self._rows: Iterator[Tensor] | None = None
        self._empty_batches = 0
        self.rank_batches = self.rank_state = self.source.shard is not None
        """True when the source is sharded by rank (data-parallel training): each
        batch is this rank's own (``batch_size`` is the per-rank batch) and the state
        differs between ranks (a checkpoint keeps every rank's)."""

    def _check_ids(self, rows: Tensor) -> None:
        check_tokens(rows, d_vocab=self.d_vocab, n_ctx=self.n_ctx, name="token source rows")

    def _probe_width(self) -> int:
        rows = TokenSource(torch.zeros(1, 2, dtype=torch.long))
        return self.activations(next(rows.iter_rows())[None]).shape[-1]

    @torch.no_grad()
    def activations(self, tokens: Tensor) -> Tensor:
        """Activations ``[n_kept, d_in]`` (float32, on :attr:`device`) of token rows
        ``[n, n_ctx]``.

        Raises:
            InputError: ids outside the model's vocabulary, or rows longer than its
                context window.
        """
        self._check_ids(tokens)
        device = tl.model_device(self.model)
        _, acts = data.capture(self.model, tokens.to(device), self.hook_name, stop=True)
        acts = acts.to(self.device, torch.float32)
        if self.drop_bos:
            return acts[(tokens != self.bos_id).to(self.device)]
        return acts.reshape(-1, acts.shape[-1])

    def fresh_activations(self, max_rows: int | None = None) -> Tensor:
        """Activations ``[n_kept, d_in]`` of the source's next model batch, unshuffled
        and outside the mixing buffer (the on-disk cache writer reads them this way).

        Args:
            max_rows: read at most this many rows (default ``model_batch_rows``).

        Raises:
            StopIteration: the token source is exhausted.
            InputError: bad token ids, or too many batches without an activation.
        """
        limit = self.model_batch_rows if max_rows is None else min(max_rows, self.model_batch_rows)
        if self._rows is None:
            self._rows = self.source.iter_rows()
        rows: list[Tensor] = []
        while len(rows) < limit:
            row = next(self._rows, None)
            if row is None:
                break
            rows.append(row)
        if not rows:
            raise StopIteration("the token source is exhausted")
        acts = self.activations(torch.stack(rows))
        self._empty_batches = 0 if acts.shape[0] else self._empty_batches + 1
        if self._empty_batches >= _MAX_EMPTY_BATCHES:
            raise InputError(
                f"the token source gave {_MAX_EMPTY_BATCHES} model batches in a "
                "row without one activation (every token is BOS, dropped by "
                "drop_bos); pass rows of real text"
            )
        return acts

    def _refill(self) -> None:
        parts, n = [self._pool], self._pool.shape[0]
        while n < self.buffer_tokens:
            try:
                fresh = self.fresh_activations()
            except StopIteration:
                if n == 0:
                    raise
                break
            parts.append(fresh)
            n += fresh.shape[0]
        pool = torch.cat(parts)
        pool = pool[torch.randperm(pool.shape[0], generator=self.generator).to(self.device)]
        half = max(pool.shape[0] // 2, min(self.batch_size, pool.shape[0]))
        self._ready = torch.cat([self._ready, pool[:half]])
        self._pool = pool[half:]

    def next_batch(self) -> Tensor:
        """A shuffled batch ``[batch_size, d_in]`` of raw activations (float32, on
        :attr:`device`)."""
        while self._ready.shape[0] < self.batch_size:
            self._refill()
        batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
        return batch

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, values)``: buffer contents and RNG state, and the source cursor."""
        tensors = {
            "pool": self._pool,
            "ready": self._ready,
            "generator": _generator_state(self.generator),
        }
        return tensors, {"kind": "live", "rows_served": self.source.rows_served}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` (the source is re-read to its cursor)."""
        self._pool = tensors["pool"].to(self.device, copy=True)
        self._ready = tensors["ready"].to(self.device, copy=True)
        self.generator.set_state(tensors["generator"].clone())
        self.source.rows_served = int(values["rows_served"])
        self._rows = None


class RankSlice:
    """This rank's slice of every batch of a store that serves the global stream.

    Data parallelism over a cache or a tensor: every rank reads the same shuffled
    stream of global batches (``batch_size`` = tokens per optimiser step) and keeps
    rows ``[rank · b, (rank + 1) · b)`` of each, ``b = batch_size / world``. So the
    ranks of a step together see exactly the rows one process would see in that step
    (the equivalence the data-parallel tests check), at the cost of reading the rows
    the rank drops. The wrapped store's state is the same on every rank, so one
    checkpoint resumes all of them, at any world size.

    Args:
        store: a :class:`~saehooks.training.stores.Store` of global batches.
        rank: this rank.
        world: the number of ranks.
    """

    rank_batches = True
    """:meth:`next_batch` returns this rank's rows only."""
    rank_state = False
    """The state is the global stream's, identical on every rank."""

    def __init__(self, store: Any, rank: int, world: int) -> None:
        self.store, self.rank, self.world = store, rank, world
        self.d_in = store.d_in
        context = getattr(store, "context", None)
        if context is not None:
            self.context = context

    def next_batch(self) -> Tensor:
        """Rows ``[rank · b, (rank + 1) · b)`` of the store's next batch ``[B, d_in]``,
        ``b = B / world``.

        Raises:
            InputError: ``B`` is not divisible by the number of ranks.
        """
        batch = self.store.next_batch()
        n = batch.shape[0]
        if n % self.world:
            raise InputError(
                f"a batch of {n} rows cannot be split evenly over {self.world} ranks; pass "
                f"a batch_size divisible by {self.world}"
            )
        b = n // self.world
        return batch[self.rank * b : (self.rank + 1) * b]

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The wrapped store's state."""
        return self.store.state_dict()

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore the wrapped store's state."""
        self.store.load_state_dict(tensors, values)
