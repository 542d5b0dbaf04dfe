"""Steering sweeps: one feature's direction added at several coefficients, and what each
coefficient does to the feature, the predictions, the loss and a sample.

The steering itself is :func:`saehooks.steer` (feature steering as in Templeton et al.
2024, "Scaling Monosemanticity"); this module measures it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn

from saehooks import checks, hooks
from saehooks.analysis.stats import feature_act_stats
from saehooks.data import (
    Positions,
    capture,
    check_feature,
    check_sae,
    iter_batches,
    position_mask,
)
from saehooks.errors import InputError, InputTypeError
from saehooks.interventions import check_linear_decoder, steer_direction, steering_vector
from saehooks.metrics import TokenSums, kl_div, next_token_ce
from saehooks.sae import SAE
from saehooks.tl import model_device


def _prompt_tokens(model: nn.Module, prompts: str | Sequence[str] | Tensor) -> list[Tensor]:
    """Each prompt as tokens ``[1, pos]`` (rows of a token tensor, or tokenized text)."""
    if isinstance(prompts, Tensor):
        return [row[None] for row in checks.check_model_tokens(model, prompts, name="prompts")]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise InputTypeError(
            "prompts must be a string, a list of strings or a token tensor "
            f"[n, pos], got a {type(prompts).__name__}"
        )
    if not prompts or not all(prompts):
        raise InputError(
            "prompts is empty (or holds an empty string); pass at least one "
            "non-empty prompt, e.g. 'def f(x):'"
        )
    return [
        checks.check_model_tokens(model, model.to_tokens(p), name="the tokenized prompt")
        for p in prompts
    ]


@torch.no_grad()
@hooks.uses_model
def steering_sweep(
    model: nn.Module,
    sae: SAE,
    feature: int,
    coefficients: Sequence[float],
    prompts: str | Sequence[str] | Tensor,
    tokens: Tensor | None = None,
    max_new_tokens: int = 20,
    coefficient_mode: Literal["absolute", "relative"] = "absolute",
    max_activation: float | None = None,
    positions: Positions = "all",
    batch_size: int = 8,
    use_past_kv_cache: bool = False,
) -> pd.DataFrame:
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
            shorter than 2 positions, ``max_new_tokens < 1``; an ``mlp`` SAE (no
            decoder direction per latent); see :func:`saehooks.steer`.
    """
    sae = check_linear_decoder(check_sae(sae), "steering_sweep")
    feature = check_feature(sae, feature)
    if isinstance(coefficients, (str, bytes, Mapping)) or not isinstance(coefficients, Iterable):
        raise InputTypeError(
            "coefficients must be a list of numbers, e.g. [0.0, 4.0, 8.0], "
            f"got a {type(coefficients).__name__}"
        )
    coefficients = [checks.check_float(c, "each coefficient") for c in coefficients]
    if not coefficients:
        raise InputError("coefficients is empty; pass a list of numbers, e.g. [0.0, 4.0, 8.0]")
    max_new_tokens = checks.check_positive_int(max_new_tokens, "max_new_tokens")
    batch_size = checks.check_batch_size(batch_size)
    checks.check_bool(use_past_kv_cache, "use_past_kv_cache")
    if tokens is not None:
        tokens = checks.check_model_tokens(model, tokens, min_positions=2)
        if coefficient_mode == "relative" and max_activation is None:  # measured once
            max_activation = float(feature_act_stats(model, sae, tokens)["max"][feature])
            if max_activation <= 0:
                raise InputError(
                    f"feature {feature} never fires on the given tokens, so it "
                    "has no maximum activation; pass max_activation=... or "
                    "other tokens"
                )
    device = model_device(model)
    runs = [p.to(device) for p in _prompt_tokens(model, prompts)]
    clean = [model(p) for p in runs]
    rows = []
    for c in coefficients:
        vector = steering_vector(model, sae, feature, c, coefficient_mode, max_activation, tokens)
        acts: list[Tensor] = []
        kls: list[Tensor] = []
        with steer_direction(model, sae.cfg.hook_name, vector, 1.0, positions, False):
            for p, base in zip(runs, clean):
                logits, act = capture(model, p, sae.cfg.hook_name)  # the steered activation
                acts.append(sae.encode(act.to(sae.device))[..., feature].flatten().cpu())
                kls.append(kl_div(base, logits).flatten().cpu())
            loss = float("nan")
            if tokens is not None:
                sums = TokenSums("loss")
                for _, batch in iter_batches(tokens, batch_size, device):
                    scored = position_mask(model, batch)[:, :-1]
                    sums.add(loss=next_token_ce(model(batch), batch)[scored])
                loss = sums.means()["loss"]
            out = model.generate(
                runs[0],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_at_eos=False,
                verbose=False,
                use_past_kv_cache=use_past_kv_cache,
            )
        rows.append(
            {
                "coefficient": c,
                "added_norm": float(vector.norm()),
                "feature_act": float(torch.cat(acts).mean()),
                "kl": float(torch.cat(kls).mean()),
                "loss": loss,
                "sample": model.tokenizer.decode(out[0, runs[0].shape[1] :].cpu().tolist()),
            }
        )
    return pd.DataFrame(rows)
