"""Exact reparametrisations of an SAE: fold the decoder norms into the encoder.

Source: SAELens' ``fold_W_dec_norm`` (jbloomAus/SAELens), with the gated case done so
that the forward pass is unchanged (the magnitude path's ``r_mag`` keeps its value).
"""

from __future__ import annotations

import torch

from saehooks.errors import InputError
from saehooks.sae import SAE


@torch.no_grad()
def fold_W_dec_norm(sae: SAE) -> SAE:  # noqa: N802 (SAELens' name)
    """Give every decoder row unit norm without changing what the SAE computes.

    With ``n = ‖W_dec[j]‖`` per latent, the latents are rescaled by ``n`` and the
    decoder rows by ``1/n``, so ``decode(encode(x))`` is unchanged (to float rounding),
    the set of active latents is unchanged, and each latent's activation becomes its
    contribution's norm:

    * relu: ``W_enc[:, j] *= n``, ``b_enc *= n``;
    * jumprelu: the same, and ``threshold *= n``;
    * gated: ``W_enc[:, j] *= n``, ``b_gate *= n``, ``b_mag *= n`` (``r_mag`` is a
      log-scale on the shared encoder and stays);
    * topk with ``rescale_acts_by_decoder_norm``: the same as relu, then the flag is
      cleared (the norms it applied now live in the weights).

    Args:
        sae: the SAE, changed in place.

    Returns:
        ``sae``, for chaining.

    Raises:
        InputError: a top-k SAE without ``rescale_acts_by_decoder_norm`` (rescaling
            pre-activations per latent would change which ``k`` win), or a decoder row
            of norm 0.
    """
    cfg = sae.cfg
    if cfg.architecture == "topk" and not cfg.rescale_acts_by_decoder_norm:
        raise InputError(
            "folding decoder norms would change which latents a top-k SAE "
            "keeps; only a top-k SAE with rescale_acts_by_decoder_norm=True "
            "can be folded"
        )
    norms = sae.W_dec.norm(dim=-1)
    if torch.any(norms == 0):
        dead = torch.nonzero(norms == 0).flatten()[:10].tolist()
        raise InputError(f"decoder rows {dead} have norm 0 and cannot be normalised")
    sae.W_dec.div_(norms[:, None])
    sae.W_enc.mul_(norms)
    if cfg.architecture == "gated":
        sae.b_gate.mul_(norms)
        sae.b_mag.mul_(norms)
    else:
        sae.b_enc.mul_(norms)
    if cfg.architecture == "jumprelu":
        sae.threshold.mul_(norms)
    if cfg.architecture == "topk":
        cfg.rescale_acts_by_decoder_norm = False
    return sae
