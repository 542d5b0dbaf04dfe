"""The SAE module: formulas, activation functions, error term, hook points."""

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks import activation_fns as activations


def test_encode_decode_follow_the_saelens_formulas():
    sae = random_sae(architecture="relu", d_in=16, d_sae=32)
    x = torch.randn(5, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.allclose(sae.encode(x), torch.relu(pre))
    acts = sae.encode(x)
    assert torch.allclose(sae.decode(acts), acts @ sae.W_dec + sae.b_dec)
    sae.cfg.apply_b_dec_to_input = False
    assert torch.allclose(sae.encode(x), torch.relu(x @ sae.W_enc + sae.b_enc))


def test_any_leading_shape():
    sae = random_sae(d_in=16, d_sae=32, k=4)
    x = torch.randn(2, 3, 5, 16)
    assert sae.encode(x).shape == (2, 3, 5, 32)
    assert sae(x).shape == x.shape
    assert torch.allclose(sae(x).reshape(-1, 16), sae(x.reshape(-1, 16)), atol=1e-6)


def test_topk_gives_exactly_k_nonzeros_per_token():
    sae = random_sae(d_in=16, d_sae=64, k=7)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive
    acts = sae.encode(torch.randn(3, 11, 16))
    assert torch.equal((acts != 0).sum(-1), torch.full((3, 11), 7))


def test_topk_keeps_the_largest():
    pre = torch.tensor([[0.5, -1.0, 3.0, 2.0, 0.1]])
    assert activations.topk(pre, 2).tolist() == [[0.0, 0.0, 3.0, 2.0, 0.0]]
    # negative winners are zeroed by the ReLU
    assert activations.topk(torch.tensor([[-1.0, -2.0, 1.0]]), 2).tolist() == [[0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="k"):
        activations.topk(pre, 6)


def test_batch_topk_keeps_k_per_row_on_average():
    pre = torch.tensor([[5.0, 4.0, 0.1], [0.2, 0.3, 0.0]])
    out = activations.batch_topk(pre, 1)
    assert out.tolist() == [[5.0, 4.0, 0.0], [0.0, 0.0, 0.0]]


def test_jumprelu_threshold():
    pre = torch.tensor([[0.2, 0.6, -1.0, 1.0]])
    out = activations.jumprelu(pre, torch.tensor([0.5, 0.5, -2.0, 1.0]))
    assert torch.equal(out, torch.tensor([[0.0, 0.6, 0.0, 0.0]]))


def test_gated_closed_gate_gives_zero_even_with_positive_magnitude():
    sae = sh.SAE(sh.SAEConfig(d_in=2, d_sae=2, architecture="gated", apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_gate.copy_(torch.tensor([-10.0, 0.0]))  # latent 0's gate closed
        sae.b_mag.copy_(torch.tensor([10.0, 0.0]))  # ... though its magnitude is positive
        sae.r_mag.copy_(torch.log(torch.tensor([2.0, 3.0])))
    acts = sae.encode(torch.tensor([[1.0, 1.0]]))
    assert acts.tolist() == [[0.0, pytest.approx(3.0)]]


def test_error_term_makes_output_equal_input_and_intervention_exact():
    sae = random_sae(d_in=32, d_sae=64, k=8)
    sae.use_error_term = True
    x = 3 * torch.randn(4, 32)
    assert torch.allclose(sae(x), x, atol=1e-5)
    acts = sae.encode(x)
    feature = int(acts[0].nonzero()[0])

    def zero_feature(a, hook):
        a = a.clone()
        a[..., feature] = 0.0
        return a

    handle = sae.hook_sae_acts_post.add_hook(zero_feature)
    try:
        out = sae(x)
    finally:
        handle.remove()
    expected = x - acts[:, feature, None] * sae.W_dec[feature]
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(out[acts[:, feature] == 0], sae(x)[acts[:, feature] == 0])


def test_error_term_holds_when_a_hook_edits_latents_in_place():
    sae = random_sae(d_in=8, d_sae=16, k=4)
    sae.use_error_term = True
    x = torch.randn(3, 8)
    acts = sae.encode(x)

    def zero_in_place(a, hook):
        a[..., 3] = 0.0

    handle = sae.hook_sae_acts_post.add_hook(zero_in_place)
    try:
        out = sae(x)
    finally:
        handle.remove()
    assert torch.allclose(out, x - acts[:, 3, None] * sae.W_dec[3], atol=1e-5)


def test_bf16_sae_computes_in_its_dtype():
    sae = random_sae(d_in=16, d_sae=32, k=4, dtype="bfloat16")
    out = sae(torch.randn(2, 16))
    assert out.dtype == torch.bfloat16
    assert sae.cfg.dtype == "bfloat16"


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(architecture="softmax"), "architecture"),
        (dict(architecture="topk", k=None), "k"),
        (dict(architecture="topk", k=99), "k"),
        (dict(dtype="int8"), "dtype"),
        (dict(d_sae=0), r"d_sae must be >= 1, got 0"),
        (dict(d_in=-3), r"d_in must be >= 1, got -3"),
    ],
)
def test_config_validation(bad, match):
    kw = dict(d_in=4, d_sae=8, architecture="relu") | bad
    with pytest.raises(ValueError, match=match):
        sh.SAEConfig(**kw)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_load_round_trip(tmp_path, arch, dtype):
    sae = random_sae(d_in=16, d_sae=32, architecture=arch, k=4, dtype=dtype)
    if arch == "gated":
        with torch.no_grad():
            sae.r_mag.normal_()
            sae.b_gate.normal_()
    sae.cfg.metadata["model_name"] = "reference"
    sae.save(tmp_path / "sae")
    loaded = sh.load_sae(tmp_path / "sae")
    x = torch.randn(6, 16)
    assert loaded.cfg == sae.cfg
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))


def test_load_honours_device_and_dtype(tmp_path):
    random_sae(d_in=8, d_sae=16, k=2).save(tmp_path / "s")
    loaded = sh.load_sae(tmp_path / "s", dtype=torch.bfloat16, device="cpu")
    assert loaded.W_enc.dtype == torch.bfloat16 and loaded.cfg.dtype == "bfloat16"
