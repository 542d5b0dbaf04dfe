"""What splicing an SAE into a model costs: ``evaluate`` and per-token loss tables.

Every metric is a sum over tokens accumulated batch by batch in float64, so results
do not depend on the batch size and memory stays flat as the token count grows
(one batch of logits at a time). By default, positions holding the BOS token keep
their clean activation and are left out of every average (SAEs are trained
without them; BOS activations are outliers) -- ``exclude_bos=False`` turns that off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saehooks import metrics
from saehooks.hooks import capture, check_compatible, replace_where, run_with_hook
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


@dataclass
class EvalReport:
    """Reconstruction and downstream metrics of one SAE on one token set.

    Cross-entropies are next-token losses in nats/token averaged over predicted
    positions; activation metrics average over hook positions (BOS excluded by default).
    """

    hook_name: str
    """Where the SAE was spliced."""
    ce_loss_clean: float
    """Loss of the unmodified model (nats/token)."""
    ce_loss_spliced: float
    """Loss with the activation replaced by the SAE reconstruction (nats/token)."""
    ce_loss_zero_ablation: float
    """Loss with the activation replaced by zeros (nats/token)."""
    ce_loss_mean_ablation: float
    """Loss with the activation replaced by its mean over the token set (nats/token)."""
    ce_loss_score: float
    """``(ce_zero − ce_spliced) / (ce_zero − ce_clean)`` (SAELens; fraction)."""
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
    """``[d_sae]`` fraction of evaluated tokens on which each latent fired."""

    @property
    def ce_loss_increase(self) -> float:
        """``ce_loss_spliced − ce_loss_clean`` (nats/token)."""
        return self.ce_loss_spliced - self.ce_loss_clean

    def to_dict(self) -> dict[str, Any]:
        """Scalar metrics as a dict (``feature_density`` as a list)."""
        out = dataclasses.asdict(self)
        out["feature_density"] = self.feature_density.tolist()
        out["ce_loss_increase"] = self.ce_loss_increase
        return out

    def to_frame(self) -> pd.DataFrame:
        """The scalar metrics as a table: one row per metric, with its unit."""
        rows = [(k, v, UNITS.get(k, "")) for k, v in self.to_dict().items()
                if k not in ("feature_density", "hook_name")]
        return pd.DataFrame(rows, columns=["metric", "value", "unit"]).set_index("metric")

    def __str__(self) -> str:
        table = self.to_frame().to_string(float_format=lambda v: f"{v:.4f}")
        return f"EvalReport at {self.hook_name}\n{table}"


class BatchResult(NamedTuple):
    """One batch of a spliced run."""

    tokens: Tensor
    """``[batch, pos]`` token ids."""
    mask: Tensor
    """``[batch, pos]`` True where the SAE is spliced and the position counts."""
    activation: Tensor
    """``[batch, pos, d_in]`` clean activation at the hook."""
    feature_acts: Tensor
    """``[batch, pos, d_sae]`` SAE latents."""
    reconstruction: Tensor
    """``[batch, pos, d_in]`` SAE output (stream dtype)."""
    logits_clean: Tensor
    """``[batch, pos, d_vocab]``."""
    logits_spliced: Tensor
    """``[batch, pos, d_vocab]``."""


def bos_token_id(model: nn.Module) -> int | None:
    tokenizer = getattr(model, "tokenizer", None)
    return None if tokenizer is None else tokenizer.bos_token_id


def position_mask(model: nn.Module, tokens: Tensor, exclude_bos: bool = True) -> Tensor:
    """``[batch, pos]``: False at BOS-token positions when ``exclude_bos``."""
    bos = bos_token_id(model)
    if not exclude_bos or bos is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return tokens != bos


def check_tokens(tokens: Tensor, min_positions: int = 1, d_vocab: int | None = None) -> Tensor:
    """``tokens`` as a LongTensor ``[batch, pos]`` (a 1-d row becomes ``[1, pos]``).

    Args:
        tokens: integer token ids, ``[batch, pos]`` or ``[pos]``.
        min_positions: fewest positions a row may have (2 for next-token losses).
        d_vocab: if given, every id must lie in ``0 … d_vocab - 1``.

    Raises:
        TypeError: not an integer tensor (e.g. text, or float ids).
        ValueError: not 1- or 2-d, no rows, fewer than ``min_positions`` positions, or
            an id outside the vocabulary.
    """
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or \
            tokens.dtype.is_complex or tokens.dtype == torch.bool:
        got = type(tokens).__name__ if not isinstance(tokens, Tensor) else tokens.dtype
        raise TypeError(f"tokens must be an integer tensor [batch, pos], got {got}; tokenize "
                        "text with model.to_tokens(...) or use saehooks.load_eval_tokens()")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < min_positions:
        raise ValueError(f"tokens must have shape [batch >= 1, pos >= {min_positions}], got "
                         f"{tuple(tokens.shape)}")
    if d_vocab is not None and tokens.numel() and \
            (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise ValueError(f"token ids must lie in 0 … {d_vocab - 1} (the model's vocabulary), "
                         f"got {int(tokens.min())} … {int(tokens.max())}; tokenize with this "
                         "model's tokenizer (model.to_tokens)")
    return tokens.long()


def spliced_batches(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                    exclude_bos: bool = True, progress: bool = True,
                    desc: str = "evaluating") -> Iterator[BatchResult]:
    """Run clean and spliced forward passes batch by batch (no gradients).

    Yields:
        :class:`BatchResult` per batch of ``batch_size`` rows.
    """
    tokens = check_tokens(tokens, min_positions=2, d_vocab=model.cfg.d_vocab)
    check_compatible(model, sae)
    hook = sae.cfg.hook_name
    device = next(model.parameters()).device
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc=desc, disable=not progress,
                      unit="batch"):
        batch = tokens[start:start + batch_size].to(device)
        mask = position_mask(model, batch, exclude_bos)
        with torch.no_grad():
            logits_clean, act = capture(model, batch, hook)
            feature_acts = sae.encode(act)
            recon = sae.decode(feature_acts).to(act.dtype)
            logits_spliced = run_with_hook(model, batch, hook, replace_where(mask, recon))
        yield BatchResult(batch, mask, act, feature_acts, recon, logits_clean, logits_spliced)


def mean_activation(model: nn.Module, hook_name: str, tokens: Tensor, batch_size: int = 8,
                    exclude_bos: bool = True) -> Tensor:
    """Mean activation ``[d]`` at ``hook_name`` over the (non-BOS) positions of ``tokens``."""
    total, count = None, 0
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(device)
        mask = position_mask(model, batch, exclude_bos)
        with torch.no_grad():
            _, act = capture(model, batch, hook_name, stop=True)
        part = act[mask].double().sum(0)
        total = part if total is None else total + part
        count += int(mask.sum())
    return (total / count).float()


def evaluate(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
             exclude_bos: bool = True, progress: bool = True) -> EvalReport:
    """Measure what splicing ``sae`` into ``model`` costs on ``tokens``.

    Four forward passes per batch (clean, spliced, zero-ablated, mean-ablated), plus
    a stopped-early pass for the mean activation. Definitions as in SAELens /
    DESIGN.md; the PCA baseline follows the dense-baseline comparisons of
    Bricken et al. 2023.

    Args:
        model: a hooked TransformerLens model.
        sae: the SAE; attaches at ``sae.cfg.hook_name``.
        tokens: ``[n_seq, n_ctx]`` token ids (e.g. :func:`saehooks.load_eval_tokens`).
        batch_size: rows per forward pass; results do not depend on it.
        exclude_bos: keep BOS positions clean and out of the averages.
        progress: show a tqdm progress bar.

    Returns:
        An :class:`EvalReport`.

    Raises:
        HookNameError, ValueError: see :func:`saehooks.hooks.check_compatible`;
            TypeError/ValueError for malformed ``tokens``.
    """
    tokens = check_tokens(tokens, min_positions=2, d_vocab=model.cfg.d_vocab)
    check_compatible(model, sae)
    hook = sae.cfg.hook_name
    mean = mean_activation(model, hook, tokens, batch_size, exclude_bos)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    acc = {k: torch.zeros((), dtype=torch.float64) for k in (
        "ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl", "sse", "sum_sq", "l0", "l1")}
    sum_x = torch.zeros(d_in, dtype=torch.float64)
    second = torch.zeros(d_in, d_in, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    n_act = n_ce = 0
    for r in spliced_batches(model, sae, tokens, batch_size, exclude_bos, progress):
        with torch.no_grad():
            logits_zero = run_with_hook(model, r.tokens, hook, replace_where(r.mask, 0.0))
            logits_mean = run_with_hook(model, r.tokens, hook, replace_where(r.mask, mean))
        predict = r.mask[:, :-1]
        for key, logits in (("ce_clean", r.logits_clean), ("ce_spliced", r.logits_spliced),
                            ("ce_zero", logits_zero), ("ce_mean", logits_mean)):
            acc[key] += metrics.next_token_ce(logits, r.tokens)[predict].double().sum()
        acc["kl"] += metrics.kl_div(r.logits_clean[:, :-1], r.logits_spliced[:, :-1])[
            predict].double().sum()
        n_ce += int(predict.sum())
        x = r.activation[r.mask].double()
        x_hat = r.reconstruction[r.mask].double()
        feats = r.feature_acts[r.mask]
        acc["sse"] += metrics.sum_squared_error(x, x_hat)
        acc["sum_sq"] += x.pow(2).sum()
        sum_x += x.sum(0)
        second += x.T @ x
        acc["l0"] += metrics.l0(feats).double().sum()
        acc["l1"] += metrics.l1(feats).double().sum()
        fired += (feats != 0).double().sum(0)
        n_act += x.shape[0]
    if n_act == 0 or n_ce == 0:
        raise ValueError("no token positions to evaluate (all BOS?); pass longer sequences "
                         "or exclude_bos=False")
    total_var = acc["sum_sq"] - sum_x.pow(2).sum() / n_act
    ce = {k: (acc[k] / n_ce).item() for k in ("ce_clean", "ce_spliced", "ce_zero", "ce_mean")}
    l0_mean = (acc["l0"] / n_act).item()
    fvu = (acc["sse"] / total_var).item()
    rank = round(l0_mean)
    return EvalReport(
        hook_name=hook,
        ce_loss_clean=ce["ce_clean"],
        ce_loss_spliced=ce["ce_spliced"],
        ce_loss_zero_ablation=ce["ce_zero"],
        ce_loss_mean_ablation=ce["ce_mean"],
        ce_loss_score=metrics.ce_loss_score(ce["ce_clean"], ce["ce_spliced"], ce["ce_zero"]),
        ce_loss_score_mean_ablation=metrics.ce_loss_score(
            ce["ce_clean"], ce["ce_spliced"], ce["ce_mean"]),
        kl_div=(acc["kl"] / n_ce).item(),
        fvu=fvu,
        explained_variance=1.0 - fvu,
        mse=(acc["sse"] / n_act).item(),
        l0=l0_mean,
        l1=(acc["l1"] / n_act).item(),
        dead_fraction=(fired == 0).double().mean().item(),
        pca_rank=rank,
        pca_fvu=metrics.pca_fvu_from_moments(second, sum_x / n_act, n_act, rank),
        n_tokens=n_act,
        feature_density=(fired / n_act).float(),
    )


def loss_increase_per_token(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                            exclude_bos: bool = True, progress: bool = True) -> pd.DataFrame:
    """Per predicted token: clean and spliced loss, and their difference.

    Returns:
        DataFrame with columns ``sequence``, ``position`` (of the predicted token),
        ``token`` (its string), ``loss_clean``, ``loss_spliced``, ``delta``
        (nats), one row per predicted token whose predicting position counts.
    """
    frames = []
    offset = 0
    for r in spliced_batches(model, sae, tokens, batch_size, exclude_bos, progress):
        clean = metrics.next_token_ce(r.logits_clean, r.tokens)
        spliced = metrics.next_token_ce(r.logits_spliced, r.tokens)
        seq, pos = r.mask[:, :-1].nonzero(as_tuple=True)
        predicted = r.tokens[seq, pos + 1]
        frames.append(pd.DataFrame({
            "sequence": (seq + offset).numpy(),
            "position": (pos + 1).numpy(),
            "token": model.to_str_tokens(predicted.cpu()),
            "loss_clean": clean[seq, pos].cpu().numpy(),
            "loss_spliced": spliced[seq, pos].cpu().numpy(),
        }))
        offset += r.tokens.shape[0]
    table = pd.concat(frames, ignore_index=True)
    table["delta"] = table["loss_spliced"] - table["loss_clean"]
    return table
