"""What every training objective implements, and what it hands the training loop.

An objective is the part of an SAE recipe that differs between recipes: how a batch
is encoded and scored (:meth:`Objective.forward`), what it carries from step to step
(:meth:`Objective.after_step`: a threshold, a running estimate, a controller,
resampling), which SAE the run is saved as (:attr:`Objective.inference_architecture`)
and which :class:`~saehooks.training.config.TrainConfig` fields it reads
(:attr:`Objective.fields`). The loop (:mod:`saehooks.training.trainer`) does the rest:
batches, Adam, decoder normalisation, the dead-latent tracker, logs and checkpoints.

An objective sees the config through :class:`ConfigFields`, which refuses every field
it did not declare, so the declaration is the list of what it reads and cannot drift
from the code. The shape follows saprmarks/dictionary_learning (one trainer per file
over a small base class).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from saehooks import distributed
from saehooks.sae import SAE
from saehooks.training import init
from saehooks.training.config import TrainConfig
from saehooks.training.resample import DeadLatentTracker


class ForwardOutput(NamedTuple):
    """What a training step needs from an objective's forward pass."""

    loss: Tensor
    """Scalar loss to minimise (per token, normalised units)."""
    x_hat: Tensor
    """``[batch, d_in]`` reconstruction (normalised units, detached)."""
    mse: Tensor
    """Scalar ``mean_token ‖x − x̂‖²`` (normalised units, detached)."""
    aux: Tensor
    """Scalar auxiliary term before its coefficient: AuxK loss (the fraction of the
    residual the dead latents leave), L1 penalty, or KL sum (nats)."""
    fired: Tensor
    """``[d_sae]`` bool: latents active on at least one token of the batch."""
    l0: float
    """Mean active latents per token."""
    min_active: float = 0.0
    """Smallest positive activation kept (BatchTopK's threshold sample); else 0."""
    firing_rate: Tensor | None = None
    """``[d_sae]`` the batch's per-latent (soft) firing rate ρ̂ (``kl``; detached), else
    None."""


class StepState(NamedTuple):
    """Where the run stands when a step starts (read-only for the objective)."""

    step: int
    """Optimiser steps done before this one (0 at the first step)."""
    tokens: int
    """Activation tokens in the batches before this one."""
    dead: Tensor
    """``[d_sae]`` bool: latents dead before this batch (:class:`DeadLatentTracker`)."""
    ranks: int = 1
    """Data-parallel ranks the step's batch is split over (1 in a single process):
    the step's tokens are ``x.shape[0] * ranks``."""


class LoopHandles(NamedTuple):
    """The loop's state an objective may change after a step (dead-latent resampling)."""

    optimizer: torch.optim.Optimizer
    """Adam over the SAE's parameters."""
    tracker: DeadLatentTracker
    """The dead-latent tracker, already updated with this batch."""
    generator: torch.Generator
    """The run's random generator (on the training device)."""


# properties of TrainConfig and the fields they read
_DERIVED = {"total_steps": frozenset({"total_tokens", "batch_size"})}


class ConfigFields:
    """A read-only view of a :class:`TrainConfig` that serves only the declared fields.

    Reading any other field raises ``AttributeError`` naming the reader: an objective
    that reads a field must declare it. :attr:`read` records the fields read so far
    (the tests check that each declared field is really read).

    Args:
        cfg: the configuration.
        fields: the field names that may be read (``total_steps`` needs
            ``total_tokens`` and ``batch_size``).
        owner: the reader's name, for the error message.
    """

    __slots__ = ("_cfg", "_fields", "_owner", "read")

    def __init__(self, cfg: TrainConfig, fields: frozenset[str], owner: str) -> None:
        self._cfg, self._fields, self._owner = cfg, frozenset(fields), owner
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        needs = _DERIVED.get(name, frozenset({name}))
        missing = needs - self._fields
        if missing:
            raise AttributeError(
                f"{self._owner} reads TrainConfig.{name} but does not declare "
                f"{', '.join(sorted(missing))} in {self._owner}.fields; add "
                "it there (the declaration is the list of what it reads)"
            )
        self.read |= needs
        return getattr(self._cfg, name)


