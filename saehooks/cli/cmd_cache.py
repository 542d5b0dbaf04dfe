"""``saehooks cache``: write activations at several hooks from one model forward into
safetensors shards (one folder per hook), for ``saehooks train --cache-dir``.

    saehooks cache --hooks blocks.1.hook_resid_post,blocks.2.hook_resid_post \\
        --tokens 50M --out cache/
    saehooks train --cache-dir cache/blocks.2.hook_resid_post --hook blocks.2.hook_resid_post

A killed job continues from its last complete shard when run again with the same flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from saehooks.cli import flags
from saehooks.cli.common import set_threads
from saehooks.errors import InputError, SAENotFoundError
from saehooks.training.config import parse_count

NAME = "cache"
HELP = "cache activations at several hooks into safetensors shards (train from them later)"


@dataclass(kw_only=True)
class Options:
    hooks: str
    """comma-separated hook names, e.g. blocks.1.hook_resid_post,blocks.2.hook_resid_post"""
    out: str
    """cache root: one folder per hook, <out>/<hook>/ (cache.json + shard_*.safetensors)"""
    tokens: int | None = None
    """activation tokens to cache per hook (20M, 1.5e6, 200k); default: one pass over the
    data (a text folder needs it)"""
    model: str | None = None
    """model directory or name (default: the shipped reference LM, with its training split
    as the data)"""
    tokens_file: str | None = None
    """data: a .safetensors file holding 'tokens' [n_seq, n_ctx]"""
    text_file: str | None = None
    """data: a text file, or a folder of text files, tokenised by the model into rows of
    --n-ctx tokens that start with BOS"""
    n_ctx: int = 256
    """row length of text data"""
    dtype: str = "float32"
    """storage dtype: float32, bfloat16 or float16 (read back as float32)"""
    autocast: str = "none"
    """run the model under torch.autocast in this dtype (none, bfloat16, float16)"""
    shard_tokens: int = 65536
    """activation tokens per shard"""
    batch_size: int = 32
    """token rows per model forward"""
    drop_bos: bool = True
    """drop BOS positions"""
    seed: int = 0
    """seed of the within-shard shuffles"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    progress: bool = True
    """show a progress bar"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`Options` field; counts take ``20M``-style values."""
    flags.add_arguments(parser, Options, int_type=parse_count)


def _text_rows(model, path: Path, n_ctx: int) -> torch.Tensor:
    """A text file as rows ``[BOS, t_0 .. t_{n_ctx-2}]`` (the tail that fills no row is
    left out)."""
    ids = model.to_tokens(path.read_text(errors="replace"), prepend_bos=False)[0].cpu()
    body = n_ctx - 1
    n = ids.numel() // body
    if n == 0:
        raise InputError(
            f"{path}: fewer than {body} tokens; give a longer text or a smaller --n-ctx"
        )
    bos = torch.full((n, 1), model.tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, ids[: n * body].view(n, body)], dim=1)


def data_source(options: Options, model):
    """The token source the options name (see :class:`Options`).

    Raises:
        InputError: both data flags, or ``--model`` without data.
        SAENotFoundError: a data path that does not exist.
    """
    from saehooks.checks import check_int

    n_ctx = check_int(options.n_ctx, "--n-ctx", minimum=2)
    if options.tokens_file and options.text_file:
        raise InputError("pass one of --tokens-file and --text-file, not both")
    given = options.tokens_file or options.text_file
    if given and not Path(given).exists():
        raise SAENotFoundError(f"{given!r} does not exist; pass an existing file or folder")
    if not given and options.model is not None:
        raise InputError(
            "--model needs data: --tokens-file (a .safetensors file of 'tokens') or "
            "--text-file (a text file or folder)"
        )
    if model is None:  # the flags are checked: now the slow part
        return None
    if options.tokens_file:
        return options.tokens_file
    if options.text_file:
        path = Path(options.text_file)
        return str(path) if path.is_dir() else _text_rows(model, path, n_ctx)
    from saehooks.reference import load_train_tokens

    return load_train_tokens()


def run(options: Options, model=None) -> int:
    """Write the cache; print each hook's folder and the command that trains from it.

    Returns:
        The exit status (0).

    Raises:
        SAEHooksError: a bad flag, hook, model or data (see
            :func:`~saehooks.training.activation_cache.cache_activations`).
    """
    from saehooks.tl import load_model
    from saehooks.training.activation_cache import cache_activations, read_cache_info

    set_threads(options.threads)
    hooks = [h.strip() for h in options.hooks.split(",") if h.strip()]
    if not hooks:
        raise InputError(
            f"--hooks names no hook ({options.hooks!r}); pass e.g. blocks.2.hook_resid_post"
        )
    data_source(options, None)  # bad data flags fail before the model loads
    model = load_model(options.model) if model is None else model
    folders = cache_activations(
        model,
        data_source(options, model),
        hooks,
        options.out,
        options.tokens,
        shard_tokens=options.shard_tokens,
        model_batch_rows=options.batch_size,
        drop_bos=options.drop_bos,
        dtype=options.dtype,
        seed=options.seed,
        context_size=options.n_ctx,
        autocast=options.autocast,
        progress=options.progress,
    )
    for hook, folder in folders.items():
        info = read_cache_info(folder) or {}
        print(
            f"{hook}: {info['n_tokens']} tokens x {info['d_in']} ({info['dtype']}) in "
            f"{info['n_shards']} shards at {folder}; norm_scale {info['norm_scale']:.6g}"
        )
    first = hooks[0]
    print(
        f"train from it: saehooks train --hook {first} --cache-dir {folders[first]} --out runs/sae"
    )
    return 0
