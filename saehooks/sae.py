"""The sparse autoencoder: configuration, parameters, encode / decode / forward.

Tensor names, shapes and formulas follow SAELens (v6):

* ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``,
  ``threshold [d_sae]`` (JumpReLU), ``b_gate``/``r_mag``/``b_mag [d_sae]`` (gated);
* encode: ``acts = act_fn((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)``;
* decode: ``x_hat = acts @ W_dec + b_dec``.

The ``mlp`` architecture (the seed's example SAE: one hidden layer of width ``d_hidden``
on each side, ReLU latents, L1 on them in training) is saehooks' own; SAELens has no
such class. Its tensors:

* ``W_enc_in [d_in, d_hidden]``, ``b_enc_hidden [d_hidden]`` (encoder's first layer),
  ``W_enc [d_hidden, d_sae]``, ``b_enc [d_sae]`` (encoder's second layer);
* ``W_dec [d_sae, d_hidden]``, ``b_dec_hidden [d_hidden]`` (decoder's first layer),
  ``W_dec_out [d_hidden, d_in]``, ``b_dec [d_in]`` (decoder's second layer);
* encode: ``acts = relu(relu((x - b_dec * apply_b_dec_to_input) @ W_enc_in +
  b_enc_hidden) @ W_enc + b_enc)``;
* decode: ``x_hat = relu(acts @ W_dec + b_dec_hidden) @ W_dec_out + b_dec``.

Its decoder is not a dictionary of directions: what a latent adds to the output depends
on the other latents, so steering along "its direction" is undefined
(:attr:`SAE.linear_decoder`); ablating or clamping its latents at the hook points works.

The module carries hook points (``hook_sae_input`` ... ``hook_sae_output``) so that,
once attached to a model with :func:`saehooks.attach`, its internals can be cached
and intervened on like any TransformerLens hook point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import activation_fns as activations
from saehooks.errors import DeviceError, InputError, InputTypeError

ARCHITECTURES = ("relu", "topk", "jumprelu", "gated", "mlp")
LINEAR_DECODER_ARCHITECTURES = ("relu", "topk", "jumprelu", "gated")
"""Architectures whose decoder is ``acts @ W_dec + b_dec`` (a dictionary of directions)."""
HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` / ``"torch.bfloat16"`` / ``"bfloat16"`` -> ``"bfloat16"``.

    Raises:
        InputTypeError: ``dtype`` is neither a ``torch.dtype`` nor a string.
        InputError: a dtype an SAE cannot hold (the message lists those it can).
    """
    if not isinstance(dtype, (str, torch.dtype)):
        raise InputTypeError(
            f"an SAE dtype is a torch.dtype or its name, got {dtype!r}; use one of {sorted(DTYPES)}"
        )
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InputError(f"unsupported SAE dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return name


@dataclass
class SAEConfig:
    """What an SAE is and where it belongs. Serialised as SAELens' v6 ``cfg.json``.

    Every field is checked at construction (also by :meth:`replace`), so a config
    either means one SAE or is refused: sizes are ``int`` (not ``bool``, float or
    string), flags are ``bool``, and options that an architecture would ignore or that
    no file format can store (``k`` or ``rescale_acts_by_decoder_norm`` on a non-top-k
    SAE) are errors rather than silently different SAEs after a save and load.

    Raises:
        InputTypeError: a field of the wrong type (the message names the field).
        InputError: a value out of range, an unknown architecture or dtype, or an
            option the architecture does not have.
        DeviceError: ``device`` does not exist on this machine (e.g. ``"cuda"`` without
            a GPU); the message lists the devices there are.
    """

    d_in: int
    """Width of the activation the SAE reads and writes (the hook's last dimension)."""
    d_sae: int
    """Number of latents (dictionary size)."""
    architecture: str = "relu"
    """Inference activation: ``"relu"``, ``"topk"``, ``"jumprelu"`` or ``"gated"``; or
    ``"mlp"``, ReLU latents between a non-linear encoder and decoder with one hidden
    layer of width ``d_hidden`` each (see the module docstring).
    A BatchTopK SAE trains as batch top-k and runs as ``"jumprelu"``."""
    k: int | None = None
    """Latents kept per token, ``1 <= k <= d_sae`` (``"topk"`` only; None otherwise)."""
    hook_name: str = ""
    """TransformerLens hook point the SAE attaches to, e.g. ``blocks.2.hook_resid_post``."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (SAELens' default)."""
    rescale_acts_by_decoder_norm: bool = False
    """TopK only (SAELens' ``TopKSAEConfig``): multiply pre-activations by
    ``‖W_dec[j]‖`` before the top-k and divide activations by it before decoding.
    Other architectures get the same effect exactly by folding the norms into the
    weights (:func:`saehooks.io.fold_W_dec_norm`)."""
    dtype: str = "float32"
    """Dtype of the parameters; the SAE computes in it."""
    device: str = "cpu"
    """Device of the parameters."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance: ``model_name``, ``model_processing`` (compatibility mode, folded
    LayerNorm, centred weights), ``context_size``, ``prepend_bos``, ``training`` ..."""
    d_hidden: int | None = None
    """Width of the hidden layer on each side of an ``"mlp"`` SAE (``mlp`` only, where it
    is required; None otherwise)."""

    def __post_init__(self) -> None:
        from saehooks import checks

        self.architecture = checks.check_choice(
            self.architecture, "SAEConfig.architecture", ARCHITECTURES
        )
        self.d_in = checks.check_positive_int(self.d_in, "SAEConfig.d_in")
        self.d_sae = checks.check_positive_int(self.d_sae, "SAEConfig.d_sae")
        if self.architecture == "topk":
            if self.k is None:
                raise InputError(
                    f"a topk SAE needs k (latents kept per token), 1 <= k <= "
                    f"d_sae={self.d_sae}; pass e.g. k=32"
                )
            self.k = checks.check_int(self.k, "SAEConfig.k", minimum=1, maximum=self.d_sae)
        elif self.k is not None:
            raise InputError(
                f"SAEConfig.k={self.k!r} is only used by architecture='topk', "
                f"and this SAE is {self.architecture!r}; drop k, or pass "
                "architecture='topk'"
            )
        if self.architecture == "mlp":
            if self.d_hidden is None:
                raise InputError(
                    "an mlp SAE needs d_hidden (the width of the hidden layer on each "
                    f"side); pass e.g. d_hidden={2 * self.d_in} (2 * d_in)"
                )
            self.d_hidden = checks.check_positive_int(self.d_hidden, "SAEConfig.d_hidden")
        elif self.d_hidden is not None:
            raise InputError(
                f"SAEConfig.d_hidden={self.d_hidden!r} is only used by architecture='mlp', "
                f"and this SAE is {self.architecture!r}; drop d_hidden, or pass "
                "architecture='mlp'"
            )
        if not isinstance(self.hook_name, str):
            raise InputTypeError(
                f"SAEConfig.hook_name must be a string such as "
                f"'blocks.2.hook_resid_post', got {self.hook_name!r}"
            )
        self.apply_b_dec_to_input = checks.check_bool(
            self.apply_b_dec_to_input, "SAEConfig.apply_b_dec_to_input"
        )
        self.rescale_acts_by_decoder_norm = checks.check_bool(
            self.rescale_acts_by_decoder_norm, "SAEConfig.rescale_acts_by_decoder_norm"
        )
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise InputError(
                f"rescale_acts_by_decoder_norm=True is a top-k option (SAELens stores it for "
                f"topk SAEs only), and this SAE is {self.architecture!r}; for a "
                f"{self.architecture} SAE fold the decoder norms into the weights instead "
                "(saehooks.io.fold_W_dec_norm), which computes the same reconstruction"
            )
        self.dtype = dtype_name(self.dtype)
        self.device = str(checks.check_device(self.device, "SAEConfig.device"))
        if not isinstance(self.metadata, dict):
            raise InputTypeError(
                f"SAEConfig.metadata must be a dict of provenance, got "
                f"{type(self.metadata).__name__}"
            )

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (checked as at construction)."""
        return dataclasses.replace(self, **changes)


SPARSE_DECODE_MAX_DENSITY = 1 / 16
"""Codes with at most this fraction of non-zeros are decoded sparsely (measured on CPU:
at d_in 256, 4096 tokens, k 32 the gather-sum took 0.10 / 0.16 / 0.69 s at d_sae 4k / 16k
/ 64k against 0.18 / 0.70 / 2.4 s for the dense product; benchmarks/README.md)."""


def sparse_decode(acts: Tensor, W_dec: Tensor) -> Tensor | None:
    """``acts @ W_dec`` computed over the non-zeros of ``acts`` only.

    Args:
        acts: latent activations ``[..., d_sae]``.
        W_dec: decoder ``[d_sae, d_in]`` (same dtype and device).

    Returns:
        ``[..., d_in]`` (an ``embedding_bag`` sum of ``acts[t, j] · W_dec[j]`` over each
        token's non-zero latents ``j``), or None when more than
        :data:`SPARSE_DECODE_MAX_DENSITY` of the entries are non-zero (then the dense
        product is faster).
    """
    flat = acts.reshape(-1, acts.shape[-1])
    if flat.numel() == 0:
        return None
    rows, cols = flat.nonzero(as_tuple=True)
    if rows.numel() > SPARSE_DECODE_MAX_DENSITY * flat.numel():
        return None
    counts = torch.bincount(rows, minlength=flat.shape[0])
    offsets = torch.cumsum(counts, 0) - counts
    out = nn.functional.embedding_bag(
        cols, W_dec, offsets, mode="sum", per_sample_weights=flat[rows, cols]
    )
    return out.reshape(*acts.shape[:-1], W_dec.shape[1])


def decode_topk(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """``Σ_i relu(values[t, i]) · W_dec[indices[t, i]]`` per row: a TopK code decoded from
    ``pre.topk``'s output without building the dense ``[n, d_sae]`` code.

    Args:
        values: the k largest pre-activations per row ``[n, k]``.
        indices: their latents ``[n, k]``.
        W_dec: decoder ``[d_sae, d_in]``.

    Returns:
        ``[n, d_in]`` (no ``b_dec``), bit for bit :func:`sparse_decode` of the same code:
        each row's latents are summed in ascending order, and the zeros ReLU leaves add
        exact zeros.
    """
    indices, order = indices.sort(dim=-1)
    weights = torch.relu(values.gather(-1, order))
    n, k = indices.shape
    offsets = torch.arange(0, n * k, k, device=indices.device)
    return nn.functional.embedding_bag(
        indices.reshape(-1), W_dec, offsets, mode="sum", per_sample_weights=weights.reshape(-1)
    )


class HookPoint(nn.Module):
    """Identity module that runs forward hooks: the SAE's own hook points.

    Standalone, ``add_hook(fn)`` registers ``fn(tensor, hook=self) -> tensor | None``.
    When the SAE is attached to a TransformerLens model, :mod:`saehooks.hooks`
    replaces these with the model's own hook-point class so that the model's
    ``run_with_cache`` / ``run_with_hooks`` / ``hooks`` reach them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def add_hook(self, fn: Callable, dir: str = "fwd", **_: Any):
        """Register ``fn(tensor, hook=self)``; returns the removable handle."""
        if dir != "fwd":
            raise NotImplementedError("standalone SAE hook points run forward hooks only")
        return self.register_forward_hook(lambda mod, inp, out: fn(out, hook=self))

    def has_hooks(self, dir: str = "fwd", **_: Any) -> bool:
        """Whether a forward hook is registered (the TransformerLens HookPoint method)."""
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def forward(self, x: Tensor) -> Tensor:
        return x


class SAE(nn.Module):
    """A sparse autoencoder with SAELens tensor names (and, for ``mlp``, saehooks' own
    names for its hidden layers: see the module docstring).

    Args:
        cfg: the configuration (see :class:`SAEConfig`).

    Parameters are created as zeros; load weights with :func:`saehooks.load_sae`,
    ``load_state_dict``, or train them with :func:`saehooks.train_sae`.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kw = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        if cfg.architecture == "mlp":
            h = cfg.d_hidden
            assert h is not None  # SAEConfig requires it
            self.W_enc_in = nn.Parameter(torch.zeros(cfg.d_in, h, **kw))
            self.b_enc_hidden = nn.Parameter(torch.zeros(h, **kw))
            self.W_enc = nn.Parameter(torch.zeros(h, cfg.d_sae, **kw))
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
            self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, h, **kw))
            self.b_dec_hidden = nn.Parameter(torch.zeros(h, **kw))
            self.W_dec_out = nn.Parameter(torch.zeros(h, cfg.d_in, **kw))
        else:
            self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
            self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        if cfg.architecture == "gated":
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
            self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
            self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        for name in HOOK_NAMES:
            setattr(self, name, HookPoint())
        self.use_error_term = False
        """When True, ``forward`` adds the (stop-gradient) reconstruction error back,
        so that with no intervention the output equals the input."""
        self.feature_density: Tensor | None = None
        """``[d_sae]`` firing frequency recorded with the SAE's files (SAELens'
        ``sparsity.safetensors``), or None; saved back with it."""

    # ---- properties -----------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def linear_decoder(self) -> bool:
        """Whether the decoder is ``acts @ W_dec + b_dec``, so that latent ``j`` adds
        ``a_j · W_dec[j]`` whatever the others do (False for ``mlp``: no direction per
        latent to steer along or read logits from)."""
        return self.cfg.architecture in LINEAR_DECODER_ARCHITECTURES

    def __repr__(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.architecture == "topk" else ""
        k += f", d_hidden={c.d_hidden}" if c.architecture == "mlp" else ""
        return (
            f"SAE({c.architecture}{k}, d_in={c.d_in}, d_sae={c.d_sae}, "
            f"hook_name={c.hook_name!r}, dtype={c.dtype}, device={self.device})"
        )

    # ---- math ----------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputTypeError(
                f"the SAE takes a tensor [..., d_in={self.cfg.d_in}], got {type(x).__name__}"
            )
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            raise InputError(
                f"the SAE reads activations of width d_in={self.cfg.d_in} "
                f"(hook {self.cfg.hook_name!r}), got shape {tuple(x.shape)}; pass "
                f"[..., {self.cfg.d_in}] activations from the hook it was trained on"
            )
        if x.device != self.device:
            raise DeviceError(
                f"the input is on {x.device} but the SAE is on {self.device}; "
                f"move one of them, e.g. sae.to({str(x.device)!r})"
            )

    def encode_pre(self, x: Tensor) -> Tensor:
        """Pre-activations ``(x - b_dec) @ W_enc + b_enc``: ``[..., d_in] -> [..., d_sae]``.

        For a gated SAE this is the gate path (``b_gate`` in place of ``b_enc``); for an
        ``mlp`` SAE the second encoder layer's ``h @ W_enc + b_enc`` with ``h =
        relu((x - b_dec) @ W_enc_in + b_enc_hidden)`` ``[..., d_hidden]``.

        Raises:
            InputError: ``x`` is not ``[..., d_in]``.
            DeviceError: ``x`` is on another device than the SAE.
        """
        self._check_input(x)
        x = x.to(self.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.cfg.architecture == "mlp":
            x = torch.relu(x @ self.W_enc_in + self.b_enc_hidden)
        bias = self.b_gate if self.cfg.architecture == "gated" else self.b_enc
        pre = x @ self.W_enc + bias
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activation(self, pre: Tensor, x: Tensor | None = None) -> Tensor:
        """Apply the architecture's activation function to pre-activations."""
        arch = self.cfg.architecture
        if arch in ("relu", "mlp"):
            return activations.relu(pre)
        if arch == "topk":
            return activations.topk(pre, self.cfg.k)
        if arch == "jumprelu":
            return activations.jumprelu(pre, self.threshold)
        # gated: the magnitude path shares W_enc, rescaled by exp(r_mag)
        centred = pre - self.b_gate
        return activations.gated(pre, centred * self.r_mag.exp() + self.b_mag)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations: ``[..., d_in] -> [..., d_sae]`` (no hooks run).

        Raises:
            InputError, DeviceError: see :meth:`encode_pre`.
        """
        return self.activation(self.encode_pre(x))

    def decode(self, acts: Tensor) -> Tensor:
        """Reconstruction ``acts @ W_dec + b_dec``: ``[..., d_sae] -> [..., d_in]``.

        Sparse codes (at most 1/16 of the entries non-zero, e.g. TopK latents) are
        decoded as a gather-sum over the non-zeros (:func:`sparse_decode`), so the cost
        grows with ``L0 · d_in`` rather than ``d_sae · d_in``; equal to the dense product
        up to float summation order. Not while ``acts`` carries a gradient (the dense
        product's gradient reaches every latent).

        ``mlp``: ``relu(acts @ W_dec + b_dec_hidden) @ W_dec_out + b_dec``, always dense.
        """
        return self._decode(acts, sparse=None)

    def _may_decode_sparsely(self, acts: Tensor) -> bool:
        """Sparse decoding is allowed for a linear decoder unless a gradient flows into
        the latents (the dense product's gradient reaches every latent, the sparse one
        only the non-zeros); never for ``mlp``, whose first decoder layer is followed by
        a bias and a ReLU."""
        if not self.linear_decoder:
            return False
        return not (torch.is_grad_enabled() and acts.requires_grad)

    def _decode(self, acts: Tensor, sparse: bool | None) -> Tensor:
        """:meth:`decode`; ``sparse=None`` decides by whether ``acts`` carries a gradient,
        ``True``/``False`` force the path (the error term decodes as the hooked path did,
        so an edit that changes nothing leaves the output bit-for-bit unchanged)."""
        if sparse is None:
            sparse = self._may_decode_sparsely(acts)
        acts = acts.to(self.dtype)
        if self.cfg.architecture == "mlp":  # never sparse: a bias and a ReLU follow W_dec
            return torch.relu(acts @ self.W_dec + self.b_dec_hidden) @ self.W_dec_out + self.b_dec
        if self.cfg.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        if sparse:
            out = sparse_decode(acts, self.W_dec)
            if out is not None:
                return out + self.b_dec
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` through the hook points: ``[..., d_in] -> [..., d_in]``.

        The path runs ``hook_sae_input -> encode_pre -> hook_sae_acts_pre -> activation
        -> hook_sae_acts_post -> decode -> hook_sae_recons``; a hook on any of them
        changes what follows it. Without ``use_error_term`` the output is the (hooked)
        reconstruction. With it, the output is

            ``recons + stopgrad(x - decode(encode(x)))``

        where ``recons`` comes from the hooked path and the error term from the raw
        input with no hooks (SAELens' semantics). With no hook the output equals ``x``
        to float rounding, and an edit at any hook point moves it by exactly what the
        edit changes in ``recons``; ``hook_sae_error`` sees (and may replace) the
        error term, ``hook_sae_output`` the final output.

        Raises:
            InputError, DeviceError: see :meth:`encode_pre`.
        """
        x = x.to(self.dtype)
        fast = self._topk_decode_unhooked(x)
        if fast is not None:  # nothing on the path: recons is the clean reconstruction
            recons = self.hook_sae_recons(fast)
            if not self.use_error_term:
                return self.hook_sae_output(recons)
            return self.hook_sae_output(recons + self.hook_sae_error((x - recons).detach()))
        raw = x
        x = self.hook_sae_input(x)
        pre = self.hook_sae_acts_pre(self.encode_pre(x))
        acts = self.hook_sae_acts_post(self.activation(pre))
        sparse = self._may_decode_sparsely(acts)
        recons = self.hook_sae_recons(self._decode(acts, sparse))
        if not self.use_error_term:
            return self.hook_sae_output(recons)
        with torch.no_grad():
            if self._path_is_hooked():
                clean = self._decode(self.encode(raw), sparse)
            else:  # nothing could have changed the path: its output is the clean one
                clean = recons
            error = raw - clean
        return self.hook_sae_output(recons + self.hook_sae_error(error))

    def _topk_decode_unhooked(self, x: Tensor) -> Tensor | None:
        """The reconstruction of a TopK SAE decoded straight from ``pre.topk``'s values
        and indices, or None where that shortcut does not apply (another architecture,
        a hook on the path, a gradient, ``rescale_acts_by_decoder_norm``, or k above
        :data:`SPARSE_DECODE_MAX_DENSITY` of ``d_sae``).

        Bit for bit what :meth:`forward`'s general path gives: the latents of each token
        are summed in ascending order, as :func:`sparse_decode` sums a token's non-zeros,
        and the zeros ReLU leaves add exact zeros. It skips the dense ``[..., d_sae]``
        code, its scatter and the scan for its non-zeros (``benchmarks/splice_overhead.py``).
        """
        c = self.cfg
        if (
            c.architecture != "topk"
            or c.rescale_acts_by_decoder_norm
            or c.k > SPARSE_DECODE_MAX_DENSITY * c.d_sae
            or (torch.is_grad_enabled() and (x.requires_grad or self.W_enc.requires_grad))
            or self._path_is_hooked()
        ):
            return None
        pre = self.encode_pre(x)
        if not 1 <= c.k <= pre.shape[-1] or pre.numel() == 0:
            return None
        values, indices = pre.reshape(-1, c.d_sae).topk(c.k, dim=-1, sorted=False)
        out = decode_topk(values, indices, self.W_dec)
        return out.reshape(*x.shape[:-1], c.d_in) + self.b_dec

    def _path_is_hooked(self) -> bool:
        """Whether a hook sits on the input-to-reconstruction path (then the clean
        reconstruction must be recomputed for the error term)."""
        for name in (
            "hook_sae_input",
            "hook_sae_acts_pre",
            "hook_sae_acts_post",
            "hook_sae_recons",
        ):
            if getattr(self, name).has_hooks(dir="fwd"):
                return True
        return False

    # ---- utilities -----------------------------------------------------------
    def hook_points(self) -> dict[str, nn.Module]:
        """``{"hook_sae_input": module, ...}`` for the six hook points."""
        return {name: getattr(self, name) for name in HOOK_NAMES}

    def to(self, *args: Any, **kwargs: Any) -> SAE:  # keep cfg in step with the tensors
        out = super().to(*args, **kwargs)
        self.cfg.dtype = dtype_name(self.W_enc.dtype)
        self.cfg.device = str(self.W_enc.device)
        return out

    def save(self, path: str, format: str = "saelens", overwrite: bool = False) -> None:
        """Write the SAE to the folder ``path``, replacing it whole or not at all (see
        :func:`saehooks.io.save_sae`, which also says what ``overwrite`` allows)."""
        from saehooks.io import save_sae

        save_sae(self, path, format=format, overwrite=overwrite)
