"""The ``mlp`` objective: the seed's example SAE, non-linear on both sides, L1 on its latents.

The SAE (:mod:`saehooks.sae`, architecture ``mlp``) has one hidden layer of width
``d_hidden`` on each side of its ReLU latents ``z [d_sae]``:

    ``h = relu((x − b_dec) W_enc_in + b_enc_hidden)``,  ``z = relu(h W_enc + b_enc)``,
    ``x̂ = relu(z W_dec + b_dec_hidden) W_dec_out + b_dec``,
    ``L = mean_token ‖x − x̂‖² + λ · mean_token Σ_j z_j``

(an L1 penalty on ``z``, as in the seed's ``SparseAutoencoder``; λ is
``l1_coefficient``, warmed up linearly over ``sparsity_warmup_fraction`` of the steps
and, with ``target_l0 > 0``, steered by the target-L0 controller, both from
:mod:`.relu`). The rows of ``W_dec [d_sae, d_hidden]`` are kept at unit norm, so the
first decoder layer cannot shrink ``z`` to dodge the penalty; the decoder's output layer
still could (a non-linear decoder has no per-latent norm to weight the penalty with, as
the ``l1`` objective does), which the target-L0 controller counters. Dense kernels only
(the decoder is not a sum of rows, so :mod:`saehooks.training.sparse` does not apply);
no dead-latent resampling or AuxK (both write input-space directions into a linear
dictionary).

``d_hidden`` is ``mlp_hidden``, by default ``2 · d_in``: the smallest width at which
the MLP SAE holds every linear ReLU SAE exactly (``h = [relu(u), relu(−u)]`` carries
``u = x − b_dec`` losslessly, and likewise on the decoder side), and the width this
objective's initialisation uses to start from exactly the linear SAE the other
objectives start from (:meth:`MLPObjective.initialise`).

The training loop needs three things of an objective beyond the base class's for this
architecture: the training SAE's config (:meth:`MLPObjective.training_config`), its
initialisation (:meth:`MLPObjective.initialise`) and the folding of the input
normalisation into the saved SAE (:meth:`MLPObjective.fold_scale`). A loop that does
not (it builds a ReLU-shaped SAE and initialises it as a linear one) is stopped at its
first use of the objective with an error saying so.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saehooks.errors import InputError
from saehooks.sae import SAE
from saehooks.training import init, losses
from saehooks.training.objectives.base import ForwardOutput, LoopHandles, StepState
from saehooks.training.objectives.relu import ReLUObjective


def hidden_width(mlp_hidden: int, d_in: int) -> int:
    """``d_hidden`` of an mlp SAE: ``mlp_hidden``, or ``2 · d_in`` when it is 0."""
    return mlp_hidden if mlp_hidden > 0 else 2 * d_in


class MLPObjective(ReLUObjective):
    """MLP encoder and decoder, ReLU latents, L1 on the latents; saved as ``mlp``.

    Attributes:
        d_hidden: the hidden width, set by :meth:`training_config` (None before).
        log_gain: the target-L0 controller's state (:class:`ReLUObjective`).
    """

    name = "mlp"
    # fmt: off
    fields = frozenset({"l1_coefficient", "mlp_hidden", "sparsity_warmup_fraction",
                        "total_tokens", "batch_size", "target_l0", "target_l0_rate",
                        "target_l0_max_factor"})
    # fmt: on
    inference_architecture = "mlp"
    unit_norm_decoder = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.d_hidden: int | None = None

    # ---- what the loop asks of this architecture ------------------------------------
    def training_config(self, d_in: int) -> dict[str, Any]:
        """``SAEConfig`` fields of the training SAE beyond ``d_in``, ``d_sae``,
        ``hook_name`` and ``device``: ``{"architecture": "mlp", "d_hidden": ...}``."""
        self.d_hidden = hidden_width(self.cfg.mlp_hidden, d_in)
        return {"architecture": "mlp", "d_hidden": self.d_hidden}

    def inference_config(self) -> dict[str, Any]:
        """``{"architecture": "mlp", "d_hidden": ...}`` (after :meth:`training_config`).

        Raises:
            InputError: :meth:`training_config` was never called (no width known).
        """
        if self.d_hidden is None:
            raise InputError(
                "the mlp objective does not know d_hidden yet: call training_config(d_in) "
                "when building the training SAE"
            )
        return {"architecture": "mlp", "d_hidden": self.d_hidden}

    @torch.no_grad()
    def initialise(
        self,
        sae: SAE,
        x: Tensor,
        *,
        b_dec_init: str,
        generator: torch.Generator,
        fit_encoder_scale: bool = True,
        **_: Any,
    ) -> None:
        """Start as the linear SAE the other objectives start from, embedded exactly.

        With ``m = min(d_in, d_hidden // 2)`` and a random orthonormal ``Q [d_in, m]``,
        random unit rows ``D [d_sae, d_in]`` (the linear decoder) and ``u = x − b_dec``:

        * ``W_enc_in = [Q, −Q, R]`` (so ``h = [relu(uQ), relu(−uQ), ...]`` and
          ``h₁ − h₂ = uQ``), ``W_enc = [Q^T D^T; −Q^T D^T; 0]``: ``pre = u Q Q^T D^T``;
        * ``W_dec = [D Q, −D Q, S] / sqrt(2)`` (unit-norm rows when ``S = 0``) and
          ``W_dec_out = sqrt(2) · [Q^T; −Q^T; 0]``: ``x̂ − b_dec = z D Q Q^T``.

        With ``d_hidden >= 2 d_in``, ``Q Q^T = I`` and the MLP SAE computes exactly the
        linear SAE ``z = relu(u D^T)``, ``x̂ = z D + b_dec`` (Conerly et al. 2024's tied
        initialisation). Hidden units beyond ``2m`` get small random weights ``R`` (Kaiming
        uniform) and ``S`` (``0.1 / sqrt(d_sae)``) and zero output weights, so they start
        out silent in ``x̂`` yet receive gradients. Biases start at 0 but ``b_dec``
        (``b_dec_init``: zeros, mean or geometric median of ``x``). Then, like
        :func:`init.fit_encoder_scale`, ``W_enc`` is scaled by the least-squares factor
        γ > 0 (ReLU is positively homogeneous and the hidden biases are 0, so ``x̂ −
        b_dec`` scales by γ).

        Args:
            sae: the training SAE (architecture ``mlp``), changed in place.
            x: normalised activations ``[n, d_in]``.
            b_dec_init: ``"zeros"``, ``"mean"`` or ``"geometric_median"``.
            generator: the run's random source (weights drawn on its device).
            fit_encoder_scale: apply γ.

        Raises:
            InputError: an unknown ``b_dec_init``; an SAE that is not ``mlp``.
        """
        if sae.cfg.architecture != "mlp":
            raise InputError(f"the mlp objective trains an mlp SAE, got {sae.cfg.architecture!r}")
        d_in, d_sae, h = sae.cfg.d_in, sae.cfg.d_sae, sae.W_enc.shape[0]
        m = min(d_in, h // 2)
        kw = {"generator": generator, "device": generator.device, "dtype": torch.float32}
        q, _ = torch.linalg.qr(torch.randn(d_in, d_in, **kw))
        q = q[:, :m]
        d = torch.randn(d_sae, d_in, **kw)
        d /= d.norm(dim=-1, keepdim=True)
        w_in = (torch.rand(d_in, h, **kw) * 2 - 1) / math.sqrt(d_in)
        w_in[:, :m], w_in[:, m : 2 * m] = q, -q
        w_enc = torch.zeros(h, d_sae, device=generator.device)
        w_enc[:m], w_enc[m : 2 * m] = q.t() @ d.t(), -(q.t() @ d.t())
        w_dec = torch.randn(d_sae, h, **kw) * (0.1 / math.sqrt(d_sae))
        w_dec[:, :m], w_dec[:, m : 2 * m] = d @ q, -(d @ q)
        w_dec[:, : 2 * m] /= math.sqrt(2)
        w_out = torch.zeros(h, d_in, device=generator.device)
        w_out[:m], w_out[m : 2 * m] = math.sqrt(2) * q.t(), -math.sqrt(2) * q.t()
        for param, value in (
            (sae.W_enc_in, w_in),
            (sae.W_enc, w_enc),
            (sae.W_dec, w_dec),
            (sae.W_dec_out, w_out),
        ):
            param.copy_(value)
        for bias in (sae.b_enc_hidden, sae.b_enc, sae.b_dec_hidden):
            bias.zero_()
        if b_dec_init == "zeros":
            sae.b_dec.zero_()
        elif b_dec_init == "mean":
            sae.b_dec.copy_(x.mean(0))
        elif b_dec_init == "geometric_median":
            sae.b_dec.copy_(init.geometric_median(x))
        else:
            raise InputError(
                f"unknown b_dec_init {b_dec_init!r}; pass one of 'zeros', 'mean', "
                "'geometric_median'"
            )
        if fit_encoder_scale:
            sample = x[:8192]
            y = sae.decode(torch.relu(sae.encode_pre(sample))) - sae.b_dec
            x_c = sample - sae.b_dec
            denom = float((y * y).sum())
            gamma = float((x_c * y).sum()) / denom if denom > 0 else 1.0
            if gamma > 0:
                sae.W_enc.mul_(gamma)

    @staticmethod
    @torch.no_grad()
    def fold_scale(train_sae: SAE, scale: float, out: SAE) -> SAE:
        """Write into ``out`` the mlp SAE on raw activations equivalent to ``train_sae``
        on ``x' = s·x``: ``out(x) = train_sae(s·x) / s``, with the same latents.

        ``h = relu((s x − b) W_enc_in + c) = relu((x − b/s)(s W_enc_in) + c)`` and
        ``x̂ = (g W_dec_out + b) / s = g (W_dec_out / s) + b/s``. So ``W_enc_in ← s
        W_enc_in``, ``W_dec_out ← W_dec_out / s``, ``b_dec ← b_dec / s``; everything
        between (``b_enc_hidden``, ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec_hidden``)
        keeps.

        Returns:
            ``out``, filled.
        """
        for name, value in train_sae.state_dict().items():
            getattr(out, name).copy_(value)
        out.W_enc_in.mul_(scale)
        out.W_dec_out.div_(scale)
        out.b_dec.div_(scale)
        return out

    def init_activation(self, pre: Tensor) -> Tensor:
        """Never used: the loop initialises an mlp SAE through :meth:`initialise`, which
        has no linear encoder scale to fit."""
        raise NotImplementedError("the mlp objective initialises through initialise()")

    # ---- a training step -------------------------------------------------------------
    @property
    def base_coefficient(self) -> float:
        """λ (``l1_coefficient``)."""
        return self.cfg.l1_coefficient

    def penalty(
        self, sae: SAE, acts: Tensor, cols: Tensor | None, n: int, state: StepState
    ) -> tuple[Tensor, None]:
        """``mean_token Σ_j z_j`` of the dense code ``acts [n, d_sae]``."""
        return acts.sum() / n, None

    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: ``mse + coefficient(step) · mean_token Σ_j z_j`` through the SAE's
        own ``encode_pre`` and ``decode`` (dense; under bf16 autocast if the matmul
        dtype is bf16).

        Args:
            sae: training-space mlp SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step (its coefficient)."""
        assert sae.cfg.architecture == "mlp", "the loop builds it from training_config"
        coefficient = self.coefficient(state.step)
        n = x.shape[0]
        enabled = self.matmul_dtype == torch.bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            pre = sae.encode_pre(x)
        acts = torch.relu(pre.to(x.dtype))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
            x_hat = sae.decode(acts).to(x.dtype)
        mse = losses.mse(x, x_hat)
        aux, _ = self.penalty(sae, acts, None, n, state)
        return self.dense_output(mse, aux, coefficient, x_hat, acts, None)

    def after_step(
        self, sae: SAE, x: Tensor, out: ForwardOutput, state: StepState, loop: LoopHandles
    ) -> None:
        """The target-L0 controller only (no resampling: see the module docstring)."""
        self.update_controller(out.l0, state.step)
