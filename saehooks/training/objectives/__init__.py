"""Training objectives: one class per ``TrainConfig.architecture``, over :mod:`.base`.

==================== ======================================= ========= ===========
name                 class                                   saved as  decoder rows
==================== ======================================= ========= ===========
topk                 :class:`TopKObjective`                  topk      unit norm
batchtopk            :class:`BatchTopKObjective`             jumprelu  unit norm
l1                   :class:`L1Objective`                    relu      free
kl                   :class:`KLObjective`                    relu      unit norm
jumprelu             :class:`JumpReLUObjective`              jumprelu  unit norm
matryoshka_batchtopk :class:`MatryoshkaBatchTopKObjective`   jumprelu  unit norm
mlp                  :class:`MLPObjective`                   mlp       unit norm
==================== ======================================= ========= ===========

Sources and losses: :mod:`.topk` (Gao et al. 2024), :mod:`.batchtopk` (Bussmann et al.
2024), :mod:`.l1` (Anthropic, April 2024), :mod:`.kl` (Ng 2011), :mod:`.jumprelu`
(Rajamanoharan et al. 2024), :mod:`.matryoshka` (Bussmann et al. 2025), :mod:`.mlp`
(the seed's example SAE: an MLP on each side of ReLU latents, L1 on the latents).

Each class declares the ``TrainConfig`` fields it reads (``fields``); the loop's own
are ``saehooks.training.trainer.LOOP_FIELDS``.
"""

from __future__ import annotations

import torch

from saehooks.errors import InputError
from saehooks.training.config import TrainConfig
from saehooks.training.objectives.base import (
    ConfigFields,
    ForwardOutput,
    LoopHandles,
    Objective,
    StepState,
)
from saehooks.training.objectives.batchtopk import BatchTopKObjective
from saehooks.training.objectives.jumprelu import JumpReLUObjective
from saehooks.training.objectives.kl import KLObjective
from saehooks.training.objectives.l1 import L1Objective
from saehooks.training.objectives.matryoshka import MatryoshkaBatchTopKObjective
from saehooks.training.objectives.mlp import MLPObjective
from saehooks.training.objectives.relu import ReLUObjective
from saehooks.training.objectives.topk import TopKObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        TopKObjective,
        BatchTopKObjective,
        L1Objective,
        KLObjective,
        JumpReLUObjective,
        MatryoshkaBatchTopKObjective,
        MLPObjective,
    )
}
"""``{architecture: objective class}``."""


def objective_class(architecture: str) -> type[Objective]:
    """The objective class of ``TrainConfig.architecture``.

    Raises:
        InputError: an unknown architecture.
    """
    if architecture not in OBJECTIVES:
        raise InputError(
            f"unknown training architecture {architecture!r}; pass one of {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[architecture]


def make_objective(cfg: TrainConfig, matmul_dtype: str | torch.dtype = "float32") -> Objective:
    """The objective ``cfg.architecture`` names, reading ``cfg``.

    Args:
        cfg: the training configuration.
        matmul_dtype: the resolved encoder matmul dtype (``"float32"``/``"bfloat16"``).

    Raises:
        InputError: an unknown architecture.
    """
    return objective_class(cfg.architecture)(cfg, matmul_dtype)


__all__ = [
    "OBJECTIVES",
    "BatchTopKObjective",
    "ConfigFields",
    "ForwardOutput",
    "KLObjective",
    "JumpReLUObjective",
    "L1Objective",
    "LoopHandles",
    "MLPObjective",
    "MatryoshkaBatchTopKObjective",
    "Objective",
    "ReLUObjective",
    "StepState",
    "TopKObjective",
    "make_objective",
    "objective_class",
]
