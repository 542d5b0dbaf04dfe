"""Shared fixtures: the shipped reference model (loaded once) and its eval tokens."""

from __future__ import annotations

import pytest
import torch

import saehooks as sh


@pytest.fixture(scope="session")
def model():
    """The shipped reference LM (TransformerBridge in compatibility mode), fp32, CPU."""
    return sh.load_model()


@pytest.fixture(scope="session")
def eval_tokens():
    """The first 8 held-out rows, [8, 256], BOS at position 0."""
    return sh.load_eval_tokens(8)


@pytest.fixture
def small_tokens(eval_tokens):
    """[4, 64] held-out tokens for fast forward passes."""
    return eval_tokens[:4, :64].clone()


def random_sae(
    d_in=256,
    d_sae=512,
    architecture="topk",
    k=8,
    hook_name="blocks.1.hook_resid_post",
    seed=0,
    dtype="float32",
    **kw,
):
    """An SAE with unit-norm random decoder rows and encoder = decoder transpose."""
    cfg = sh.SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=k if architecture == "topk" else None,
        hook_name=hook_name,
        dtype=dtype,
        **kw,
    )
    sae = sh.SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        w /= w.norm(dim=-1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
        if architecture == "jumprelu":
            sae.threshold.fill_(0.5)
    return sae
