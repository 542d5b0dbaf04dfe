"""Writing on-disk activation caches: one model forward writes several hooks into
safetensors shards (:func:`cache_activations`); training reads them back memory-mapped,
in shuffled epochs, split across ranks (:class:`~saehooks.training.stores.CachedActivationStore`).

Cache generation and SAE training are two jobs, as in SAELens' cached-activation runs:
several SAEs (objectives, seeds, widths) then train on the same activations without
rerunning the model. A cache of hook ``h`` (``<out>/<h>/`` when written by
:func:`cache_activations`) holds::

    cache.json                 the manifest, written last (a folder without it is unfinished)
    shard_00000.safetensors    one tensor ``acts [n_i, d_in]`` per shard
    ...

Row ``i`` of shard ``j`` is the same token in every hook written by one job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import data, tl
from saehooks.checks import check_bool, check_choice, check_int, check_positive_int, check_tokens
from saehooks.errors import InputError
from saehooks.io.common import atomic_write_text, read_safetensors, write_safetensors
from saehooks.training.activation_store import ActivationStore, TokenSource

CACHE_INFO = "cache.json"
"""The manifest of a finished cache."""
PROGRESS = "cache_progress.json"
"""The state of an unfinished job (removed when it finishes)."""
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Dtypes a cache may store (read back as float32)."""
AUTOCAST_DTYPES = ("none", "bfloat16", "float16")
_MAX_EMPTY_BATCHES = 64  # model batches in a row without one activation before refusing


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of the model's weights: Σ|w| per parameter, hashed."""
    sums = ",".join(f"{float(p.detach().double().abs().sum()):.6e}" for p in model.parameters())
    return hashlib.sha256(sums.encode()).hexdigest()[:16]


def shard_file(index: int) -> str:
    """The file name of shard ``index``: ``shard_00012.safetensors``."""
    return f"shard_{index:05d}.safetensors"


def read_cache_info(cache_dir: str | Path) -> dict[str, Any] | None:
    """``cache.json`` of a finished cache, or None if there is none."""
    path = Path(cache_dir) / CACHE_INFO
    return json.loads(path.read_text()) if path.is_file() else None


# ---- writing -----------------------------------------------------------------------------
def _check_hooks(model: nn.Module, hook_names: Sequence[str] | str) -> list[str]:
    hooks = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    if not hooks or not all(isinstance(h, str) and h for h in hooks):
        raise InputError(
            f"hook_names must be one or more hook names, got {hook_names!r:.80}; pass e.g. "
            "['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post']"
        )
    if len(set(hooks)) != len(hooks):
        raise InputError(f"hook_names repeats a hook: {hooks}; name each hook once")
    for h in hooks:
        tl.check_hook_runs(model, h)
        if len(tl.hook_shapes(model)[h]) != 1:
            raise InputError(
                f"{h!r} is not a [batch, pos, d] activation (shape after [batch, pos]: "
                f"{tl.hook_shapes(model)[h]}); cache a residual, MLP or attention-output hook "
                "such as 'blocks.0.hook_attn_out'"
            )
    return hooks


def _source_identity(source: TokenSource) -> str | None:
    rows = source.tensor
    if rows is None:
        return None
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()[:16]


def _forward(model, rows, hooks, drop_bos, bos_id, dtype, autocast) -> dict[str, Tensor]:
    """Activations ``{hook: [n_kept, d_in]}`` (``dtype``, CPU) of token rows ``[n, ctx]``."""
    device = tl.model_device(model)
    cast = (
        torch.autocast(device.type, dtype=STORAGE_DTYPES[autocast])
        if autocast != "none"
        else contextlib.nullcontext()
    )
    with torch.no_grad(), cast:
        _, acts = data.capture(model, rows.to(device), hooks, stop=True)
    keep = rows != bos_id if drop_bos else None
    out = {}
    for h in hooks:
        a = acts[h]
        a = a[keep.to(a.device)] if keep is not None else a.reshape(-1, a.shape[-1])
        out[h] = a.to("cpu", torch.float32).to(STORAGE_DTYPES[dtype])
    return out


