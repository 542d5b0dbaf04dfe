"""``python -m saehooks.training``: ``saehooks train`` for ``torchrun``.

Data-parallel training of one SAE over N processes (gloo on CPU, nccl on CUDA)::

    torchrun --nproc_per_node 2 -m saehooks.training --model ... --data tokens.safetensors \\
        --hook blocks.2.hook_resid_post --batch-size 8192 --out runs/dp

takes the flags of ``saehooks train`` (``--batch-size`` is the global batch: tokens
per optimiser step over all ranks); rank 0 writes the checkpoints, ``metrics.csv``
and the SAE, and ``--resume`` under ``torchrun`` continues such a run. With
``--hooks a,b,... --distribute-modules`` each rank trains its own hooks' SAEs instead.
A rank that fails ends the job: ``torchrun`` stops the others, and its error (recorded
with :func:`torch.distributed.elastic.multiprocessing.errors.record`) is printed in
the launcher's summary.
"""

from __future__ import annotations

import argparse
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from saehooks.cli import cmd_train
from saehooks.errors import SAEHooksError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``saehooks train``."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m saehooks.training",
        description="train an SAE data-parallel (or one SAE per rank) under torchrun",
    )
    cmd_train.add_train_arguments(parser)
    return parser


@record
def main(argv: list[str] | None = None) -> int:
    """Parse the flags and train under ``torchrun``.

    Returns:
        The exit status: 0, or 1 after printing a user error (with its rank).
    """
    args = build_parser().parse_args(argv)
    if os.environ.get("SAEHOOKS_DEBUG"):
        return cmd_train.run_train(args, distributed_run=True)
    try:
        return cmd_train.run_train(args, distributed_run=True)
    except SAEHooksError as exc:
        rank = os.environ.get("RANK", "0")
        print(f"saehooks.training (rank {rank}): error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
