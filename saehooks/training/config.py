"""``TrainConfig``: every knob of SAE training, one documented field each.

The field docstrings are read from this file's source (:func:`field_docs`), so that
the command-line flags of ``saehooks train`` and their help texts are generated from
the dataclass and never drift from it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("topk", "batchtopk", "l1", "kl")
B_DEC_INITS = ("zeros", "mean", "geometric_median")
MATMUL_DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """How to train one SAE. Token counts are activation tokens (BOS positions excluded)."""

    hook_name: str = field(default="blocks.2.hook_resid_post", metadata={"flag": "hook"})
    """TransformerLens hook point whose activations the SAE reads and reconstructs."""
    architecture: str = "topk"
    """Sparsity objective: ``topk`` / ``batchtopk`` (Gao et al. 2024; Bussmann et al.
    2024), ``l1`` (Anthropic April 2024) or ``kl`` (Ng 2011 average-activation KL)."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Latents per token for ``topk``; mean latents per token for ``batchtopk``."""
    total_tokens: int = field(default=20_000_000, metadata={"flag": "tokens"})
    """Activation tokens to train on (accepts ``20M``, ``1.5e6``)."""
    batch_size: int = 4096
    """Activation tokens per optimiser step."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
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
    target_l0: float = 0.0
    """``l1``/``kl``: if > 0, adapt the coefficient (λ or β) multiplicatively after its
    warm-up so that the batch L0 tracks this target (a Lagrangian-style controller)."""
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
    matmul_dtype: str = "bfloat16"
    """Dtype of the dense encoder matmul (``float32`` or ``bfloat16``); parameters,
    Adam state and the sparse products stay float32."""
    sparse_kernels: bool = True
    """``topk``/``batchtopk``: sparse decoder and encoder gradients (``embedding_bag``)
    instead of dense ``[batch, d_sae]`` matmuls; same result, several times faster."""
    seed: int = 0
    """Seed of initialisation, data order and resampling."""
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of "
                             f"{ARCHITECTURES}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"unknown b_dec_init {self.b_dec_init!r}; choose one of "
                             f"{B_DEC_INITS}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got "
                             f"{self.matmul_dtype!r}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"{self.architecture} needs 1 <= k <= d_sae={self.d_sae}, "
                             f"got k={self.k}")
        if self.batch_size < 1 or self.total_tokens < self.batch_size:
            raise ValueError(f"need 1 <= batch_size <= total_tokens, got batch_size="
                             f"{self.batch_size}, total_tokens={self.total_tokens}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)

    @property
    def total_steps(self) -> int:
        """Optimizer steps: ``ceil(total_tokens / batch_size)``."""
        return math.ceil(self.total_tokens / self.batch_size)

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether decoder rows are kept at unit norm (all objectives but ``l1``)."""
        return self.architecture != "l1"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        raw = dict(raw)
        if "adam_betas" in raw:
            raw["adam_betas"] = tuple(raw["adam_betas"])
        return cls(**raw)


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source.

    Returns:
        ``{field name: docstring with whitespace collapsed}``.
    """
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def parse_count(text: str | int | float) -> int:
    """``"20M"`` / ``"1.5e6"`` / ``"64k"`` / ``4096`` -> an int.

    Raises:
        ValueError: unparsable text.
    """
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().replace("_", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(s[-1:].lower(), 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise ValueError(f"expected a count such as 4096, 20M or 1.5e6, got {text!r}") from None
    return int(round(value))