class Objective:
    """Base class of the training objectives (one subclass per ``architecture``).

    Class attributes, declared once per objective:

    * :attr:`name`: the ``TrainConfig.architecture`` it implements;
    * :attr:`fields`: the ``TrainConfig`` fields it reads (through :attr:`cfg`);
    * :attr:`inference_architecture`: the ``SAEConfig.architecture`` the trained SAE
      runs as (``topk``, ``jumprelu`` or ``relu``);
    * :attr:`unit_norm_decoder`: whether the loop keeps decoder rows at unit norm.

    Args:
        cfg: the training configuration.
        matmul_dtype: dtype of the dense encoder matmul, ``"float32"`` or
            ``"bfloat16"`` (``TrainConfig.matmul_dtype`` resolved by the loop).
    """

    name: ClassVar[str] = ""
    fields: ClassVar[frozenset[str]] = frozenset()
    inference_architecture: ClassVar[str] = ""
    unit_norm_decoder: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig, matmul_dtype: str | torch.dtype = "float32") -> None:
        self.cfg = ConfigFields(cfg, self.fields, type(self).__name__)
        self.matmul_dtype = matmul_dtype

    @property
    def matmul_dtype(self) -> torch.dtype:
        """Dtype of the dense encoder matmul (``torch.float32`` or ``torch.bfloat16``)."""
        return self._matmul_dtype

    @matmul_dtype.setter
    def matmul_dtype(self, value: str | torch.dtype) -> None:
        bf16 = value in ("bfloat16", torch.bfloat16)
        self._matmul_dtype = torch.bfloat16 if bf16 else torch.float32

    # ---- a training step -------------------------------------------------------------
    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """Loss and statistics of one batch; changes nothing (the state moves in
        :meth:`after_step`).

        Args:
            sae: the training-space SAE (normalised units).
            x: normalised activations ``[batch, d_in]``.
            state: the run's step, tokens and dead latents before this batch.
        """
        raise NotImplementedError

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """Update the objective's own state after the optimiser step on ``x`` (whose
        forward pass gave ``out``). The base class keeps no state."""

    def sync(self, out: ForwardOutput, ranks: int) -> ForwardOutput:
        """Reduce a step's statistics over the data-parallel ranks, before
        :meth:`after_step`, so every rank updates identical state from them.

        Runs on every rank after the gradients were averaged; a no-op with ``ranks``
        1. The rules: a latent fired if it fired on ANY rank (``fired``: the dead-latent
        tracker and AuxK/resampling then agree); ``l0`` (the target-L0 controller's
        input), ``loss``, ``mse`` and ``aux`` (logged) are the means over ranks, which
        equal the whole batch's because every rank holds the same number of tokens.
        One ``float64`` all-reduce. Objectives with more state extend it
        (:mod:`.batchtopk`: θ's sample, :mod:`.kl`: the firing rate).

        Args:
            out: this rank's forward output on its ``[batch / ranks, d_in]`` slice.
            ranks: the number of data-parallel ranks.

        Returns:
            ``out`` with the reduced values (identical on every rank).
        """
        if ranks <= 1:
            return out
        d_sae = out.fired.shape[0]
        packed = torch.cat(
            [
                out.fired.to(torch.float64),
                torch.stack([out.loss.detach(), out.mse, out.aux]).to(torch.float64),
                torch.tensor([out.l0], dtype=torch.float64, device=out.fired.device),
            ]
        )
        distributed.all_reduce_(packed)
        loss, mse, aux, l0 = (packed[d_sae:] / ranks).tolist()
        like = out.mse
        return out._replace(
            loss=like.new_tensor(loss),
            mse=like.new_tensor(mse),
            aux=like.new_tensor(aux),
            fired=packed[:d_sae] > 0,
            l0=l0,
        )

    def coefficient(self, step: int) -> float:
        """The sparsity coefficient in force at ``step`` (logged); 0 without one."""
        return 0.0

    def init_activation(self, pre: Tensor) -> Tensor:
        """The activation the initial encoder scale is fitted with
        (``init.fit_encoder_scale``): ``[n, d_sae] -> [n, d_sae]``. ReLU here."""
        return torch.relu(pre)

    # ---- the training SAE ------------------------------------------------------------
    def training_config(self, d_in: int) -> dict[str, Any]:
        """``SAEConfig`` fields of the training SAE beyond ``d_in``, ``d_sae``,
        ``hook_name`` and ``device`` (default: none, a ReLU-shaped SAE)."""
        return {}

    def initialise(
        self,
        sae: SAE,
        x: Tensor,
        *,
        b_dec_init: str,
        decoder_norm: float,
        encoder_as_decoder_transpose: bool,
        fit_encoder_scale: bool,
        generator: torch.Generator,
    ) -> None:
        """Initialise the training SAE on normalised activations ``x [n, d_in]``
        (default: :func:`init.init_sae`, then :func:`init.fit_encoder_scale` with
        :meth:`init_activation` on the first 8192 rows)."""
        init.init_sae(
            sae,
            x,
            b_dec_init=b_dec_init,
            decoder_norm=decoder_norm,
            encoder_as_decoder_transpose=encoder_as_decoder_transpose,
            generator=generator,
        )
        if fit_encoder_scale:
            init.fit_encoder_scale(sae, x[:8192], self.init_activation)

    def fold_scale(self, train_sae: SAE, scale: float, out: SAE) -> SAE:
        """Fill ``out``, the saved SAE on raw activations, from the training SAE on
        ``scale``-normalised ones (default: :func:`init.fold_scale`)."""
        return init.fold_scale(train_sae, scale, out)

    # ---- the saved SAE ---------------------------------------------------------------
    def inference_config(self) -> dict[str, Any]:
        """``SAEConfig`` fields of the saved SAE: its ``architecture`` (and ``k``)."""
        return {"architecture": self.inference_architecture}

    def finish_inference_sae(self, sae: SAE) -> None:
        """Fill what the saved SAE needs beyond the folded weights (e.g. a threshold)."""

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, JSON values)`` an exact resumption needs."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (tensors on the CPU; moved where they belong)."""
