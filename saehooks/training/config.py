"""``TrainConfig``: every knob of SAE training, one documented field each.

Which fields matter is declared once, by their readers: each objective's ``FIELDS``
(:mod:`saehooks.training.objectives`) and the loop's ``LOOP_FIELDS``
(:mod:`saehooks.training.trainer`); a resumed run must agree on those, and only those.

The field docstrings are read from this file's source
(:func:`saehooks.cli.flags.field_docs`), so that the command-line flags of
``saehooks train`` and their help texts are generated from the dataclass and never
drift from it. Every field is checked when a config is made
(:meth:`TrainConfig.__post_init__`), so a bad value fails at once, with a message
saying what to pass, instead of minutes into a run.

What the machine decides (the training device, the ``"auto"`` matmul dtype) is
resolved by :mod:`saehooks.training.device`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from saehooks.checks import (
    check_bool,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_positive_int,
)
from saehooks.errors import InputError, InputTypeError

ARCHITECTURES = ("topk", "batchtopk", "l1", "kl", "jumprelu", "matryoshka_batchtopk", "mlp")
B_DEC_INITS = ("zeros", "mean", "geometric_median")
MATMUL_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """How to train one SAE. Token counts are activation tokens (BOS positions excluded)."""

    hook_name: str = field(default="blocks.2.hook_resid_post", metadata={"flag": "hook"})
    """TransformerLens hook point whose activations the SAE reads and reconstructs."""
    architecture: str = "topk"
    """Sparsity objective: ``topk`` / ``batchtopk`` (Gao et al. 2024; Bussmann et al.
    2024), ``l1`` (Anthropic April 2024), ``kl`` (Ng 2011 average-activation KL),
    ``jumprelu`` (Rajamanoharan et al. 2024), ``matryoshka_batchtopk`` (Bussmann et
    al. 2025) or ``mlp`` (a hidden layer on each side of ReLU latents, L1 on them);
    see ``saehooks.training.objectives`` for the fields each one reads."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Latents per token for ``topk``; mean latents per token for ``batchtopk`` and
    ``matryoshka_batchtopk``."""
    total_tokens: int = field(default=20_000_000, metadata={"flag": "tokens"})
    """Activation tokens to train on (accepts ``20M``, ``1.5e6``)."""
    batch_size: int = 4096
    """Activation tokens per optimiser step: the GLOBAL batch, over all ranks of a
    data-parallel ``torchrun`` job (each rank takes ``batch_size / world``; it must
    divide evenly), so a config means the same run at any number of processes."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    adam_betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"metavar": ("BETA1", "BETA2")}
    )
    """Adam (beta1, beta2)."""
    lr_warmup_fraction: float = 0.01
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay_fraction: float = 0.2
    """Fraction of the steps at the end over which it decays linearly to 0
    (Anthropic April 2024 uses the last 20%)."""
    grad_clip: float = 1.0
    """Maximum global gradient norm (0 disables clipping)."""
    l1_coefficient: float = 5.0
    """λ of the ``l1`` objective ``MSE + λ Σ_j a_j ‖W_dec[j]‖`` (normalised units)."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of the steps over which λ (``l1``) or β (``kl``) rises linearly from 0
    (Anthropic April 2024: 5% for λ)."""
    l0_coefficient: float = 0.3
    """λ of the ``jumprelu`` objective ``MSE + λ Σ_j H(pre_j − θ_j)`` (normalised
    units; warmed up like ``l1_coefficient``). On its own, λ 0.3 leaves L0 near 200 on
    the reference model; to aim at an L0, pass ``target_l0`` (the shipped JumpReLU SAE:
    λ 1.0, target_l0 32, batch 1024, 15M tokens; the thresholds, learned as ``log θ``,
    took ~1100 steps to bring L0 from ~280 to 32)."""
    jumprelu_bandwidth: float = 0.05
    """``jumprelu``: width ε of the rectangle kernel of the straight-through estimators
    of the thresholds' gradients (pre-activation units, normalised inputs)."""
    jumprelu_init_threshold: float = 0.25
    """``jumprelu``: initial threshold θ of every latent (pre-activation units,
    normalised inputs; the thresholds are learned as ``log θ``, so at lr 1e-3 Adam moves
    them by at most ~0.1% a step and the start matters in short runs). With
    ``fit_encoder_scale`` the initial L0 at d_sae 4096 on the reference model's
    ``blocks.2.hook_resid_post`` is 676 at θ 0.1, 118 at 0.2, 40 at 0.25, 12 at 0.3."""
    jumprelu_threshold_lr_factor: float = 1.0
    """``jumprelu``: the thresholds' learning rate as a multiple of ``lr`` (their own Adam
    follows the loop's schedule). ``log θ`` moves at most ~``lr × factor`` a step, so at
    lr 1e-3 and factor 1 a threshold changes by ≤ 0.1% a step; in runs of a few hundred
    steps the L0 then cannot reach ``target_l0``. On the reference model at 244 steps of
    4096 tokens and target L0 32: factor 1 ends at L0 164, 3 at 88, 10 at 30 and 30 at
    33 (``benchmarks/README.md``). Raise it for short runs; the shipped JumpReLU SAE
    (14.6k steps) used 1."""
    leak: float = 0.0
    """``l1``/``kl``: slope of the gradient that negative pre-activations pass while
    training (a leaky ReLU backward, the forward stays ReLU; 0: plain ReLU). The saved
    SAE is a plain ReLU SAE. With ``leak > 0`` the sparse kernels are not used."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """``matryoshka_batchtopk``: the nested dictionary sizes ``m_1 < ... < m_n =
    d_sae`` whose reconstructions are each scored (latents ``[0, m_i)``); empty: d_sae
    / 16, / 8, / 4, / 2, 1 (those that are whole and >= 1)."""
    kl_beta: float = 3.0
    """β of the ``kl`` objective ``MSE + β Σ_j KL(ρ ‖ ρ̂_j)``."""
    kl_rho: float = 0.006
    """Target firing probability ρ per latent of the ``kl`` objective. L0 lands near
    ``1.35 · ρ · d_sae`` (the soft firing rate undercounts faint firings): measured
    L0 33 at ρ 0.006 and 45 at ρ 0.008 with 4096 latents on the reference model."""
    kl_scale: float = 0.05
    """Squashing scale: ``ρ̂_j = mean_token (1 − exp(−a_j / kl_scale))`` (normalised
    units, where E‖x‖ = sqrt(d_in)). Keep it well below the typical activation, so that
    ``ρ̂`` counts firings, as L0 does: at 2.5 faint firings barely counted and L0 stalled
    near 310 on the reference model while β rose 18-fold; at 0.05 (ρ 0.006) L0 is 33."""
    kl_window_tokens: int = 32768
    """Tokens over which the ``kl`` objective's running firing estimate averages (its
    logged KL value); the gradient does not depend on it."""
    mlp_hidden: int = 0
    """``mlp`` (the seed's example SAE: a hidden layer on each side of ReLU latents, loss
    ``MSE + λ Σ_j z_j`` with λ = ``l1_coefficient``): width of each hidden layer; 0 picks
    ``2 · d_in``, the smallest width that holds every linear ReLU SAE exactly."""
    target_l0: float = 0.0
    """``l1``/``kl``/``jumprelu``/``mlp``: if > 0, adapt the coefficient (λ, β, or
    JumpReLU's ``l0_coefficient``) multiplicatively after its warm-up so that the batch L0
    tracks this target (a Lagrangian-style controller)."""
    target_l0_rate: float = 0.01
    """Step size of that controller on ``log(coefficient)`` per optimizer step."""
    target_l0_max_factor: float = 100.0
    """The controller keeps the coefficient within [1/f, f] times its configured value
    (an objective whose L0 barely responds must not drown the reconstruction loss)."""
    auxk: bool = True
    """``topk``/``batchtopk``: add the AuxK loss on dead latents (Gao et al. 2024)."""
    aux_k: int = 0
    """Dead latents used by AuxK per token; 0 picks the power of two nearest d_in/2."""
    aux_coefficient: float = 1 / 32
    """α of the AuxK loss (Gao et al. 2024 use 1/32, with both losses normalised)."""
    dead_window_tokens: int = 1_000_000
    """A latent is dead if it has not fired on any of the last N tokens (AuxK and
    resampling act on those). Gao et al. use 10M; on small data sets a window of a few
    hundred thousand tokens also revives latents too rare to fire on a held-out set."""
    init_encoder_as_decoder_transpose: bool = True
    """Initialise ``W_enc`` as ``W_decᵀ`` (Conerly et al. 2024; Gao et al. 2024)."""
    fit_encoder_scale: bool = True
    """Scale the initial encoder so the first reconstructions have the least-squares
    size (see ``init.fit_encoder_scale``; needed by ReLU SAEs with unit-norm rows)."""
    decoder_init_norm: float = 1.0
    """Initial norm of decoder rows (Anthropic April 2024 use 0.1 for ``l1``; with
    ``fit_encoder_scale`` the same Adam learning rate then suits every objective)."""
    b_dec_init: str = "geometric_median"
    """``zeros``, ``mean`` or ``geometric_median`` of the first batches (Bricken et al.
    2023 use the geometric median)."""
    init_tokens: int = 16384
    """Tokens used to estimate the normalisation and the ``b_dec`` initialisation."""
    resample_dead: bool = True
    """``l1``/``kl``: resample dead latents (Bricken et al. 2023, "Towards
    Monosemanticity", neuron resampling)."""
    resample_every_tokens: int = 2_000_000
    """Tokens between resamplings."""
    resample_stop_fraction: float = 0.5
    """No resampling after this fraction of training (lets the end converge)."""
    normalize_activations: bool = True
    """Scale inputs to E‖x‖ = sqrt(d_in) while training; the factor is folded into
    every saved SAE, which therefore reads raw activations."""
    matmul_dtype: str = "auto"
    """Dtype of the dense encoder matmul: ``float32``, ``bfloat16``, or ``auto``: the
    one this device multiplies faster (a ~0.1 s timed probe once per process on CPU,
    where bf16 is 3x faster with AMX / AVX512-BF16 units and ~40x slower without;
    ``bfloat16`` on CUDA). Parameters, Adam state and the sparse products stay
    float32. The choice is recorded in the SAE's metadata and shown in the progress
    bar."""
    sparse_kernels: bool = True
    """``topk``, ``l1``, ``kl``: sparse decoder and encoder gradients (``embedding_bag``)
    instead of dense ``[batch, d_sae]`` matmuls; same result, several times faster
    (``l1``/``kl`` take them once their code is at most 1/16 dense; ``batchtopk``
    always does)."""
    seed: int = 0
    """Seed of initialisation, data order and resampling."""
    device: str | None = None
    """Device of the SAE, its optimiser and the activation batches (``cpu``, ``cuda``,
    ``cuda:1``); None: the model's device. Activations of a model on another device
    move once per batch."""
    checkpoint_every_tokens: int = 5_000_000
    """Tokens between checkpoints (0: only the final save)."""
    log_every_steps: int = 25
    """Optimizer steps between rows of the metrics log."""
    out_dir: str = field(default="runs/sae", metadata={"flag": "out"})
    """Output folder: ``sae/`` (final SAE), ``checkpoints/``, ``metrics.csv``."""
    context_size: int = 256
    """Tokens per sequence when tokenising text files (with BOS at position 0)."""
    model_batch_rows: int = 32
    """Sequences per model forward pass in the activation store."""
    buffer_tokens: int = 131072
    """Capacity of the activation store's mixing buffer (activation tokens)."""
    drop_bos: bool = True
    """Drop activations at BOS positions (token == BOS id)."""
    cache_dir: str = ""
    """If set, cache activations in safetensors shards there (reused when present)
    and train from the cache, in epochs if it holds fewer than ``total_tokens``."""
    cache_tokens: int = 0
    """Tokens to cache (0: all of a finite source, else ``total_tokens``)."""
    shard_tokens: int = 65536
    """Activation tokens per cache shard."""
    wandb: bool = False
    """Log metrics to Weights & Biases (needs ``wandb`` installed)."""
    wandb_project: str = "saehooks"
    """W&B project name."""
    progress_bar: bool = True
    """Show a tqdm bar with tokens/s, loss, L0, FVU and dead fraction."""

    def __post_init__(self) -> None:
        """Check every field; canonicalise types (ints, floats, ``str`` paths).

        Raises:
            InputTypeError: a field of the wrong type (e.g. ``d_sae="4096"``).
            InputError: a value out of range or an unknown choice.
            DeviceError: a ``device`` this machine does not have.
        """
        for name in _POSITIVE_INTS:
            setattr(self, name, check_positive_int(getattr(self, name), name))
        for name in _NONNEGATIVE_INTS:
            setattr(self, name, check_int(getattr(self, name), name, minimum=0))
        self.context_size = check_int(self.context_size, "context_size", minimum=2)
        for name in _BOOLS:
            setattr(self, name, check_bool(getattr(self, name), name))
        for name in _FRACTIONS:
            setattr(self, name, check_float(getattr(self, name), name, minimum=0.0, maximum=1.0))
        for name in _NONNEGATIVE_FLOATS:
            setattr(self, name, check_float(getattr(self, name), name, minimum=0.0))
        for name in _POSITIVE_FLOATS:
            setattr(
                self,
                name,
                check_float(getattr(self, name), name, minimum=0.0, exclusive_minimum=True),
            )
        self.kl_rho = check_float(
            self.kl_rho, "kl_rho", minimum=0.0, maximum=1.0, exclusive_minimum=True
        )
        if self.kl_rho == 1.0:
            raise InputError("kl_rho must be < 1 (a target firing probability); got 1.0")
        self.target_l0_max_factor = check_float(
            self.target_l0_max_factor, "target_l0_max_factor", minimum=1.0
        )
        self.architecture = check_choice(self.architecture, "architecture", ARCHITECTURES)
        self.b_dec_init = check_choice(self.b_dec_init, "b_dec_init", B_DEC_INITS)
        self.matmul_dtype = check_choice(self.matmul_dtype, "matmul_dtype", MATMUL_DTYPES)
        self.hook_name = _check_text(
            self.hook_name, "hook_name", "a hook name such as 'blocks.2.hook_resid_post'"
        )
        self.wandb_project = _check_text(self.wandb_project, "wandb_project", "a project name")
        self.out_dir = _check_path(self.out_dir, "out_dir", allow_empty=False)
        self.cache_dir = _check_path(self.cache_dir, "cache_dir", allow_empty=True)
        if self.device is not None:
            self.device = str(check_device(self.device, "device"))
        self.adam_betas = _check_betas(self.adam_betas)
        if self.lr_warmup_fraction + self.lr_decay_fraction > 1.0:
            raise InputError(
                f"lr_warmup_fraction + lr_decay_fraction must be <= 1, got "
                f"{self.lr_warmup_fraction} + {self.lr_decay_fraction}; shorten "
                "one of them"
            )
        if (
            self.architecture in ("topk", "batchtopk", "matryoshka_batchtopk")
            and self.k > self.d_sae
        ):
            raise InputError(
                f"{self.architecture} needs 1 <= k <= d_sae={self.d_sae}, got "
                f"k={self.k}; pass a smaller k or a larger d_sae"
            )
        self.leak = check_float(self.leak, "leak", minimum=0.0, maximum=1.0)
        if self.leak == 1.0:
            raise InputError(
                "leak must be < 1 (at 1 the latents are linear while training); pass e.g. 0.01"
            )
        self.matryoshka_prefixes = _check_prefixes(self.matryoshka_prefixes, self.d_sae)
        if self.total_tokens < self.batch_size:
            raise InputError(
                f"total_tokens={self.total_tokens} is less than one batch "
                f"(batch_size={self.batch_size}); pass total_tokens >= batch_size"
            )

    @property
    def total_steps(self) -> int:
        """Optimizer steps: ``ceil(total_tokens / batch_size)``."""
        return math.ceil(self.total_tokens / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["matryoshka_prefixes"] = list(self.matryoshka_prefixes)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            InputTypeError: ``raw`` is not a dict, or has keys that are not fields (the
                message names the closest fields).
            InputError, DeviceError: as the constructor.
        """
        if not isinstance(raw, dict):
            raise InputTypeError(f"TrainConfig.from_dict needs a dict, got {type(raw).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in raw if k not in names]
        if unknown:
            hints = {k: difflib.get_close_matches(str(k), names, n=1) for k in unknown}
            said = ", ".join(
                f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items()
            )
            raise InputTypeError(
                f"unknown TrainConfig field(s) {said}; the fields are {', '.join(names)}"
            )
        raw = dict(raw)
        if isinstance(raw.get("adam_betas"), list):
            raw["adam_betas"] = tuple(raw["adam_betas"])
        if isinstance(raw.get("matryoshka_prefixes"), list):
            raw["matryoshka_prefixes"] = tuple(raw["matryoshka_prefixes"])
        return cls(**raw)


# fmt: off
_POSITIVE_INTS = ("d_sae", "k", "total_tokens", "batch_size", "dead_window_tokens",
                  "init_tokens", "log_every_steps", "model_batch_rows", "buffer_tokens",
                  "shard_tokens", "kl_window_tokens")
_NONNEGATIVE_INTS = ("aux_k", "resample_every_tokens", "seed", "checkpoint_every_tokens",
                     "cache_tokens", "mlp_hidden")
_BOOLS = ("auxk", "init_encoder_as_decoder_transpose", "fit_encoder_scale", "resample_dead",
          "normalize_activations", "sparse_kernels", "drop_bos", "wandb", "progress_bar")
_FRACTIONS = ("lr_warmup_fraction", "lr_decay_fraction", "sparsity_warmup_fraction",
              "resample_stop_fraction")
_NONNEGATIVE_FLOATS = ("grad_clip", "l1_coefficient", "kl_beta", "target_l0", "aux_coefficient",
                       "l0_coefficient")
_POSITIVE_FLOATS = ("lr", "kl_scale", "target_l0_rate", "decoder_init_norm",
                    "jumprelu_bandwidth", "jumprelu_init_threshold",
                    "jumprelu_threshold_lr_factor")
# fmt: on


def _check_text(value: Any, name: str, what: str) -> str:
    if not isinstance(value, str):
        raise InputTypeError(
            f"{name} must be a string, got {type(value).__name__} {value!r:.60}; pass {what}"
        )
    if not value.strip():
        raise InputError(f"{name} is empty; pass {what}")
    return value


def _check_path(value: Any, name: str, allow_empty: bool) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InputTypeError(
            f"{name} must be a folder path (str or pathlib.Path), got "
            f"{type(value).__name__} {value!r:.60}"
        )
    if not allow_empty and not value.strip():
        raise InputError(f"{name} is empty; pass a folder path such as 'runs/sae'")
    return value


def _check_prefixes(value: Any, d_sae: int) -> tuple[int, ...]:
    """``matryoshka_prefixes`` as a tuple of ints, strictly increasing, ending at d_sae
    (or empty)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise InputTypeError(
            f"matryoshka_prefixes must be a sequence of ints, got {value!r:.60}; pass e.g. "
            f"({d_sae // 4}, {d_sae // 2}, {d_sae}), or () for the default"
        )
    prefixes = tuple(check_positive_int(m, "each of matryoshka_prefixes") for m in value)
    if prefixes and (
        any(b <= a for a, b in zip(prefixes, prefixes[1:], strict=False)) or prefixes[-1] != d_sae
    ):
        raise InputError(
            f"matryoshka_prefixes must increase strictly and end at d_sae={d_sae}, got "
            f"{prefixes}; pass e.g. ({d_sae // 4}, {d_sae // 2}, {d_sae}), or () for the default"
        )
    return prefixes


def _check_betas(value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputTypeError(
            f"adam_betas must be a pair (beta1, beta2), got {value!r:.60}; pass e.g. (0.9, 0.999)"
        )
    b1, b2 = (check_float(b, "each of adam_betas", minimum=0.0) for b in value)
    if b1 >= 1.0 or b2 >= 1.0:
        raise InputError(f"adam_betas must lie in [0, 1), got ({b1}, {b2}); pass e.g. (0.9, 0.999)")
    return (b1, b2)


def parse_count(text: str | int | float) -> int:
    """``"20M"`` / ``"1.5e6"`` / ``"64k"`` / ``4096`` -> an int.

    Raises:
        InputError: unparsable text, or a count that is not a whole finite number
            (``"1.5"``, ``"inf"``). (An ``InputError`` is a ``ValueError``, so argparse
            reports it as a usage error.)
    """
    if isinstance(text, bool):
        raise InputError(f"expected a count such as 4096, 20M or 1.5e6, got {text!r}")
    s = str(text).strip().replace("_", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(s[-1:].lower(), 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise InputError(f"expected a count such as 4096, 20M or 1.5e6, got {text!r}") from None
    if not math.isfinite(value) or abs(value - round(value)) > 1e-6 * max(1.0, abs(value)):
        raise InputError(f"expected a whole count such as 4096, 20M or 1.5e6, got {text!r}")
    return int(round(value))