def cache_activations(
    model: nn.Module,
    tokens: Any,
    hook_names: Sequence[str] | str,
    out_dir: str | Path,
    n_tokens: int | None = None,
    *,
    shard_tokens: int = 65536,
    model_batch_rows: int = 32,
    drop_bos: bool = True,
    dtype: str = "float32",
    seed: int = 0,
    context_size: int = 256,
    autocast: str = "none",
    progress: bool = True,
    folder_per_hook: bool = True,
) -> dict[str, Path]:
    """Cache the activations of several hooks from one model forward per batch.

    The forward stops after the deepest hook's block (``stop_at_layer``). Each hook gets
    a folder ``<out_dir>/<hook>/`` of safetensors shards of exactly ``shard_tokens`` rows
    (the last may be shorter), each shuffled within itself by a seeded permutation shared
    by all hooks, and a manifest ``cache.json``: model name and fingerprint, hook,
    ``d_in``, storage dtype, context size, token count, shards with their token counts,
    the normalisation scale ``sqrt(d_in) / E‖x‖`` (the factor giving E‖x‖ = sqrt(d_in),
    as the trainer normalises), and whether BOS positions were dropped.

    Resumable: after every shard the job's state (rows read, the few activations read
    past the shard, running norm sums) is saved atomically in ``<out_dir>/``
    :data:`PROGRESS`; calling again with the same arguments continues from the last
    complete shard, and the finished cache equals an uninterrupted one bit for bit. A
    finished cache with the same arguments is kept as it is.

    Args:
        model: a TransformerLens model.
        tokens: a :class:`~saehooks.training.activation_store.TokenSource` or anything it
            accepts (LongTensor ``[n_seq, n_ctx]``, ``.safetensors`` file of ``tokens``,
            text folder, iterable of token rows).
        hook_names: one hook name or several (``[batch, pos, d]`` activations).
        out_dir: the cache root.
        n_tokens: activation tokens to cache per hook; None: one pass over a finite
            source (a tensor or file). A finite source is read at most once: with fewer
            tokens than ``n_tokens`` it caches what there is and warns.
        shard_tokens: rows per shard.
        model_batch_rows: token rows per model forward.
        drop_bos: drop positions whose token is the BOS id.
        dtype: storage dtype, ``float32``, ``bfloat16`` or ``float16``.
        seed: seed of the within-shard shuffles.
        context_size: row length for text folders.
        autocast: run the forward under ``torch.autocast`` in this dtype (``none``,
            ``bfloat16``, ``float16``); recorded as ``forward_autocast``.
        progress: show a tqdm bar.
        folder_per_hook: False (one hook only): write the cache into ``out_dir`` itself.

    Returns:
        ``{hook: folder of its cache}``.

    Raises:
        HookNameError: an unknown hook, or one that carries no activation.
        InputError: a hook that is not ``[batch, pos, d]``, ``n_tokens=None`` with a source
            of unknown length, bad token ids, a source without activations, bad values.
        InputTypeError: an unsupported token source or argument type.
    """
    from tqdm.auto import tqdm

    hooks = _check_hooks(model, hook_names)
    if n_tokens is not None:
        n_tokens = check_positive_int(n_tokens, "n_tokens")
    shard_tokens = check_positive_int(shard_tokens, "shard_tokens")
    model_batch_rows = check_positive_int(model_batch_rows, "model_batch_rows")
    drop_bos = check_bool(drop_bos, "drop_bos")
    dtype = check_choice(dtype, "dtype", tuple(STORAGE_DTYPES))
    autocast = check_choice(autocast, "autocast", AUTOCAST_DTYPES)
    seed = check_int(seed, "seed", minimum=0)
    if not folder_per_hook and len(hooks) != 1:
        raise InputError("folder_per_hook=False writes one hook; pass one hook name")
    tokenizer = getattr(model, "tokenizer", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if drop_bos and bos_id is None:
        raise InputError(
            "drop_bos needs the model's tokenizer BOS id, and this model has no tokenizer; "
            "pass drop_bos=False"
        )
    source = (
        tokens
        if isinstance(tokens, TokenSource)
        else TokenSource(tokens, tokenizer, context_size, bos_id)
    )
    finite = source.finite_rows
    if n_tokens is None and finite is None:
        raise InputError(
            "pass n_tokens (saehooks cache --tokens) for a token source of unknown length "
            "(an iterable or a text folder): how many activations to cache"
        )
    out = Path(out_dir)
    folders = {h: out / h if folder_per_hook else out for h in hooks}
    fingerprint = model_fingerprint(model)
    settings = {
        "hooks": hooks,
        "model_fingerprint": fingerprint,
        "n_tokens_requested": n_tokens,
        "shard_tokens": shard_tokens,
        "model_batch_rows": model_batch_rows,
        "drop_bos": drop_bos,
        "dtype": dtype,
        "seed": seed,
        "autocast": autocast,
        "start_row": source.rows_served,
        "source_rows": finite,
        "source_sha256": _source_identity(source),
    }
    infos = [read_cache_info(f) for f in folders.values()]
    if all(i is not None and i.get("settings") == settings for i in infos):
        return folders
    state = _load_progress(out, settings, hooks)
    if state is None:  # a fresh job: clear what an earlier one left
        _warn_replacing(folders, infos, settings)
        for f in folders.values():
            f.mkdir(parents=True, exist_ok=True)
            (f / CACHE_INFO).unlink(missing_ok=True)
            for old in f.glob("shard_*.safetensors"):
                old.unlink()
        for old in out.glob("cache_carry_*.safetensors"):
            old.unlink()
        state = {"settings": settings, "shards": [], "rows_read": source.rows_served}
        state |= {"exhausted": False, "carry": None, "per_row": None}
        pools: dict[str, list[Tensor]] = {h: [] for h in hooks}
    else:
        carry = read_safetensors(out / state["carry"]) if state["carry"] else {}
        pools = {h: [carry[h]] if h in carry else [] for h in hooks}
    source.rows_served = state["rows_read"]
    row_limit = None if finite is None else settings["start_row"] + finite
    written = sum(s["tokens"] for s in state["shards"])
    pool_n = sum(p.shape[0] for p in pools[hooks[0]])
    rows_iter = source.iter_rows()
    per_row, empty = state.get("per_row"), 0
    bar = tqdm(total=n_tokens or None, unit="tok", disable=not progress, desc="caching")
    bar.update(written)
    while True:
        want = shard_tokens if n_tokens is None else min(shard_tokens, n_tokens - written)
        if want <= 0:
            break
        while pool_n < want and not state["exhausted"]:
            rows: list[Tensor] = []  # about what the shard still needs: little carry-over
            while len(rows) < model_batch_rows and (
                row_limit is None or source.rows_served < row_limit
            ):
                row = next(rows_iter, None)
                if row is None:
                    break
                rows.append(row)
                if len(rows) * (per_row or row.numel()) >= want - pool_n:
                    break
            if not rows:
                state["exhausted"] = True
                break
            batch = torch.stack(rows)
            check_tokens(
                batch,
                d_vocab=getattr(model.cfg, "d_vocab", None),
                n_ctx=getattr(model.cfg, "n_ctx", None),
                name="token source rows",
            )
            acts = _forward(model, batch, hooks, drop_bos, bos_id, dtype, autocast)
            kept = acts[hooks[0]].shape[0]
            empty = 0 if kept else empty + 1
            if empty >= _MAX_EMPTY_BATCHES:
                raise InputError(
                    f"the token source gave {empty} model batches in a row without one "
                    "activation (every token is BOS, dropped by drop_bos); pass real text"
                )
            per_row = max(1, kept // len(rows)) if kept else per_row
            state["per_row"] = per_row  # the next read's size, so a resumed job reads alike
            for h in hooks:
                pools[h].append(acts[h])
            pool_n += kept
            state["rows_read"] = source.rows_served
            if row_limit is not None and source.rows_served >= row_limit:
                state["exhausted"] = True
        if pool_n == 0:
            break
        n = min(want, pool_n)
        index = len(state["shards"])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        perm = torch.randperm(n, generator=gen)
        norms, carry = {}, {}
        for h in hooks:
            pool = torch.cat(pools[h])
            shard = pool[:n][perm]
            write_safetensors(folders[h] / shard_file(index), {"acts": shard})
            norms[h] = float(shard.double().norm(dim=-1).sum())
            pools[h] = [pool[n:]] if pool.shape[0] > n else []
            if pool.shape[0] > n:
                carry[h] = pool[n:]
        pool_n -= n
        written += n
        state["shards"].append({"tokens": n, "norm_sums": norms})
        previous, state["carry"] = state["carry"], None
        if carry:
            state["carry"] = f"cache_carry_{index:05d}.safetensors"
            write_safetensors(out / state["carry"], carry)
        atomic_write_text(out / PROGRESS, json.dumps(state, indent=1) + "\n")
        if previous and previous != state["carry"]:
            (out / previous).unlink(missing_ok=True)
        bar.update(n)
    bar.close()
    if written == 0:
        raise InputError("the token source gave no activations; pass rows of real text")
    if n_tokens is not None and written < n_tokens:
        warnings.warn(
            f"the token source holds {written} activation tokens, fewer than the "
            f"{n_tokens} asked for; cached them all (once)",
            stacklevel=2,
        )
    context = source.context(bos_id)
    for h in hooks:
        _write_manifest(model, h, folders[h], state, context, written)
    for name in (PROGRESS, state["carry"]):
        if name:
            (out / name).unlink(missing_ok=True)
    return folders


def _warn_replacing(folders: dict[str, Path], infos: list, settings: dict) -> None:
    """Warn that finished caches written with other settings are about to be replaced,
    naming the settings that differ (a rerun with the same ones keeps them)."""
    for (hook, folder), info in zip(folders.items(), infos):
        if not isinstance(info, dict):
            continue
        old = info.get("settings") or {}
        changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        warnings.warn(
            f"replacing the finished cache of {hook!r} in {str(folder)!r}: it was written "
            f"with other settings ({'; '.join(changed)[:300]}); rerun with its settings to "
            "keep it, or cache into another folder",
            stacklevel=3,
        )


def _load_progress(out: Path, settings: dict, hooks: list[str]) -> dict | None:
    path = out / PROGRESS
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if state.get("settings") != settings:
        return None
    if state["carry"] and not (out / state["carry"]).is_file():
        return None
    return state


def _write_manifest(model, hook, folder: Path, state: dict, context, written: int) -> None:
    settings = state["settings"]
    shards = [{"file": shard_file(i), "tokens": s["tokens"]} for i, s in enumerate(state["shards"])]
    d_in = int(tl.hook_width(model, hook))
    mean_norm = sum(s["norm_sums"][hook] for s in state["shards"]) / written
    info = {
        "format": 2,
        "hook_name": hook,
        "d_in": d_in,
        "dtype": settings["dtype"],
        "n_tokens": written,
        "n_shards": len(shards),
        "shard_tokens": settings["shard_tokens"],
        "shards": shards,
        "model_name": tl.model_name(model),
        "model_fingerprint": settings["model_fingerprint"],
        "model_processing": tl.model_processing(model),
        "context_size": context[0],
        "prepend_bos": context[1],
        "drop_bos": settings["drop_bos"],
        "rows_read": state["rows_read"] - settings["start_row"],
        "source_exhausted": state["exhausted"],
        "mean_norm": mean_norm,
        "norm_scale": math.sqrt(d_in) / mean_norm if mean_norm > 0 else 1.0,
        "forward_autocast": settings["autocast"],
        "hooks_written_together": settings["hooks"],
        "settings": settings,
    }
    atomic_write_text(folder / CACHE_INFO, json.dumps(info, indent=2) + "\n")


def write_activation_cache(
    store: ActivationStore,
    cache_dir: str | Path,
    n_tokens: int | None,
    shard_tokens: int = 65536,
    progress: bool = True,
) -> Path:
    """Cache ``n_tokens`` activations of a live store's hook, model and token source into
    ``cache_dir`` itself: :func:`cache_activations` with one hook.

    Raises:
        InputError: ``n_tokens=None`` with a source of unknown length.
    """
    folders = cache_activations(
        store.model,
        store.source,
        [store.hook_name],
        cache_dir,
        n_tokens,
        shard_tokens=shard_tokens,
        model_batch_rows=store.model_batch_rows,
        drop_bos=store.drop_bos,
        progress=progress,
        folder_per_hook=False,
    )
    return folders[store.hook_name]
