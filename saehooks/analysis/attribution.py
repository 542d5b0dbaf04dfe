"""What features do to the loss: exact ablation effects and their linear estimate.

* :func:`feature_ablation_effects` -- zero-ablate each feature (error term kept) and
  measure the change in next-token loss and the KL from the clean predictions.
* :func:`feature_attribution` -- the linear estimate of the same loss change for all
  features at once from one forward and backward pass (attribution patching).
* :func:`attribution_check` -- the estimate against the exact ablation on its top features.

Losses are next-token cross-entropies in nats per *predicting position*: a counted
position (not BOS with ``exclude_bos=True``, the default) other than the last of its
row. Firing frequencies are over all counted positions, last ones included, as
everywhere in the package (see :mod:`saehooks.analysis.stats`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks import checks, hooks
from saehooks.data import (
    FeatureSpec,
    capture,
    check_sae,
    iter_batches,
    position_mask,
)
from saehooks.errors import InputError, InputTypeError
from saehooks.hooks import latent_hooks
from saehooks.interventions import set_features_hook
from saehooks.metrics import FeatureCounts, kl_div, next_token_ce
from saehooks.sae import SAE
from saehooks.tl import model_device

_NO_PREDICTION = (
    "no position predicts a token (every position but the last holds BOS); "
    "pass longer sequences of real text, or exclude_bos=False"
)


def _checked(model: nn.Module, sae: Any, tokens: Any, exclude_bos: Any) -> tuple[SAE, Tensor]:
    checks.check_bool(exclude_bos, "exclude_bos")
    sae = check_sae(sae)
    hooks.check_compatible(model, sae)
    return sae, checks.check_model_tokens(model, tokens, min_positions=2)


@torch.no_grad()
@hooks.uses_model
def feature_ablation_effects(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    features: FeatureSpec,
    batch_size: int = 8,
    exclude_bos: bool = True,
    n_top: int = 3,
) -> pd.DataFrame:
    """Exact effect of zero-ablating each feature (error term kept) on the model's loss.

    For each feature the model runs with that one latent set to 0 wherever it fires
    (see :func:`saehooks.ablate_features`; with ``exclude_bos`` BOS positions keep
    their activation, as in :func:`saehooks.evaluate`); the baseline is the same SAE
    spliced in with its error term and no edit, so batches where the feature never
    fires contribute exactly zero change. Ablation as a measure of a feature's causal
    role follows Cunningham et al. 2023, "Sparse Autoencoders Find Highly
    Interpretable Features in Language Models".

    Every sum is float64 on the CPU, so the table does not depend on ``batch_size``
    and the model may be on any device.

    Args:
        model: a hooked model.
        sae: the SAE (on the model's device).
        tokens: LongTensor ``[n_seq, pos]``, ``2 <= pos <= n_ctx`` (a loss needs a
            next token).
        features: distinct latent ids to ablate, one at a time (ints, a NumPy array or
            an integer tensor).
        batch_size: rows per forward pass.
        exclude_bos: leave BOS positions unablated and out of every average.
        n_top: how many single-token effects to list per feature (>= 0).

    Returns:
        DataFrame indexed by ``feature`` with columns ``frequency`` (fraction of counted
        positions -- not BOS by default, last positions included -- where the
        activation is ``> 0``: the number :func:`saehooks.feature_density` gives),
        ``mean_act_when_firing`` (over those positions), ``loss_change`` (ablated −
        clean, mean over all predicting positions, nats), ``loss_change_when_firing``
        (mean over the predicting positions where it fires of the change of their own
        next-token loss, nats), ``max_loss_increase`` (nats), ``kl`` (mean
        ``KL(clean || ablated)`` over predicting positions, nats), and
        ``top_token_effects``: ``n_top`` tuples ``(sequence, position, loss change)``
        with the largest ``|change|``.

    Raises:
        InputTypeError: ``sae`` not an SAE; ids or sizes that are not integers;
            malformed ``tokens``.
        InputError: an id outside ``0 … d_sae - 1`` or repeated; rows shorter than 2
            positions, longer than ``n_ctx`` or outside the vocabulary;
            ``batch_size < 1``; no position predicts a token (all BOS).
    """
    sae, tokens = _checked(model, sae, tokens, exclude_bos)
    feats = checks.check_feature_ids(features, sae.cfg.d_sae, "features")
    n_top = checks.check_int(n_top, "n_top", minimum=0)
    stats = {
        f: {
            "fired_predicting": 0,
            "dloss": 0.0,
            "dloss_fire": 0.0,
            "kl": 0.0,
            "max_up": 0.0,
            "top": [],
        }
        for f in feats
    }
    counts = FeatureCounts(len(feats))
    chosen = torch.tensor(feats, dtype=torch.long, device=sae.device)
    n_predicting = 0
    latents = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    for start, batch in iter_batches(tokens, batch_size, model_device(model)):
        where = position_mask(model, batch, exclude_bos)
        scored = where[:, :-1].cpu()
        n_predicting += int(scored.sum())
        with latent_hooks(model, [(sae, None)], use_error_term=True):
            clean_logits, acts = capture(model, batch, latents)
        keep = where.to(acts.device)
        counts.add(acts[..., chosen][keep].reshape(-1, len(feats)))
        clean_loss = next_token_ce(clean_logits, batch)
        for f in feats:
            active = (acts[..., f] > 0) & keep
            if not active.any():  # the edit is a no-op: the change is exactly 0
                continue
            fires = active[:, :-1].cpu()
            st = stats[f]
            st["fired_predicting"] += int(fires.sum())
            hook = set_features_hook([f], torch.zeros(1), where)
            with latent_hooks(model, [(sae, hook)], use_error_term=True):
                logits = model(batch)
            dloss = (next_token_ce(logits, batch) - clean_loss).cpu()
            st["dloss"] += float(dloss[scored].sum(dtype=torch.float64))
            st["dloss_fire"] += float(dloss[fires].sum(dtype=torch.float64))
            if scored.any():
                st["max_up"] = max(st["max_up"], float(dloss[scored].max()))
            st["kl"] += float(
                kl_div(clean_logits[:, :-1], logits[:, :-1]).cpu()[scored].sum(dtype=torch.float64)
            )
            flat = torch.where(scored, dloss, torch.zeros_like(dloss)).flatten()
            top = flat.abs().topk(min(n_top, flat.numel())).indices if n_top else []
            st["top"] += [
                (start + int(i) // dloss.shape[1], int(i) % dloss.shape[1], float(flat[i]))
                for i in top
            ]
            st["top"] = sorted(st["top"], key=lambda t: -abs(t[2]))[:n_top]
    if n_predicting == 0:
        raise InputError(_NO_PREDICTION)
    frequency = counts.frequency()
    rows = []
    for i, f in enumerate(feats):
        st = stats[f]
        fired, fired_predicting = float(counts.fired[i]), st["fired_predicting"]
        rows.append(
            {
                "feature": f,
                "frequency": float(frequency[i]),
                "mean_act_when_firing": float(counts.total[i]) / fired if fired else 0.0,
                "loss_change": st["dloss"] / n_predicting,
                "loss_change_when_firing": (
                    st["dloss_fire"] / fired_predicting if fired_predicting else 0.0
                ),
                "max_loss_increase": max(st["max_up"], 0.0),
                "kl": st["kl"] / n_predicting,
                "top_token_effects": st["top"],
            }
        )
    return pd.DataFrame(rows).set_index("feature")


@hooks.uses_model
def feature_attribution(
    model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8, exclude_bos: bool = True
) -> pd.DataFrame:
    """Linear estimate of every feature's zero-ablation effect on the loss, all at once.

    Attribution patching (Nanda 2023; Syed et al. 2023) applied to SAE latents as in
    Marks et al. 2024, "Sparse Feature Circuits": with the error term kept, the change
    in mean loss from zeroing feature ``k`` is approximated by
    ``-Σ_{tokens} a_k · ∂L/∂a_k`` (divided by the number of predicting positions),
    from one forward and one backward pass per batch.

    Args:
        model: a hooked model (its parameters get no gradients), on any device.
        sae: the SAE (on the model's device).
        tokens: LongTensor ``[n_seq, pos]``, ``2 <= pos <= n_ctx``.
        batch_size: rows per forward/backward pass.
        exclude_bos: leave BOS positions out (not ablated, not averaged).

    Returns:
        DataFrame indexed by ``feature`` (all ``d_sae``), sorted by ``|attribution|``
        descending, with columns ``attribution`` (estimated mean loss change from
        zero-ablation, nats per predicting position, comparable to
        :func:`feature_ablation_effects`'s ``loss_change``) and ``frequency`` (fraction
        of counted positions -- not BOS by default, last positions included -- where
        the activation is ``> 0``, as :func:`saehooks.feature_density`). Sums are
        float64 on the CPU.

    Raises:
        As :func:`feature_ablation_effects`.
    """
    sae, tokens = _checked(model, sae, tokens, exclude_bos)
    d_sae = sae.cfg.d_sae
    total = torch.zeros(d_sae, dtype=torch.float64)
    counts = FeatureCounts(d_sae)
    n_predicting = 0
    store: dict[str, Tensor] = {}

    def leaf(acts: Tensor, hook: Any = None) -> Tensor:
        store["acts"] = acts.detach().requires_grad_(True)
        return store["acts"]

    for _, batch in iter_batches(tokens, batch_size, model_device(model)):
        where = position_mask(model, batch, exclude_bos)
        scored = where[:, :-1]
        n_predicting += int(scored.sum())
        with torch.enable_grad(), latent_hooks(model, [(sae, leaf)], use_error_term=True):
            logits = model(batch)
            loss = next_token_ce(logits, batch)[scored.to(logits.device)].sum()
            (grad,) = torch.autograd.grad(loss, store["acts"])
        acts = store["acts"].detach()
        keep = where.to(acts.device)
        counts.add(acts[keep].reshape(-1, d_sae))
        total += -(acts * keep[..., None] * grad).sum((0, 1), dtype=torch.float64).cpu()
    if n_predicting == 0:
        raise InputError(_NO_PREDICTION)
    frame = pd.DataFrame(
        {
            "feature": range(d_sae),
            "attribution": (total / n_predicting).numpy(),
            "frequency": counts.frequency().numpy(),
        }
    ).set_index("feature")
    order = frame["attribution"].abs().sort_values(ascending=False, kind="stable").index
    return frame.loc[order]


class AttributionCheck(NamedTuple):
    """Attribution estimates against exact ablation on the top-attributed features."""

    table: pd.DataFrame
    """Indexed by feature: ``attribution`` and exact ``loss_change`` (nats/token) and
    their ranks within the checked set (1 = largest effect)."""
    spearman: float
    """Spearman rank correlation of estimate and exact change over the checked set."""
    sign_agreement: float
    """Fraction of checked features where estimate and exact change share a sign."""


@hooks.uses_model
def attribution_check(
    model: nn.Module,
    sae: SAE,
    tokens: Tensor,
    top: int = 10,
    attribution: pd.DataFrame | None = None,
    batch_size: int = 8,
) -> AttributionCheck:
    """Check :func:`feature_attribution` against exact ablation on its ``top`` features.

    Args:
        model, sae, tokens, batch_size: as in :func:`feature_attribution`.
        top: how many of the largest ``|attribution|`` features to ablate exactly.
        attribution: a precomputed :func:`feature_attribution` table (else computed).

    Returns:
        :class:`AttributionCheck`; ``spearman`` near 1 means the cheap estimate ranks
        the features as the exact ablations do.

    Raises:
        InputTypeError: ``attribution`` is not a :func:`feature_attribution` table.
        InputError: ``top < 1``; see also :func:`feature_ablation_effects`.
    """
    top = checks.check_positive_int(top, "top")
    if attribution is not None and not (
        isinstance(attribution, pd.DataFrame) and "attribution" in attribution.columns
    ):
        raise InputTypeError(
            "attribution must be the DataFrame feature_attribution returns "
            "(indexed by feature, with an 'attribution' column), or None"
        )
    if attribution is None:
        attribution = feature_attribution(model, sae, tokens, batch_size)
    chosen = [int(f) for f in attribution.index[:top]]
    exact = feature_ablation_effects(model, sae, tokens, chosen, batch_size=batch_size)
    table = pd.DataFrame(
        {"attribution": attribution.loc[chosen, "attribution"], "loss_change": exact["loss_change"]}
    )
    table["attribution_rank"] = table["attribution"].rank(ascending=False).astype(int)
    table["exact_rank"] = table["loss_change"].rank(ascending=False).astype(int)
    # Spearman = Pearson on ranks (pandas' method="spearman" would need scipy)
    spearman = float(table["attribution"].rank().corr(table["loss_change"].rank()))
    signs = (
        torch.tensor(table["attribution"].to_numpy()).sign()
        == torch.tensor(table["loss_change"].to_numpy()).sign()
    )
    return AttributionCheck(table, spearman, float(signs.double().mean()))
