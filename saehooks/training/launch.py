"""How a training run starts: :func:`train_sae` (one SAE, data-parallel under
``torchrun``) and :func:`train_saes_by_rank` (one SAE per hook, hooks spread over the
ranks).

They check the arguments and the output folder, build the activation store (this
rank's share of it in a data-parallel run), then hand over to the loop,
:class:`~saehooks.training.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from saehooks import checks, distributed
from saehooks.errors import InputError, InputTypeError
from saehooks.sae import SAE
from saehooks.training import checkpoint
from saehooks.training.activation_store import TokenSource
from saehooks.training.config import TrainConfig
from saehooks.training.stores import Store, make_store
from saehooks.training.trainer import METRICS_FILE, Trainer, check_batch_divisible


def _is_activation_tensor(source: Any) -> bool:
    return isinstance(source, Tensor) and source.dtype.is_floating_point


def _rank_store(model: nn.Module | None, token_source: Any, cfg: TrainConfig) -> Store:
    """This rank's store in a data-parallel run.

    * an activation tensor or a cache (``cfg.cache_dir``): the global stream on every
      rank, each serving its slice of each batch (the stores split by rank themselves;
      any other store is wrapped in :class:`RankSlice` by the :class:`Trainer`); rank
      0 writes a missing cache first while the others wait in a barrier, which fails
      after ``SAEHOOKS_DIST_TIMEOUT`` seconds (300): write a large cache beforehand
      with ``saehooks cache``;
    * live model activations: the token rows ``rank::world`` of the source
      (:class:`TokenSource` ``shard``), batches of ``batch_size / world``, so no rank
      runs the model on rows it would drop.
    """
    ranks, rank = distributed.world_size(), distributed.rank()
    if model is None or _is_activation_tensor(token_source) or cfg.cache_dir:
        if rank == 0:
            store = make_store(model, token_source, cfg)
        distributed.barrier()  # a cache rank 0 wrote is complete before others read it
        if rank != 0:
            store = make_store(model, token_source, cfg)
        return store
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    shard = (rank, ranks)
    if isinstance(token_source, TokenSource):
        token_source.shard = shard
        source = token_source
    else:
        source = TokenSource(token_source, tokenizer, cfg.context_size, bos, shard=shard)
    per_rank = dataclasses.replace(
        cfg,
        batch_size=cfg.batch_size // ranks,
        buffer_tokens=max(1, cfg.buffer_tokens // ranks),
        total_tokens=max(cfg.total_tokens, cfg.batch_size),
    )
    return make_store(model, source, per_rank)


def _check_out_dir(cfg: TrainConfig, resume_from: Any, overwrite: bool, writes: bool) -> None:
    out = Path(cfg.out_dir)
    held = [
        n for n in ("sae", checkpoint.checkpoint_root(out).name, METRICS_FILE) if (out / n).exists()
    ]
    if resume_from is None and held and not overwrite:
        raise InputError(
            f"out_dir {str(out)!r} already holds a run ({', '.join(held)}); continue it with "
            "resume_from=out_dir (saehooks train --resume), start afresh over it with "
            "overwrite=True (--overwrite), or pick another out_dir"
        )
    if resume_from is None and held and overwrite and writes:  # the old run's checkpoints
        shutil.rmtree(checkpoint.checkpoint_root(out), ignore_errors=True)  # must not resume
    if resume_from is not None:  # fail before any model or cache work (warnings come later)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.find_checkpoint(resume_from)


def _split_arguments(
    model: Any, token_source: Any, cfg: Any
) -> tuple[nn.Module | None, Any, TrainConfig]:
    """``(model, source, cfg)`` of ``train_sae(model, source, cfg)`` or
    ``train_sae(acts, cfg)``."""
    if cfg is None and isinstance(token_source, TrainConfig):
        model, token_source, cfg = None, model, token_source
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(
            f"cfg must be a TrainConfig, got {type(cfg).__name__}; pass "
            "saehooks.TrainConfig(...) as train_sae(model, tokens, cfg) or "
            "train_sae(activations, cfg)"
        )
    if token_source is None and not cfg.cache_dir:
        raise InputError(
            "train_sae needs something to train on; pass token ids with a model, "
            "train_sae(model, tokens, cfg), activations, train_sae(acts, cfg), or a "
            "finished activation cache, TrainConfig(cache_dir=...)"
        )
    return model, token_source, cfg


def train_sae(
    model: nn.Module | Tensor | None,
    token_source: Any = None,
    cfg: TrainConfig | None = None,
    resume_from: str | Path | None = None,
    overwrite: bool = False,
) -> SAE:
    """Train an SAE on ``model``'s activations at ``cfg.hook_name``, or on a tensor of
    activations.

    Called as ``train_sae(model, token_source, cfg)``, ``train_sae(None, acts, cfg)``
    or ``train_sae(acts, cfg)``. Under ``torchrun`` (an initialised process group of
    several processes, :func:`saehooks.distributed.init_from_env`) it trains ONE SAE
    data-parallel (see :class:`Trainer`): each rank reads its own rows, rank 0 writes
    the files, and every rank returns the same SAE.

    Args:
        model: a TransformerLens model (see :func:`saehooks.load_model`), or None
            (or the activations themselves, with ``cfg`` second) to train on a tensor
            of activations: no hook check, ``hook_name`` recorded as given, no model
            metadata.
        token_source: LongTensor ``[n_seq, n_ctx]``, a ``.safetensors`` file with
            ``tokens``, a folder of text files, or an iterable of token tensors
            (see :class:`~saehooks.training.activation_store.TokenSource`); or,
            without a model, a float tensor ``[n, d_in]`` of activations; or None when
            ``cfg.cache_dir`` holds a finished cache (``saehooks cache``), which is then
            read with no model forward.
        cfg: the configuration (``batch_size`` is the global batch: tokens per
            optimiser step over all ranks).
        resume_from: a run folder (or checkpoint) to continue; the run then ends
            with exactly the weights an uninterrupted run would have.
        overwrite: start afresh in an ``out_dir`` that already holds a run (its
            checkpoints, metrics and SAE are replaced); without it such a folder is
            refused, so an earlier run is never lost by accident.

    Returns:
        The SAE on raw activations (normalisation folded in), in eval mode, with
        metadata ``model_name``, ``model_processing``, ``context_size``,
        ``prepend_bos`` (with a model) and ``training``; also saved to
        ``<out_dir>/sae``.

    Raises:
        InputTypeError: ``cfg`` is not a :class:`TrainConfig`, or an unsupported token
            source.
        HookNameError: the model has no such hook.
        DeviceError: ``cfg.device`` is not on this machine.
        InputError: token ids outside the model's vocabulary or rows longer than its
            context, a resume with a different config, an ``out_dir`` holding a run
            (pass ``resume_from`` or ``overwrite=True``), nothing to train on, or (data
            parallel) a ``batch_size`` not divisible by the number of ranks.
        SAENotFoundError: no token file at the path given, or no checkpoint in
            ``resume_from``.
        SAEFileError: every checkpoint in ``resume_from`` is damaged.
    """
    model, token_source, cfg = _split_arguments(model, token_source, cfg)
    overwrite = checks.check_bool(overwrite, "overwrite")
    return _train(model, token_source, cfg, resume_from, overwrite, distributed.is_distributed())


def _train(
    model: nn.Module | None,
    token_source: Any,
    cfg: TrainConfig,
    resume_from: str | Path | None,
    overwrite: bool,
    data_parallel: bool,
) -> SAE:
    if data_parallel:
        check_batch_divisible(cfg.batch_size, distributed.world_size())
    _check_out_dir(cfg, resume_from, overwrite, not data_parallel or distributed.is_main())
    if data_parallel:
        distributed.barrier()  # every rank has checked out_dir before rank 0 writes there
        store = _rank_store(model, token_source, cfg)
    else:
        store = make_store(model, token_source, cfg)
        if getattr(store, "world", 1) > 1:  # a cache/tensor reader that split by rank while
            store.rank, store.world = 0, 1  # this rank trains its own SAE: serve it all
    trainer = Trainer(model, store, cfg, resume_from, data_parallel=data_parallel)
    sae = trainer.run()
    assert sae is not None
    return sae


def train_saes_by_rank(
    model: nn.Module | None,
    token_source: Any,
    cfg: TrainConfig,
    hooks: list[str] | tuple[str, ...],
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, SAE]:
    """Train one SAE per hook, the hooks spread over the ranks (sparsify's
    ``distribute_modules``): rank ``r`` trains ``hooks[r::world]`` one after another,
    each on its own model forward, without data parallelism. In a single process it
    trains them all in turn.

    Each SAE goes to ``<cfg.out_dir>/<hook>/`` (with ``cfg.cache_dir``, its cache to
    ``<cfg.cache_dir>/<hook>/``); ``cfg.hook_name`` is replaced by each hook.

    Args:
        model: the TransformerLens model.
        token_source: as :func:`train_sae`.
        cfg: the configuration shared by the SAEs.
        hooks: the hook names (at least one, no repeats).
        resume: continue each hook's run from its folder.
        overwrite: as :func:`train_sae`.

    Returns:
        ``{hook: SAE}`` of the SAEs this rank trained.

    Raises:
        InputError: no hooks, or a hook named twice; and as :func:`train_sae`.
    """
    hooks = list(hooks)
    if not hooks or len(set(hooks)) != len(hooks):
        raise InputError(f"hooks must name at least one hook, each once; got {hooks}")
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(
            f"cfg must be a TrainConfig, got {type(cfg).__name__}; pass saehooks.TrainConfig(...)"
        )
    out: dict[str, SAE] = {}
    for hook in hooks[distributed.rank() :: distributed.world_size()]:
        hook_cfg = dataclasses.replace(
            cfg,
            hook_name=hook,
            out_dir=str(Path(cfg.out_dir) / hook),
            cache_dir=str(Path(cfg.cache_dir) / hook) if cfg.cache_dir else cfg.cache_dir,
        )
        resume_from = hook_cfg.out_dir if resume else None
        out[hook] = _train(model, token_source, hook_cfg, resume_from, overwrite, False)
    return out
