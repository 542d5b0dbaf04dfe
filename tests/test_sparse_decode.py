"""Sparse decoding equals the dense product (randomised, with the corners on purpose)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saehooks.sae import SAE, SAEConfig, sparse_decode


@st.composite
def codes(draw):
    n = draw(st.integers(1, 12))
    d_sae = draw(st.integers(1, 96))
    d_in = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["topk", "empty", "one_row_dense", "ties", "full_k"]))
    gen = torch.Generator().manual_seed(seed)
    acts = torch.zeros(n, d_sae)
    k = draw(st.integers(1, max(1, d_sae // 16)))
    if kind in ("topk", "ties"):
        pre = torch.randn(n, d_sae, generator=gen)
        if kind == "ties":
            pre = pre.round()
        v, i = pre.topk(k, -1)
        acts.scatter_(-1, i, v.relu())
    elif kind == "one_row_dense":
        acts[0] = torch.rand(d_sae, generator=gen)
    elif kind == "full_k":
        acts = torch.rand(n, d_sae, generator=gen)
    w = torch.randn(d_sae, d_in, generator=gen)
    return acts, w


@settings(max_examples=120, deadline=None)
@given(codes())
def test_sparse_decode_equals_the_dense_product_or_declines(case):
    acts, w = case
    out = sparse_decode(acts, w)
    density = (acts != 0).float().mean().item()
    if out is None:
        assert density > 1 / 16
        return
    assert density <= 1 / 16
    torch.testing.assert_close(out, acts @ w, atol=1e-5, rtol=1e-5)


def test_an_all_zero_code_decodes_to_zero_and_leading_dims_are_kept():
    w = torch.randn(64, 8)
    out = sparse_decode(torch.zeros(2, 3, 64), w)
    assert out.shape == (2, 3, 8) and torch.equal(out, torch.zeros(2, 3, 8))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sae_decode_uses_it_and_matches_dense(dtype):
    cfg = SAEConfig(d_in=16, d_sae=256, architecture="topk", k=4, dtype=dtype)
    sae = SAE(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(5, 7, 16, generator=gen)
    with torch.no_grad():
        acts = sae.encode(x)
        dense = acts.to(sae.dtype) @ sae.W_dec + sae.b_dec
        tol = 1e-5 if dtype == "float32" else 5e-2
        torch.testing.assert_close(sae.decode(acts), dense, atol=tol, rtol=tol)
    # with a gradient on the latents, the dense product (every latent gets a gradient)
    leaf = acts.clone().requires_grad_(True)
    sae.decode(leaf).sum().backward()
    expected = sae.W_dec.detach().float().sum(-1).expand_as(leaf).to(leaf.grad.dtype)
    torch.testing.assert_close(
        leaf.grad,
        expected,
        atol=1e-4 if dtype == "float32" else 0.5,
        rtol=1e-4 if dtype == "float32" else 5e-2,
    )
