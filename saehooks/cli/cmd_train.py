"""``saehooks train``: train an SAE; every flag is a :class:`~saehooks.TrainConfig` field."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train an SAE on a model's activations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from saehooks.training.cli import add_train_arguments

    add_train_arguments(parser)


def options_from(args: argparse.Namespace) -> argparse.Namespace:
    return args


def run(args: argparse.Namespace, model=None) -> int:
    from saehooks.training.cli import run_train

    return run_train(args)
