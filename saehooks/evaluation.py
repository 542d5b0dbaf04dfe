"""What splicing SAEs into a model costs: ``evaluate`` and per-token loss tables.

Every metric is a sum over tokens accumulated batch by batch in float64 on the CPU
(:class:`TokenSums`, :class:`ReconstructionSums`), so results do not depend on the
batch size, memory stays flat as the token count grows (one batch of logits at a
time), and the model may sit on any device. By default, positions holding the BOS
token keep their clean activation and are left out of every average (SAEs are trained
without them; BOS activations are outliers) -- ``exclude_bos=False`` turns that off.
``evaluate(..., ablate_bos=True)`` zero-ablates BOS positions as well, as SAELens does
(see :class:`EvalReport.ce_loss_score`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saehooks import checks, hooks, metrics
from saehooks.errors import InputError
from saehooks.feature_utils import (
    ReconstructionSums,
    TokenSums,
    broadcast_mask,
    check_flags,
    check_saes,
    position_mask,
)
from saehooks.feature_utils import bos_token_id as bos_token_id  # re-exported
from saehooks.feature_utils import check_sae as check_sae  # re-exported
from saehooks.feature_utils import check_tokens as check_tokens  # re-exported
from saehooks.models import block_index, model_device, n_layers
from saehooks.sae import SAE

UNITS = {
    "ce_loss_clean": "nats/token", "ce_loss_spliced": "nats/token",
    "ce_loss_zero_ablation": "nats/token", "ce_loss_mean_ablation": "nats/token",
    "ce_loss_increase": "nats/token", "ce_loss_score": "fraction",
    "ce_loss_score_mean_ablation": "fraction", "kl_div": "nats/token", "fvu": "fraction",
    "explained_variance": "fraction", "mse": "squared units/token", "l0": "latents/token",
    "l1": "activation/token", "dead_fraction": "fraction", "pca_rank": "components",
    "pca_fvu": "fraction", "n_tokens": "tokens",
}
_NOT_METRICS = ("hook_name", "feature_density", "spliced_hooks", "ablate_bos")


@dataclass
class EvalReport:
    """Reconstruction and downstream metrics of one SAE on one token set.

    Cross-entropies are next-token losses in nats/token averaged over predicted
    positions; activation metrics average over hook positions (BOS excluded by default).
    When several SAEs were evaluated together (``evaluate(model, [sae_a, sae_b], ...)``)
    the CE and KL fields are those of the model with all of them spliced in at once
    (``spliced_hooks``), and the reconstruction fields are this SAE's own, on the
    clean activations.
    """

    hook_name: str
    """Where the SAE was spliced."""
    ce_loss_clean: float
    """Loss of the unmodified model (nats/token)."""
    ce_loss_spliced: float
    """Loss with the activation replaced by the SAE reconstruction (nats/token)."""
    ce_loss_zero_ablation: float
    """Loss with the activation replaced by zeros (nats/token). BOS positions keep their
    clean activation unless ``ablate_bos``."""
    ce_loss_mean_ablation: float
    """Loss with the activation replaced by its mean over the token set (nats/token);
    BOS positions as in the zero ablation."""
    ce_loss_score: float
    """``(ce_zero − ce_spliced) / (ce_zero − ce_clean)`` (fraction; SAELens' "CE loss
    score"). By default the zero-ablation run keeps BOS positions clean, while SAELens
    zeroes every position, BOS included, which raises its baseline loss and so its score
    (shipped TopK SAE at blocks.2, 48 held-out rows: 0.9931 here, 0.9942 SAELens-style).
    Pass ``evaluate(..., ablate_bos=True)`` for SAELens' definition, to compare with
    published SAELens numbers."""
    ce_loss_score_mean_ablation: float
    """The same with the mean-ablation baseline (stricter; fraction)."""
    kl_div: float
    """Mean over positions of ``KL(p_clean ‖ p_spliced)`` (nats/token)."""
    fvu: float
    """``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` (fraction of variance unexplained)."""
    explained_variance: float
    """``1 − fvu``."""
    mse: float
    """Mean over tokens of ``‖x − x̂‖²`` (summed over d_in)."""
    l0: float
    """Mean number of active latents per token."""
    l1: float
    """Mean sum of latent activations per token."""
    dead_fraction: float
    """Fraction of latents that never fired on this token set."""
    pca_rank: int
    """``round(l0)``: components of the dense baseline."""
    pca_fvu: float
    """FVU of the best rank-``pca_rank`` PCA reconstruction of the same activations."""
    n_tokens: int
    """Hook positions evaluated (the CE averages use the predicting positions among them)."""
    feature_density: Tensor = field(repr=False)
    """``[d_sae]`` fraction of evaluated tokens on which each latent fired (CPU)."""
    spliced_hooks: tuple[str, ...] = ()
    """The hooks spliced together for the CE and KL numbers (this SAE's alone, or all
    the SAEs passed to one :func:`evaluate` call)."""
    ablate_bos: bool = False
    """Whether the zero- and mean-ablation runs replaced BOS positions too (SAELens'
    zero ablation) rather than keeping them clean."""

    @property
    def ce_loss_increase(self) -> float:
        """``ce_loss_spliced − ce_loss_clean`` (nats/token)."""
        return self.ce_loss_spliced - self.ce_loss_clean

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict (``feature_density`` and ``spliced_hooks``
        as lists), plus ``ce_loss_increase``."""
        out = dataclasses.asdict(self)
        out["feature_density"] = self.feature_density.tolist()
        out["spliced_hooks"] = list(self.spliced_hooks)
        out["ce_loss_increase"] = self.ce_loss_increase
        return out

    def to_frame(self) -> pd.DataFrame:
        """The scalar metrics as a table: one row per metric, with its unit."""
        rows = [(k, v, UNITS.get(k, "")) for k, v in self.to_dict().items()
                if k not in _NOT_METRICS]
        return pd.DataFrame(rows, columns=["metric", "value", "unit"]).set_index("metric")

    def __str__(self) -> str:
        table = self.to_frame().to_string(float_format=lambda v: f"{v:.4f}")
        others = [h for h in self.spliced_hooks if h != self.hook_name]
        lines = [f"EvalReport at {self.hook_name}"]
        if others:
            lines.append(f"(CE and KL with {', '.join(others)} spliced in too)")
        lines.append("ablation baselines replace BOS positions too (SAELens' definition)"
                     if self.ablate_bos else "ablation baselines keep BOS positions clean "
                     "(SAELens zeroes them: evaluate(..., ablate_bos=True))")
        return "\n".join(lines) + "\n" + table


# ---- runs -------------------------------------------------------------------------------
def _replace_where(mask: Tensor, new: Tensor | float) -> Callable:
    """Hook replacing the activation by ``new`` (broadcastable) where ``mask [batch, pos]``."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        value = torch.as_tensor(new, dtype=act.dtype, device=act.device)
        return torch.where(broadcast_mask(mask, act), value, act)

    return hook


def _savers(names: Sequence[str], store: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    def saver(name: str) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> None:
            store[name] = act.detach()
        return hook
    return [(name, saver(name)) for name in names]


def _stop_layer(model: nn.Module, names: Sequence[str]) -> int | None:
    """The layer after the last block holding one of ``names`` (None: run to the end)."""
    blocks = [block_index(n) for n in names]
    if any(b is None for b in blocks):
        return None
    last = max(b for b in blocks if b is not None) + 1
    return last if last < n_layers(model) else None


class BatchResult(NamedTuple):
    """One batch of a spliced run (tensors on the model's device)."""

    tokens: Tensor
    """``[batch, pos]`` token ids."""
    mask: Tensor
    """``[batch, pos]`` True where the SAEs are spliced and the position counts."""
    activations: dict[str, Tensor]
    """Per hook: the clean activation ``[batch, pos, d_in]``."""
    feature_acts: dict[str, Tensor]
    """Per hook: the SAE latents of the clean activation ``[batch, pos, d_sae]``."""
    reconstructions: dict[str, Tensor]
    """Per hook: the SAE output of the clean activation (stream dtype)."""
    logits_clean: Tensor
    """``[batch, pos, d_vocab]``."""
    logits_spliced: Tensor
    """``[batch, pos, d_vocab]``, all the SAEs spliced in at once."""


def _splice_hooks(saes: Sequence[SAE], mask: Tensor,
                  recons: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    """Hooks that replace each SAE's activation by its reconstruction where ``mask``.

    The first SAE hook that runs in a forward pass sees the clean activation, so it
    uses the reconstruction already computed; later ones encode what reaches them
    (the stream already changed by the SAEs before them).
    """
    state = {"first": True}

    def make(sae: SAE) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if state["first"]:
                state["first"] = False
                recon = recons[sae.cfg.hook_name]
            else:
                recon = sae.decode(sae.encode(act)).to(act.dtype)
            return torch.where(broadcast_mask(mask, act), recon, act)
        return hook

    return [(s.cfg.hook_name, make(s)) for s in saes]


def spliced_batches(model: nn.Module, sae: SAE | Sequence[SAE], tokens: Tensor,
                    batch_size: int = 8, exclude_bos: bool = True, progress: bool = True,
                    desc: str = "evaluating") -> Iterator[BatchResult]:
    """Run clean and spliced forward passes batch by batch (no gradients).

    Args:
        sae: one SAE or several at distinct hooks (spliced in together).
        tokens: ``[n_seq, pos]`` token ids, on any device (each batch moves to the model's).

    Yields:
        :class:`BatchResult` per batch of ``batch_size`` rows.
    """
    saes = check_saes(model, sae)
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    batch_size = checks.check_batch_size(batch_size)
    names = [s.cfg.hook_name for s in saes]
    device = model_device(model)
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc=desc, disable=not progress,
                      unit="batch"):
        batch = tokens[start:start + batch_size].to(device)
        mask = position_mask(model, batch, exclude_bos)
        store: dict[str, Tensor] = {}
        with torch.no_grad():
            logits_clean = model.run_with_hooks(batch, fwd_hooks=_savers(names, store))
            feats = {s.cfg.hook_name: s.encode(store[s.cfg.hook_name]) for s in saes}
            recons = {s.cfg.hook_name: s.decode(feats[s.cfg.hook_name]).to(
                store[s.cfg.hook_name].dtype) for s in saes}
            logits_spliced = model.run_with_hooks(
                batch, fwd_hooks=_splice_hooks(saes, mask, recons))
        yield BatchResult(batch, mask, store, feats, recons, logits_clean, logits_spliced)


@torch.no_grad()
@hooks.uses_model
def mean_activations(model: nn.Module, hook_names: Sequence[str], tokens: Tensor,
                     batch_size: int = 8, exclude_bos: bool = True) -> dict[str, Tensor]:
    """Mean clean activation at each hook over the (non-BOS) positions of ``tokens``.

    One forward pass per batch, stopped after the last of the hooks' blocks; sums in
    float64 on the CPU.

    Returns:
        ``{hook_name: mean [d] (or [n_heads, d_head] for per-head hooks)}``, float32
        on the model's device.

    Raises:
        InputError: no position counts (every position holds BOS).
    """
    tokens = checks.check_model_tokens(model, tokens)
    batch_size = checks.check_batch_size(batch_size)
    device = model_device(model)
    stop = _stop_layer(model, hook_names)
    kwargs = {} if stop is None else {"stop_at_layer": stop}
    totals: dict[str, Tensor] = {}
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(device)
        mask = position_mask(model, batch, exclude_bos)
        store: dict[str, Tensor] = {}
        model.run_with_hooks(batch, fwd_hooks=_savers(hook_names, store), **kwargs)
        for name in hook_names:
            part = store[name][mask].sum(0, dtype=torch.float64).cpu()
            totals[name] = part if name not in totals else totals[name] + part
        count += int(mask.sum())
    if count == 0:
        raise InputError("every position holds the BOS token, so there is no activation to "
                         "average; pass real text tokens or exclude_bos=False")
    return {name: (total / count).float().to(device) for name, total in totals.items()}


def mean_activation(model: nn.Module, hook_name: str, tokens: Tensor, batch_size: int = 8,
                    exclude_bos: bool = True) -> Tensor:
    """Mean activation ``[d]`` at ``hook_name`` (see :func:`mean_activations`)."""
    return mean_activations(model, [hook_name], tokens, batch_size, exclude_bos)[hook_name]


@hooks.uses_model
def evaluate(model: nn.Module, sae: SAE | Sequence[SAE], tokens: Tensor,
             batch_size: int = 8, exclude_bos: bool = True, progress: bool = True,
             ablate_bos: bool = False) -> EvalReport | dict[str, EvalReport]:
    """Measure what splicing ``sae`` (or several SAEs at once) into ``model`` costs.

    Four forward passes per batch (clean, spliced, zero-ablated, mean-ablated), plus
    a stopped-early pass for the mean activation. Definitions as in SAELens /
    DESIGN.md; the PCA baseline follows the dense-baseline comparisons of
    Bricken et al. 2023. All sums are float64 on the CPU; the model and the SAEs may
    be on any device (the same one), ``tokens`` anywhere.

    The one difference from SAELens' ``ce_loss_score``: by default the zero- and
    mean-ablation runs keep BOS positions clean, as the spliced run does, so all three
    change the same positions; SAELens zeroes every position in its ablation run.
    ``ablate_bos=True`` gives SAELens' definition.

    Args:
        model: a hooked TransformerLens model.
        sae: an SAE (attaches at ``sae.cfg.hook_name``), or a list of SAEs at distinct
            hooks: they are spliced in (and ablated) together for the CE and KL numbers,
            and each gets its own reconstruction metrics on the clean activations.
        tokens: ``[n_seq, pos]`` token ids, ``pos >= 2`` and at most the model's
            ``n_ctx`` (e.g. :func:`saehooks.load_eval_tokens`).
        batch_size: rows per forward pass; results do not depend on it.
        exclude_bos: keep BOS positions clean and out of the averages.
        progress: show a tqdm progress bar.
        ablate_bos: replace BOS positions too in the zero- and mean-ablation runs
            (SAELens' zero ablation); only matters with ``exclude_bos``.

    Returns:
        An :class:`EvalReport` for one SAE; for a list, ``{hook_name: EvalReport}`` in
        the list's order, sharing the joint CE and KL numbers.

    Raises:
        InputTypeError: ``sae`` is not an SAE or list of SAEs; malformed ``tokens`` or
            flags.
        InputError: an empty list or two SAEs at one hook; ``tokens`` of the wrong
            shape, too long for the model or outside its vocabulary; ``batch_size < 1``;
            no position to evaluate.
        HookNameError, ValueError: see :func:`saehooks.hooks.check_compatible`.
    """
    check_flags(exclude_bos=exclude_bos, progress=progress, ablate_bos=ablate_bos)
    saes = check_saes(model, sae)
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    batch_size = checks.check_batch_size(batch_size)
    names = [s.cfg.hook_name for s in saes]
    means = mean_activations(model, names, tokens, batch_size, exclude_bos)
    losses = TokenSums("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl")
    recon = {s.cfg.hook_name: ReconstructionSums(s.cfg.d_in, s.cfg.d_sae) for s in saes}
    for r in spliced_batches(model, saes, tokens, batch_size, exclude_bos, progress):
        ablated = torch.ones_like(r.mask) if ablate_bos else r.mask
        with torch.no_grad():
            logits_zero = model.run_with_hooks(
                r.tokens, fwd_hooks=[(n, _replace_where(ablated, 0.0)) for n in names])
            logits_mean = model.run_with_hooks(
                r.tokens, fwd_hooks=[(n, _replace_where(ablated, means[n])) for n in names])
        predict = r.mask[:, :-1]
        losses.add(
            ce_clean=metrics.next_token_ce(r.logits_clean, r.tokens)[predict],
            ce_spliced=metrics.next_token_ce(r.logits_spliced, r.tokens)[predict],
            ce_zero=metrics.next_token_ce(logits_zero, r.tokens)[predict],
            ce_mean=metrics.next_token_ce(logits_mean, r.tokens)[predict],
            kl=metrics.kl_div(r.logits_clean[:, :-1], r.logits_spliced[:, :-1])[predict])
        for s in saes:
            name, d_in = s.cfg.hook_name, s.cfg.d_in
            recon[name].add(r.activations[name][r.mask].reshape(-1, d_in),
                            r.reconstructions[name][r.mask].reshape(-1, d_in),
                            r.feature_acts[name][r.mask].reshape(-1, s.cfg.d_sae))
    if losses.count == 0:
        raise InputError("no position predicts a token (every position but the last holds "
                         "BOS); pass longer sequences of real text, or exclude_bos=False")
    ce = losses.means()
    joint = {
        "ce_loss_clean": ce["ce_clean"], "ce_loss_spliced": ce["ce_spliced"],
        "ce_loss_zero_ablation": ce["ce_zero"], "ce_loss_mean_ablation": ce["ce_mean"],
        "ce_loss_score": metrics.ce_loss_score(ce["ce_clean"], ce["ce_spliced"],
                                               ce["ce_zero"]),
        "ce_loss_score_mean_ablation": metrics.ce_loss_score(
            ce["ce_clean"], ce["ce_spliced"], ce["ce_mean"]),
        "kl_div": ce["kl"],
    }
    reports = {name: EvalReport(hook_name=name, **joint, **recon[name].result(),
                                spliced_hooks=tuple(names), ablate_bos=ablate_bos)
               for name in names}
    return reports[names[0]] if isinstance(sae, SAE) else reports


@hooks.uses_model
def loss_increase_per_token(model: nn.Module, sae: SAE | Sequence[SAE], tokens: Tensor,
                            batch_size: int = 8, exclude_bos: bool = True,
                            progress: bool = True) -> pd.DataFrame:
    """Per predicted token: clean and spliced loss, and their difference.

    Args:
        model: a hooked TransformerLens model (any device).
        sae: an SAE, or a list of SAEs at distinct hooks spliced in together.
        tokens: ``[n_seq, pos]`` token ids, ``pos >= 2``.
        batch_size: rows per forward pass.
        exclude_bos: keep BOS positions clean and leave out the predictions made there.
        progress: show a tqdm progress bar.

    Returns:
        DataFrame with columns ``sequence``, ``position`` (of the predicted token),
        ``token`` (its string), ``loss_clean``, ``loss_spliced``, ``delta``
        (nats), one row per predicted token whose predicting position counts.

    Raises:
        As :func:`evaluate`.
    """
    check_flags(exclude_bos=exclude_bos, progress=progress)
    frames = []
    offset = 0
    for r in spliced_batches(model, sae, tokens, batch_size, exclude_bos, progress,
                             desc="per-token losses"):
        clean = metrics.next_token_ce(r.logits_clean, r.tokens)
        spliced = metrics.next_token_ce(r.logits_spliced, r.tokens)
        seq, pos = r.mask[:, :-1].nonzero(as_tuple=True)
        offset += r.tokens.shape[0]
        if seq.numel() == 0:  # every predicting position of this batch holds BOS
            continue
        predicted = r.tokens[seq, pos + 1]
        frames.append(pd.DataFrame({
            "sequence": (seq + offset - r.tokens.shape[0]).cpu().numpy(),
            "position": (pos + 1).cpu().numpy(),
            "token": model.to_str_tokens(predicted.cpu()),
            "loss_clean": clean[seq, pos].cpu().numpy(),
            "loss_spliced": spliced[seq, pos].cpu().numpy(),
        }))
    if not frames:
        raise InputError("no position predicts a token (every position but the last holds "
                         "BOS); pass longer sequences of real text, or exclude_bos=False")
    table = pd.concat(frames, ignore_index=True)
    table["delta"] = table["loss_spliced"] - table["loss_clean"]
    return table
