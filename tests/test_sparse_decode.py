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


@st.composite
def topk_saes(draw):
    d_in = draw(st.integers(1, 24))
    d_sae = draw(st.sampled_from([16, 48, 160, 512]))
    k = draw(st.integers(1, d_sae // 16))
    lead = draw(st.sampled_from([(1,), (5,), (2, 3), (3, 1, 4)]))
    kind = draw(st.sampled_from(["random", "ties", "all_negative", "some_negative_rows"]))
    seed = draw(st.integers(0, 2**16))
    use_error_term = draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if kind == "ties":  # many equal pre-activations: the same latents must win
            sae.W_enc.copy_(sae.W_enc.round())
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        elif kind == "all_negative":  # every kept value ReLUs to zero
            sae.b_enc.fill_(-1e4)
        elif kind == "some_negative_rows":
            sae.b_enc[: d_sae // 2] = -1e4
    x = torch.randn(*lead, d_in, generator=gen)
    if kind == "ties":
        x = x.round()
    sae.use_error_term = use_error_term
    return sae, x


@settings(max_examples=100, deadline=None)
@given(topk_saes())
def test_the_unhooked_topk_shortcut_equals_the_general_path_bit_for_bit(case):
    """SAE.forward decodes an unhooked TopK SAE straight from topk's values and indices;
    an identity hook on the latents forces the general path (dense code, scatter,
    sparse_decode over its non-zeros), which must give the same bits."""
    sae, x = case
    with torch.no_grad():
        assert sae._topk_decode_unhooked(x) is not None  # the shortcut really runs
        fast = sae(x)
        handle = sae.hook_sae_acts_post.add_hook(lambda t, hook: t)
        try:
            assert sae._topk_decode_unhooked(x) is None
            general = sae(x)
        finally:
            handle.remove()
    assert torch.equal(fast, general)
    if not sae.use_error_term:
        dense = sae.encode(x) @ sae.W_dec + sae.b_dec
        torch.testing.assert_close(fast, dense, atol=1e-4, rtol=1e-4)


def test_the_shortcut_steps_aside_for_gradients_and_dense_k():
    sae = SAE(SAEConfig(d_in=8, d_sae=64, architecture="topk", k=4))
    x = torch.randn(3, 8)
    assert sae._topk_decode_unhooked(x) is None  # parameters need gradients
    with torch.no_grad():
        assert sae._topk_decode_unhooked(x) is not None
        wide = SAE(SAEConfig(d_in=8, d_sae=64, architecture="topk", k=5))  # 5/64 > 1/16
        assert wide._topk_decode_unhooked(x) is None
