"""What a feature's decoder direction does to the logits through the unembedding."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from saehooks import checks
from saehooks.data import check_feature, check_sae, token_strings
from saehooks.errors import InputError
from saehooks.interventions import check_linear_decoder, decoder_vector
from saehooks.sae import SAE


@torch.no_grad()
def feature_logit_effects(model: nn.Module, sae: SAE, feature: int, k: int = 10) -> pd.DataFrame:
    """Tokens whose logits the feature's decoder direction raises and lowers most.

    The direct path: ``(d - mean(d)) @ W_U`` with ``d`` the feature's decoder row (the
    centring is what the final LayerNorm does to any added vector; its scale and, in
    models loaded with ``fold_ln``, its weights are folded away). Later layers are
    ignored, so this is most telling for SAEs near the end of the model. The logit
    lens of nostalgebraist 2020 applied to SAE decoder rows, as in the feature
    dashboards of Bricken et al. 2023, "Towards Monosemanticity".

    Args:
        model: a hooked model with ``W_U [d_model, d_vocab]`` and a tokenizer.
        sae: the SAE (``d_in`` must be ``d_model``).
        feature: the latent id (one int).
        k: tokens per side, >= 1 (at most ``d_vocab`` are listed).

    Returns:
        DataFrame with ``k`` rows indexed by ``rank`` (1 = strongest): ``promoted``,
        ``promoted_effect``, ``promoted_id``, ``suppressed``, ``suppressed_effect``,
        ``suppressed_id``; effects are logit changes per unit of activation.

    Raises:
        InputTypeError: ``feature`` is not one integer id, ``k`` not an integer.
        InputError: an id outside ``0 … d_sae - 1``; ``k < 1``; the SAE's width is not
            the model's ``d_model``; an ``mlp`` SAE, whose decoder is not a dictionary of
            directions (:func:`saehooks.interventions.check_linear_decoder`).
    """
    f = check_feature(check_linear_decoder(check_sae(sae), "feature_logit_effects"), feature)
    k = checks.check_positive_int(k, "k")
    W_U = model.W_U
    if sae.cfg.d_in != W_U.shape[0]:
        raise InputError(
            f"logit effects need an SAE on the residual stream (d_in = d_model = "
            f"{W_U.shape[0]}); this SAE has d_in={sae.cfg.d_in}"
        )
    direction = decoder_vector(sae, f).to(device=W_U.device, dtype=W_U.dtype)
    logit_change = (direction - direction.mean()) @ W_U  # [d_vocab]
    k = min(k, logit_change.shape[0])
    up = logit_change.topk(k)
    down = (-logit_change).topk(k)
    return pd.DataFrame(
        {
            "promoted": token_strings(model, up.indices),
            "promoted_effect": up.values.tolist(),
            "promoted_id": up.indices.tolist(),
            "suppressed": token_strings(model, down.indices),
            "suppressed_effect": (-down.values).tolist(),
            "suppressed_id": down.indices.tolist(),
        },
        index=pd.RangeIndex(1, k + 1, name="rank"),
    )
