"""``saehooks train``: train an SAE; every flag is a :class:`~saehooks.TrainConfig` field.

Every field becomes ``--field-name`` (a few have short names: ``--hook``, ``--tokens``,
``--out``) with the field's docstring as help, so the flags and the documentation cannot
drift; counts take ``20M``-style values.
"""

from __future__ import annotations

import argparse

from saehooks.checks import check_int
from saehooks.cli import flags
from saehooks.errors import InputError
from saehooks.training.config import TrainConfig, parse_count

NAME = "train"
HELP = "train an SAE on a model's activations"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainConfig` field, plus ``--model``, ``--data``,
    ``--resume`` and ``--threads``.

    Args:
        parser: the (sub)parser of the ``train`` command.
    """
    parser.add_argument(
        "--model",
        default=None,
        help="model: a local Hugging Face folder or TransformerLens name "
        "(default: the shipped reference LM)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="token source: a .safetensors file with 'tokens' [n_seq, n_ctx] "
        "or a folder of text files (tokenised with the model's tokenizer); "
        "default, with the reference LM only: its training split, rebuilt "
        "from this Python's standard library",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that already holds a run (its files are replaced)",
    )
    parser.add_argument(
        "--threads",
        type=parse_count,
        default=0,
        help="torch CPU threads (0: torch's default). With an fp32 matmul, "
        "1-2 threads per run are often the fastest per core",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="train one SAE data-parallel over the processes torchrun started "
        "(`torchrun --nproc_per_node N -m saehooks.training ...`); --batch-size stays "
        "the tokens per optimiser step over all of them",
    )
    parser.add_argument(
        "--hooks",
        default=None,
        help="comma-separated hooks: train one SAE per hook, each in <--out>/<hook>/ "
        "(with --distribute-modules, spread over the torchrun processes)",
    )
    parser.add_argument(
        "--distribute-modules",
        action="store_true",
        help="with --hooks, under torchrun: rank r trains the SAEs of hooks r, r+N, ... "
        "(one model forward per SAE, no data parallelism)",
    )
    flags.add_arguments(parser, TrainConfig, int_type=parse_count)
    parser.set_defaults(hook_name=None)  # not given: the cache's hook, else the default


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments. Without ``--hook``, the hook is
    that of the cache ``--cache-dir`` holds (a one-hook cache folder), else
    :class:`TrainConfig`'s default.

    Raises:
        InputError, InputTypeError, DeviceError: a bad value (see :class:`TrainConfig`).
    """
    if getattr(args, "hook_name", None) is None:
        args = argparse.Namespace(**{**vars(args), "hook_name": _cache_hook(args)})
    return flags.from_namespace(TrainConfig, args)


def _cache_hook(args: argparse.Namespace) -> str:
    """The hook of the cache in ``args.cache_dir`` if it is one hook's cache folder,
    else the default ``hook_name``."""
    from saehooks.training.activation_cache import read_cache_info

    try:
        info = read_cache_info(args.cache_dir) if getattr(args, "cache_dir", None) else None
    except (OSError, ValueError):  # unreadable: the store's own check says what is wrong
        info = None
    if isinstance(info, dict) and isinstance(info.get("hook_name"), str):
        return info["hook_name"]
    return TrainConfig.hook_name


def _hook_list(args: argparse.Namespace) -> list[str] | None:
    """The ``--hooks`` names, or None; ``--distribute-modules`` needs them and excludes
    ``--distributed``."""
    hooks = getattr(args, "hooks", None)
    names = [h.strip() for h in hooks.split(",") if h.strip()] if hooks else None
    if getattr(args, "distribute_modules", False) and not names:
        raise InputError(
            "--distribute-modules spreads several SAEs over the ranks; name their hooks "
            "with --hooks a,b,..."
        )
    if names and getattr(args, "distributed", False):
        raise InputError(
            "--distributed trains one SAE data-parallel and --hooks one SAE per hook; "
            "pass --hooks with --distribute-modules, or --distributed with --hook"
        )
    return names


def run_train(args: argparse.Namespace, distributed_run: bool = False) -> int:
    """Train an SAE as the parsed arguments say; print where it went.

    Args:
        args: the parsed flags.
        distributed_run: join the torchrun process group even without
            ``--distributed`` (``python -m saehooks.training``).

    Returns:
        The process exit status (0 on success).

    Raises:
        InputError: ``--model`` without ``--data``, a negative ``--threads``,
            ``--distributed`` / ``--distribute-modules`` outside ``torchrun``, or any
            user error of :func:`~saehooks.training.launch.train_sae` (all
            :class:`~saehooks.errors.SAEHooksError`, printed by the CLI as one line).
    """
    import torch

    from saehooks import distributed
    from saehooks.tl import load_model
    from saehooks.training.launch import train_sae, train_saes_by_rank

    threads = check_int(args.threads, "--threads", minimum=0)
    cfg = config_from_args(args)  # every value checked before anything is loaded
    hooks = _hook_list(args)
    if distributed_run or getattr(args, "distributed", False) or hooks and args.distribute_modules:
        if not distributed.launched_by_torchrun():
            raise InputError(
                "--distributed and --distribute-modules run under torchrun; launch with "
                "`torchrun --nproc_per_node N -m saehooks.training <train flags>`"
            )
        distributed.init_from_env(cfg.device or None)
    data = args.data
    if data is None and args.model is not None:
        raise InputError(
            "--data is required with --model (a .safetensors "
            "file of tokens or a folder of text files)"
        )
    if threads:
        torch.set_num_threads(threads)
    if data is None and (hooks or not _finished_cache(cfg)):
        from saehooks.reference import load_train_tokens

        data = load_train_tokens()
    model = load_model(args.model)  # kept for the SAE's metadata, even from a cache
    if hooks:
        saes = train_saes_by_rank(model, data, cfg, hooks, args.resume, args.overwrite)
        for hook in saes:
            print(f"saved the SAE of {hook} to {cfg.out_dir}/{hook}/sae")
        return 0
    resume = cfg.out_dir if args.resume else None
    sae = train_sae(model, data, cfg, resume_from=resume, overwrite=args.overwrite)
    if not distributed.is_main():
        return 0
    training = sae.cfg.metadata["training"]
    final = training.get("final_metrics") or {}
    shown = [k for k in ("fvu", "l0", "dead_fraction", "mse") if k in final]
    if not shown:  # resumed a run that had already finished: no step ran
        print(f"the run in {cfg.out_dir} was already complete; its SAE: {cfg.out_dir}/sae")
        return 0
    print(
        f"saved {sae} to {cfg.out_dir}/sae; final train metrics: "
        + ", ".join(f"{k}={final[k]:.4g}" for k in shown)
        + f"; {training['matmul_dtype_resolved']} matmul ({training['matmul_dtype_source']})"
    )
    return 0


def _finished_cache(cfg) -> bool:
    """``cfg.cache_dir`` holds a finished cache of ``cfg.hook_name`` (as a hook folder or a
    ``saehooks cache`` root): training reads it and needs no tokens."""
    from saehooks.training.activation_cache import read_cache_info
    from saehooks.training.stores import cache_folder

    folder = cache_folder(cfg.cache_dir, cfg.hook_name) if cfg.cache_dir else None
    return folder is not None and read_cache_info(folder) is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's flags (see :func:`add_train_arguments`)."""
    add_train_arguments(parser)


def options_from(args: argparse.Namespace) -> argparse.Namespace:
    return args


def run(args: argparse.Namespace, model=None) -> int:
    return run_train(args)
