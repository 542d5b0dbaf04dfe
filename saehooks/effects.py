"""Measure what features do: exact ablation effects, attribution, steering sweeps.

* :func:`feature_ablation_effects` -- zero-ablate each feature (error term kept) and
  measure the change in next-token loss and the KL from the clean predictions.
* :func:`feature_attribution` -- the linear estimate of the same loss change for all
  features at once from one forward and backward pass (attribution patching).
* :func:`attribution_check` -- the estimate against the exact ablation on its top features.
* :func:`steering_sweep` -- a table of steering coefficients and what each does.

Losses are next-token cross-entropies in nats per token; a "token" is a prediction
made at a position whose input is not BOS (``exclude_bos=True``, the default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks import checks, hooks
from saehooks.errors import InputError, InputTypeError
from saehooks.feature_utils import (
    FeatureSpec,
    Positions,
    check_feature,
    check_features,
    check_flags,
    check_sae,
    check_saes,
    iter_batches,
    kl_per_token,
    position_mask,
    token_losses,
)
from saehooks.features import feature_act_stats
from saehooks.interventions import (
    latent_hooks,
    set_features_hook,
    steer_direction,
    steering_vector,
)
from saehooks.models import model_device
from saehooks.sae import SAE


@torch.no_grad()
@hooks.uses_model
def feature_ablation_effects(model: nn.Module, sae: SAE, tokens: Tensor,
                             features: FeatureSpec, batch_size: int = 8,
                             exclude_bos: bool = True, n_top: int = 3) -> pd.DataFrame:
    """Exact effect of zero-ablating each feature (error term kept) on the model's loss.

    For each feature the model runs with that one latent set to 0 wherever it fires
    (see :func:`saehooks.ablate_features`; with ``exclude_bos`` BOS positions keep
    their activation, as in :func:`saehooks.evaluate`); the baseline is the same SAE
    spliced in with its error term and no edit, so batches where the feature never
    fires contribute exactly zero change.

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
        DataFrame indexed by ``feature`` with columns ``frequency`` (fraction of tokens
        where it fires), ``mean_act_when_firing``, ``loss_change`` (ablated − clean,
        mean over all tokens, nats), ``loss_change_when_firing`` (mean over the tokens
        where it fires of the change of their own next-token loss, nats),
        ``max_loss_increase`` (nats), ``kl`` (mean ``KL(clean || ablated)`` over all
        tokens, nats), and ``top_token_effects``: ``n_top`` tuples
        ``(sequence, position, loss change)`` with the largest ``|change|``.

    Raises:
        InputTypeError: ``sae`` not an SAE; ids or sizes that are not integers;
            malformed ``tokens``.
        InputError: an id outside ``0 … d_sae - 1`` or repeated; rows shorter than 2
            positions, longer than ``n_ctx`` or outside the vocabulary;
            ``batch_size < 1``; no position predicts a token (all BOS).
    """
    check_flags(exclude_bos=exclude_bos)
    (sae,) = check_saes(model, check_sae(sae))
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    feats = check_features(sae, features)
    n_top = checks.check_int(n_top, "n_top", minimum=0)
    stats = {f: {"fired": 0, "act_sum": 0.0, "dloss": 0.0, "dloss_fire": 0.0, "kl": 0.0,
                 "max_up": 0.0, "top": []} for f in feats}
    n_tokens = 0
    store: dict[str, Tensor] = {}

    def save(acts: Tensor, hook: Any = None) -> None:
        store["acts"] = acts.detach()

    for start, batch in iter_batches(tokens, batch_size, model_device(model)):
        where = position_mask(model, batch, exclude_bos)
        scored = where[:, :-1].cpu()
        n_tokens += int(scored.sum())
        with latent_hooks(model, [(sae, save)], use_error_term=True):
            clean_logits = model(batch)
        clean_loss = token_losses(clean_logits, batch)
        for f in feats:
            active = (store["acts"][..., f] > 0) & where.to(store["acts"].device)
            if not active.any():  # the edit is a no-op: the change is exactly 0
                continue
            fires = active[:, :-1].cpu()
            st = stats[f]
            st["fired"] += int(fires.sum())
            st["act_sum"] += float(store["acts"][:, :-1, f].cpu()[fires].sum(
                dtype=torch.float64))
            hook = set_features_hook([f], torch.zeros(1), where)
            with latent_hooks(model, [(sae, hook)], use_error_term=True):
                logits = model(batch)
            dloss = (token_losses(logits, batch) - clean_loss).cpu()
            st["dloss"] += float(dloss[scored].sum(dtype=torch.float64))
            st["dloss_fire"] += float(dloss[fires].sum(dtype=torch.float64))
            if scored.any():
                st["max_up"] = max(st["max_up"], float(dloss[scored].max()))
            st["kl"] += float(kl_per_token(clean_logits[:, :-1], logits[:, :-1]).cpu()[scored]
                              .sum(dtype=torch.float64))
            flat = torch.where(scored, dloss, torch.zeros_like(dloss)).flatten()
            top = flat.abs().topk(min(n_top, flat.numel())).indices if n_top else []
            st["top"] += [(start + int(i) // dloss.shape[1], int(i) % dloss.shape[1],
                           float(flat[i])) for i in top]
            st["top"] = sorted(st["top"], key=lambda t: -abs(t[2]))[:n_top]
    if n_tokens == 0:
        raise InputError("no position predicts a token (every position but the last holds "
                         "BOS); pass longer sequences of real text, or exclude_bos=False")
    rows = []
    for f in feats:
        st = stats[f]
        fired = st["fired"]
        rows.append({
            "feature": f,
            "frequency": fired / max(n_tokens, 1),
            "mean_act_when_firing": st["act_sum"] / fired if fired else 0.0,
            "loss_change": st["dloss"] / max(n_tokens, 1),
            "loss_change_when_firing": st["dloss_fire"] / fired if fired else 0.0,
            "max_loss_increase": max(st["max_up"], 0.0),
            "kl": st["kl"] / max(n_tokens, 1),
            "top_token_effects": st["top"],
        })
    return pd.DataFrame(rows).set_index("feature")


@hooks.uses_model
def feature_attribution(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int = 8,
                        exclude_bos: bool = True) -> pd.DataFrame:
    """Linear estimate of every feature's zero-ablation effect on the loss, all at once.

    Attribution patching (Nanda 2023; Syed et al. 2023) applied to SAE latents as in
    Marks et al. 2024, "Sparse Feature Circuits": with the error term kept, the change
    in mean loss from zeroing feature ``k`` is approximated by
    ``-Σ_{tokens} a_k · ∂L/∂a_k``, from one forward and one backward pass per batch.

    Args:
        model: a hooked model (its parameters get no gradients), on any device.
        sae: the SAE (on the model's device).
        tokens: LongTensor ``[n_seq, pos]``, ``2 <= pos <= n_ctx``.
        batch_size: rows per forward/backward pass.
        exclude_bos: leave BOS positions out (not ablated, not averaged).

    Returns:
        DataFrame indexed by ``feature`` (all ``d_sae``), sorted by ``|attribution|``
        descending, with columns ``attribution`` (estimated mean loss change from
        zero-ablation, nats/token, comparable to ``feature_ablation_effects``'s
        ``loss_change``) and ``frequency`` (fraction of tokens where it fires).
        Sums are float64 on the CPU.

    Raises:
        As :func:`feature_ablation_effects`.
    """
    check_flags(exclude_bos=exclude_bos)
    (sae,) = check_saes(model, check_sae(sae))
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    d_sae = sae.cfg.d_sae
    total = torch.zeros(d_sae, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    n_tokens = 0
    store: dict[str, Tensor] = {}

    def leaf(acts: Tensor, hook: Any = None) -> Tensor:
        store["acts"] = acts.detach().requires_grad_(True)
        return store["acts"]

    for _, batch in iter_batches(tokens, batch_size, model_device(model)):
        where = position_mask(model, batch, exclude_bos)
        scored = where[:, :-1]
        n_tokens += int(scored.sum())
        with torch.enable_grad(), latent_hooks(model, [(sae, leaf)], use_error_term=True):
            logits = model(batch)
            loss = token_losses(logits, batch)[scored.to(logits.device)].sum()
            (grad,) = torch.autograd.grad(loss, store["acts"])
        acts = store["acts"].detach() * where[..., None].to(grad.device)
        total += -(acts * grad).sum((0, 1), dtype=torch.float64).cpu()
        fired += (acts[:, :-1] > 0)[scored.to(acts.device)].sum(0, dtype=torch.float64).cpu()
    if n_tokens == 0:
        raise InputError("no position predicts a token (every position but the last holds "
                         "BOS); pass longer sequences of real text, or exclude_bos=False")
    frame = pd.DataFrame({
        "feature": range(d_sae),
        "attribution": (total / max(n_tokens, 1)).numpy(),
        "frequency": (fired / max(n_tokens, 1)).numpy(),
    }).set_index("feature")
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
def attribution_check(model: nn.Module, sae: SAE, tokens: Tensor, top: int = 10,
                      attribution: pd.DataFrame | None = None,
                      batch_size: int = 8) -> AttributionCheck:
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
    if attribution is not None and not (isinstance(attribution, pd.DataFrame)
                                        and "attribution" in attribution.columns):
        raise InputTypeError("attribution must be the DataFrame feature_attribution returns "
                             "(indexed by feature, with an 'attribution' column), or None")
    if attribution is None:
        attribution = feature_attribution(model, sae, tokens, batch_size)
    chosen = [int(f) for f in attribution.index[:top]]
    exact = feature_ablation_effects(model, sae, tokens, chosen, batch_size=batch_size)
    table = pd.DataFrame({"attribution": attribution.loc[chosen, "attribution"],
                          "loss_change": exact["loss_change"]})
    table["attribution_rank"] = table["attribution"].rank(ascending=False).astype(int)
    table["exact_rank"] = table["loss_change"].rank(ascending=False).astype(int)
    # Spearman = Pearson on ranks (pandas' method="spearman" would need scipy)
    spearman = float(table["attribution"].rank().corr(table["loss_change"].rank()))
    signs = (torch.tensor(table["attribution"].to_numpy()).sign()
             == torch.tensor(table["loss_change"].to_numpy()).sign())
    return AttributionCheck(table, spearman, float(signs.double().mean()))


def _prompt_tokens(model: nn.Module, prompts: str | Sequence[str] | Tensor) -> list[Tensor]:
    """Each prompt as tokens ``[1, pos]`` (rows of a token tensor, or tokenized text)."""
    if isinstance(prompts, Tensor):
        return [row[None] for row in checks.check_model_tokens(model, prompts, name="prompts")]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise InputTypeError("prompts must be a string, a list of strings or a token tensor "
                             f"[n, pos], got a {type(prompts).__name__}")
    if not prompts or not all(prompts):
        raise InputError("prompts is empty (or holds an empty string); pass at least one "
                         "non-empty prompt, e.g. 'def f(x):'")
    return [checks.check_model_tokens(model, model.to_tokens(p), name="the tokenized prompt")
            for p in prompts]


@torch.no_grad()
@hooks.uses_model
def steering_sweep(model: nn.Module, sae: SAE, feature: int, coefficients: Sequence[float],
                   prompts: str | Sequence[str] | Tensor, tokens: Tensor | None = None,
                   max_new_tokens: int = 20,
                   coefficient_mode: Literal["absolute", "relative"] = "absolute",
                   max_activation: float | None = None, positions: Positions = "all",
                   batch_size: int = 8, use_past_kv_cache: bool = False) -> pd.DataFrame:
    """Steer along one feature at several coefficients and measure each.

    Args:
        model: a hooked model (any device).
        sae: the SAE defining the feature's direction.
        feature: the latent id (one int).
        coefficients: a non-empty list of finite values for :func:`saehooks.steer`.
        prompts: a string, strings, or tokens ``[n, pos]``; measured position by position.
        tokens: held-out LongTensor ``[n_seq, pos]`` for the loss column (None: NaN);
            relative mode also measures the maximum activation on it.
        max_new_tokens: length of the greedy sample continuation.
        coefficient_mode, max_activation, positions: as in :func:`saehooks.steer`.
        batch_size: rows per forward pass on ``tokens``.
        use_past_kv_cache: generate the sample with the KV cache. Off by default, which
            is exact with any model: TransformerLens 4.3's bridge leaves the cache empty
            under transformers 5 unless it was loaded by :func:`saehooks.load_model`,
            which repairs it (then ``True`` gives the same tokens, faster).

    Returns:
        DataFrame, one row per coefficient: ``coefficient``, ``added_norm`` (norm of
        the added vector), ``feature_act`` (the feature's mean activation over the
        prompts' positions, read by the SAE from the steered activation at its hook),
        ``kl`` (mean ``KL(unsteered || steered)`` of next-token distributions over
        prompt positions, nats), ``loss`` (mean loss on ``tokens``, nats/token) and
        ``sample`` (greedy continuation of the first prompt, text).

    Raises:
        InputTypeError: ``coefficients`` not a list of numbers; ``prompts`` not text or
            tokens; see also :func:`saehooks.steer`.
        InputError: no coefficients, a NaN or infinite one, no prompts, ``tokens``
            shorter than 2 positions, ``max_new_tokens < 1``; see :func:`saehooks.steer`.
    """
    sae = check_sae(sae)
    feature = check_feature(sae, feature)
    if isinstance(coefficients, (str, bytes, Mapping)) or not isinstance(coefficients, Iterable):
        raise InputTypeError("coefficients must be a list of numbers, e.g. [0.0, 4.0, 8.0], "
                             f"got a {type(coefficients).__name__}")
    coefficients = [checks.check_float(c, "each coefficient") for c in coefficients]
    if not coefficients:
        raise InputError("coefficients is empty; pass a list of numbers, e.g. [0.0, 4.0, 8.0]")
    max_new_tokens = checks.check_positive_int(max_new_tokens, "max_new_tokens")
    batch_size = checks.check_batch_size(batch_size)
    check_flags(use_past_kv_cache=use_past_kv_cache)
    if tokens is not None:
        tokens = checks.check_model_tokens(model, tokens, min_positions=2)
        if coefficient_mode == "relative" and max_activation is None:  # measured once
            max_activation = float(feature_act_stats(model, sae, tokens)["max"][feature])
            if max_activation <= 0:
                raise InputError(f"feature {feature} never fires on the given tokens, so it "
                                 "has no maximum activation; pass max_activation=... or "
                                 "other tokens")
    device = model_device(model)
    runs = [p.to(device) for p in _prompt_tokens(model, prompts)]
    clean = [model(p) for p in runs]
    rows = []
    for c in coefficients:
        vector = steering_vector(model, sae, feature, c, coefficient_mode,
                                 max_activation, tokens)
        acts: list[Tensor] = []

        def read(act: Tensor, hook: Any = None, acts: list[Tensor] = acts) -> None:
            acts.append(sae.encode(act.to(sae.device))[..., feature].flatten().cpu())

        with steer_direction(model, sae.cfg.hook_name, vector, 1.0, positions, False):
            kls = []
            with model.hooks(fwd_hooks=[(sae.cfg.hook_name, read)]):
                for p, base in zip(runs, clean):
                    kls.append(kl_per_token(base, model(p)).flatten().cpu())
            loss = float("nan")
            if tokens is not None:
                total, count = 0.0, 0
                for _, batch in iter_batches(tokens, batch_size, device):
                    scored = position_mask(model, batch)[:, :-1]
                    total += float(token_losses(model(batch), batch)[scored].sum(
                        dtype=torch.float64))
                    count += int(scored.sum())
                loss = total / max(count, 1)
            out = model.generate(runs[0], max_new_tokens=max_new_tokens, do_sample=False,
                                 stop_at_eos=False, verbose=False,
                                 use_past_kv_cache=use_past_kv_cache)
        rows.append({
            "coefficient": c,
            "added_norm": float(vector.norm()),
            "feature_act": float(torch.cat(acts).mean()),
            "kl": float(torch.cat(kls).mean()),
            "loss": loss,
            "sample": model.tokenizer.decode(out[0, runs[0].shape[1]:].cpu().tolist()),
        })
    return pd.DataFrame(rows)
