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
    flags.add_arguments(parser, TrainConfig, int_type=parse_count)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments.

    Raises:
        InputError, InputTypeError, DeviceError: a bad value (see :class:`TrainConfig`).
    """
    return flags.from_namespace(TrainConfig, args)


def run_train(args: argparse.Namespace) -> int:
    """Train an SAE as the parsed arguments say; print where it went.

    Returns:
        The process exit status (0 on success).

    Raises:
        InputError: ``--model`` without ``--data``, a negative ``--threads``, or any
            user error of :func:`~saehooks.training.trainer.train_sae` (all
            :class:`~saehooks.errors.SAEHooksError`, printed by the CLI as one line).
    """
    import torch

    from saehooks.tl import load_model
    from saehooks.training.trainer import train_sae

    threads = check_int(args.threads, "--threads", minimum=0)
    cfg = config_from_args(args)  # every value checked before anything is loaded
    data = args.data
    if data is None and args.model is not None:
        raise InputError(
            "--data is required with --model (a .safetensors "
            "file of tokens or a folder of text files)"
        )
    if threads:
        torch.set_num_threads(threads)
    if data is None:
        from saehooks.reference import load_train_tokens

        data = load_train_tokens()
    model = load_model(args.model)
    resume = cfg.out_dir if args.resume else None
    sae = train_sae(model, data, cfg, resume_from=resume, overwrite=args.overwrite)
    training = sae.cfg.metadata["training"]
    final = training["final_metrics"]
    print(
        f"saved {sae} to {cfg.out_dir}/sae; final train metrics: "
        + ", ".join(f"{k}={final[k]:.4g}" for k in ("fvu", "l0", "dead_fraction", "mse"))
        + f"; {training['matmul_dtype_resolved']} matmul ({training['matmul_dtype_source']})"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's flags (see :func:`add_train_arguments`)."""
    add_train_arguments(parser)


def options_from(args: argparse.Namespace) -> argparse.Namespace:
    return args


def run(args: argparse.Namespace, model=None) -> int:
    return run_train(args)
