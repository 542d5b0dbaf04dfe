"""The ``mlp`` SAE (issue #15 §2, "the seed's example SAE"): a hidden layer on each side
of ReLU latents, L1 on the latents in training.

Every expected value is computed from the plain math in this file (``plain_mlp``), by
hand, or from the SAE's own encode/decode on clean activations, never from the code
path under test alone.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saehooks as sh
from saehooks import metrics
from saehooks import sae as sae_module
from saehooks.errors import InputError, InputTypeError, SAEFileError
from saehooks.hooks import attached_saes
from saehooks.interventions import decoder_vector, steering_vector
from saehooks.training import init
from saehooks.training.config import TrainConfig
from saehooks.training.objectives.base import StepState
from saehooks.training.objectives.mlp import MLPObjective, hidden_width

HOOK = "blocks.1.hook_resid_post"
NEXT = "blocks.2.hook_resid_pre"  # receives the spliced activation
MLP_TENSORS = {
    "W_enc_in": ("d_in", "d_hidden"),
    "b_enc_hidden": ("d_hidden",),
    "W_enc": ("d_hidden", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_hidden"),
    "b_dec_hidden": ("d_hidden",),
    "W_dec_out": ("d_hidden", "d_in"),
    "b_dec": ("d_in",),
}


def mlp_sae(d_in=256, d_sae=128, d_hidden=96, seed=0, hook_name=HOOK, **kw) -> sh.SAE:
    """An mlp SAE with random weights (about half the latents fire on a token)."""
    sae = sh.SAE(
        sh.SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            architecture="mlp",
            d_hidden=d_hidden,
            hook_name=hook_name,
            **kw,
        )
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            fan_in = param.shape[0] if param.ndim == 2 else 10.0
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
    return sae


def plain_mlp(sae: sh.SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, x̂)`` written out from the architecture's definition."""
    u = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    h = torch.relu(u @ sae.W_enc_in + sae.b_enc_hidden)
    z = torch.relu(h @ sae.W_enc + sae.b_enc)
    g = torch.relu(z @ sae.W_dec + sae.b_dec_hidden)
    return z, g @ sae.W_dec_out + sae.b_dec


# ---- the SAE ---------------------------------------------------------------------------
def test_config_needs_d_hidden_for_mlp_and_refuses_it_elsewhere():
    with pytest.raises(InputError, match=r"mlp SAE needs d_hidden.*d_hidden=32 \(2 \* d_in\)"):
        sh.SAEConfig(d_in=16, d_sae=8, architecture="mlp")
    with pytest.raises(InputError, match="d_hidden=32 is only used by architecture='mlp'"):
        sh.SAEConfig(d_in=16, d_sae=8, architecture="relu", d_hidden=32)
    with pytest.raises(InputError, match="d_hidden"):
        sh.SAEConfig(d_in=16, d_sae=8, architecture="mlp", d_hidden=0)
    with pytest.raises(InputTypeError, match="d_hidden"):
        sh.SAEConfig(d_in=16, d_sae=8, architecture="mlp", d_hidden=32.5)
    with pytest.raises(InputError, match="rescale_acts_by_decoder_norm"):
        sh.SAEConfig(
            d_in=16, d_sae=8, architecture="mlp", d_hidden=8, rescale_acts_by_decoder_norm=True
        )
    cfg = sh.SAEConfig(d_in=16, d_sae=8, architecture="mlp", d_hidden=24)
    assert cfg.d_hidden == 24 and cfg.replace(d_hidden=4).d_hidden == 4


def test_tensor_names_and_shapes():
    sizes = {"d_in": 12, "d_sae": 40, "d_hidden": 20}
    sae = mlp_sae(**sizes)
    assert list(sae.state_dict()) == list(MLP_TENSORS)  # also the file's order
    for name, dims in MLP_TENSORS.items():
        assert tuple(getattr(sae, name).shape) == tuple(sizes[d] for d in dims), name
    assert not sae.linear_decoder
    assert "mlp, d_hidden=20, d_in=12, d_sae=40" in repr(sae)
    assert sh.SAE(sh.SAEConfig(d_in=4, d_sae=8)).linear_decoder


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_encode_decode_and_hook_points_follow_the_plain_math(apply_b_dec_to_input):
    sae = mlp_sae(d_in=24, d_sae=48, d_hidden=32, apply_b_dec_to_input=apply_b_dec_to_input)
    x = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1))
    z, x_hat = plain_mlp(sae, x)
    seen = {}
    handles = [
        getattr(sae, name).add_hook(lambda t, hook, name=name: seen.setdefault(name, t.clone()))
        for name in sae_module.HOOK_NAMES
    ]
    with torch.no_grad():
        out = sae(x)
        encoded, decoded = sae.encode(x), sae.decode(z)
    for handle in handles:
        handle.remove()
    assert 0.2 < float((z > 0).float().mean()) < 0.8  # a code with zeros and non-zeros
    assert torch.equal(encoded, z) and torch.equal(decoded, x_hat) and torch.equal(out, x_hat)
    assert torch.equal(seen["hook_sae_acts_post"], z)
    assert torch.equal(torch.relu(seen["hook_sae_acts_pre"]), z)
    assert torch.equal(seen["hook_sae_recons"], x_hat)
    assert torch.equal(seen["hook_sae_output"], x_hat)


def test_decode_never_takes_the_sparse_path(monkeypatch):
    """A one-hot code is far below the sparse-decode density; the mlp decoder must still
    decode densely (the gather-sum of rows would skip the bias and the ReLU)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("sparse_decode used for an mlp SAE")

    monkeypatch.setattr(sae_module, "sparse_decode", refuse)
    sae = mlp_sae(d_in=16, d_sae=256, d_hidden=8)
    code = torch.zeros(4, 256)
    code[torch.arange(4), torch.tensor([3, 50, 50, 255])] = torch.tensor([1.0, 2.0, 0.5, 3.0])
    with torch.no_grad():
        assert not sae._may_decode_sparsely(code)
        expected = torch.relu(code @ sae.W_dec + sae.b_dec_hidden) @ sae.W_dec_out + sae.b_dec
        assert torch.equal(sae.decode(code), expected)
    # the check is not vacuous: a linear SAE decodes the same code sparsely
    linear = sh.SAE(sh.SAEConfig(d_in=16, d_sae=256))
    with pytest.raises(AssertionError, match="sparse_decode used"), torch.no_grad():
        linear.decode(code)


def test_width_2_d_in_holds_a_linear_relu_sae_exactly():
    """The reason for the default width 2·d_in: h = [relu(u), relu(-u)] carries u, so an
    mlp SAE reproduces any linear ReLU SAE (here: one with random weights)."""
    d_in, d_sae = 8, 32
    gen = torch.Generator().manual_seed(4)
    lin = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    mlp = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae, architecture="mlp", d_hidden=2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        mlp.W_enc_in.copy_(torch.cat([eye, -eye], 1))
        mlp.W_enc.copy_(torch.cat([lin.W_enc, -lin.W_enc], 0))
        mlp.b_enc.copy_(lin.b_enc)
        mlp.W_dec.copy_(torch.cat([lin.W_dec, -lin.W_dec], 1))
        mlp.W_dec_out.copy_(torch.cat([eye, -eye], 0))
        mlp.b_dec.copy_(lin.b_dec)
        x = torch.randn(50, d_in, generator=gen)
        torch.testing.assert_close(mlp.encode(x), lin.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mlp(x), lin(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    d_in=st.integers(1, 12),
    d_hidden=st.integers(1, 24),
    d_sae=st.integers(1, 40),
    n=st.integers(1, 16),
    bias=st.sampled_from([-100.0, -1.0, 0.0, 1.0, 100.0]),  # all dead ... all active
    value=st.sampled_from([0.0, 3.0]),  # ablate, or clamp
    seed=st.integers(0, 2**16),
)
def test_an_edited_latent_moves_the_output_by_its_decoded_difference_only(
    d_in, d_hidden, d_sae, n, bias, value, seed
):
    """Standalone forward with the error term and a hook setting latent j to ``value``:
    out = x + decode(z with z_j = value) - decode(z) (plain math), and rows whose z_j
    already equals ``value`` come out bit for bit as without the edit. Corners: every
    latent dead (bias -100), every latent active (+100), widths of 1, one token."""
    sae = mlp_sae(d_in=d_in, d_sae=d_sae, d_hidden=d_hidden, seed=seed)
    with torch.no_grad():
        sae.b_enc.add_(bias)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d_in, generator=gen)
    j = int(torch.randint(d_sae, (1,), generator=gen))
    sae.use_error_term = True
    with torch.no_grad():
        z, clean = plain_mlp(sae, x)
        unedited = sae(x)
        edited_z = z.clone()
        edited_z[:, j] = value
        expected = x + (plain_mlp_decode(sae, edited_z) - clean)

        def edit(acts, hook):
            acts = acts.clone()
            acts[:, j] = value
            return acts

        handle = sae.hook_sae_acts_post.add_hook(edit)
        try:
            out = sae(x)
        finally:
            handle.remove()
    scale = 1.0 + float(x.abs().max()) + float(expected.abs().max())
    torch.testing.assert_close(out, expected, atol=1e-5 * scale, rtol=1e-5)
    same = z[:, j] == value
    assert torch.equal(out[same], unedited[same])
    torch.testing.assert_close(unedited, x, atol=1e-5 * scale, rtol=1e-5)


def plain_mlp_decode(sae: sh.SAE, z: torch.Tensor) -> torch.Tensor:
    return torch.relu(z @ sae.W_dec + sae.b_dec_hidden) @ sae.W_dec_out + sae.b_dec


# ---- files -----------------------------------------------------------------------------
def test_save_load_round_trip_bit_for_bit(tmp_path):
    sae = mlp_sae(d_in=16, d_sae=32, d_hidden=24, metadata={"model_name": "m", "n": 3})
    sae.feature_density = torch.rand(32, generator=torch.Generator().manual_seed(2)) + 0.01
    sh.save_sae(sae, tmp_path / "mlp")
    raw = json.loads((tmp_path / "mlp" / "cfg.json").read_text())
    assert (raw["architecture"], raw["d_hidden"], raw["d_in"], raw["d_sae"]) == ("mlp", 24, 16, 32)
    back = sh.load_sae(tmp_path / "mlp")
    assert back.cfg == sae.cfg
    assert list(back.state_dict()) == list(MLP_TENSORS)
    for name, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    torch.testing.assert_close(back.feature_density, sae.feature_density, rtol=1e-6, atol=0)
    x = torch.randn(7, 16)
    with torch.no_grad():
        assert torch.equal(back(x), sae(x))
    sh.save_sae(back, tmp_path / "mlp")  # saving over itself needs no flag
    half = sh.load_sae(tmp_path / "mlp", dtype=torch.bfloat16)
    assert half.cfg.d_hidden == 24 and half.W_dec_out.dtype == torch.bfloat16


def test_a_cfg_json_that_cannot_mean_an_mlp_sae_is_refused(tmp_path):
    sh.save_sae(mlp_sae(d_in=8, d_sae=16, d_hidden=4), tmp_path / "a")
    cfg_path = tmp_path / "a" / "cfg.json"
    raw = json.loads(cfg_path.read_text())
    del raw["d_hidden"]
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match=r"cfg.json.*mlp SAE needs d_hidden"):
        sh.load_sae(tmp_path / "a")
    raw["d_hidden"] = "4"
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match="field 'd_hidden' must be an integer"):
        sh.load_sae(tmp_path / "a")
    raw["d_hidden"], raw["architecture"] = 4, "standard"
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match="d_hidden=4 is only used by architecture='mlp'"):
        sh.load_sae(tmp_path / "a")
    raw["architecture"], raw["d_hidden"] = "mlp", 5  # the tensors hold width 4
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match=r"W_enc_in has shape \(8, 4\), expected \(8, 5\)"):
        sh.load_sae(tmp_path / "a")


def test_formats_that_cannot_hold_it_refuse_before_writing(tmp_path):
    sae = mlp_sae(d_in=8, d_sae=16, d_hidden=4)
    with pytest.raises(
        InputError, match=r"sparsify format .* mlp SAE has a hidden layer.*format='saelens'"
    ):
        sh.save_sae(sae, tmp_path / "s", format="sparsify")
    with pytest.raises(InputError, match=r"dictionary_learning is read-only.*'saelens'"):
        sh.save_sae(sae, tmp_path / "d", format="dictionary_learning")
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


# ---- in a model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens():
    return sh.load_eval_tokens(2)[:, :24].clone()


@pytest.fixture(scope="module")
def clean(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


def _next_block_input(model, sae, tokens, use_error_term=True, context=None, cache_error=False):
    store = {}

    def read(act, hook):
        store["out"] = act.detach().clone()

    def read_error(act, hook):
        store["error"] = act.detach().clone()

    fwd = [(NEXT, read)] + ([(f"{HOOK}.hook_sae_error", read_error)] if cache_error else [])
    with torch.no_grad():
        if context is None:
            with sh.attach(model, sae, use_error_term=use_error_term):
                model.run_with_hooks(tokens, fwd_hooks=fwd)
        else:
            with context:
                model.run_with_hooks(tokens, fwd_hooks=fwd)
    return store


def test_spliced_with_the_error_term_equals_clean(model, tokens, clean):
    sae = mlp_sae(seed=3)
    got = _next_block_input(model, sae, tokens, cache_error=True)
    with torch.no_grad():
        expected_error = clean - sae.decode(sae.encode(clean))
    assert torch.equal(got["error"], expected_error)  # x - decode(encode(x)), raw input
    assert expected_error.norm() > 0.1 * clean.norm()  # a poor SAE: the term matters
    torch.testing.assert_close(got["out"], clean, atol=1e-4, rtol=0)
    plain = _next_block_input(model, sae, tokens, use_error_term=False)
    with torch.no_grad():
        assert torch.equal(plain["out"], plain_mlp(sae, clean)[1])
    with torch.no_grad():
        logits_clean = model(tokens)
        with sh.attach(model, sae, use_error_term=True):
            logits_spliced = model(tokens)
    torch.testing.assert_close(logits_spliced, logits_clean, atol=1e-3, rtol=1e-4)


def _half_firing_latent(z: torch.Tensor) -> int:
    """The latent whose firing fraction over positions is closest to one half."""
    rate = (z > 0).float().flatten(0, -2).mean(0)
    return int((rate - 0.5).abs().argmin())


def test_ablation_moves_only_that_latents_contribution(model, tokens, clean):
    """ablate_features keeps the error term, so the activation moves by exactly
    decode(z with z_j = 0) - decode(z) through the non-linear decoder, and not at all
    where latent j was not active."""
    sae = mlp_sae(seed=5)
    with torch.no_grad():
        z = sae.encode(clean)
        j = _half_firing_latent(z)
        edited = z.clone()
        edited[..., j] = 0.0
        expected_change = sae.decode(edited) - sae.decode(z)
    active = z[..., j] > 0
    assert 0 < int(active.sum()) < active.numel()
    base = _next_block_input(model, sae, tokens)["out"]
    got = _next_block_input(model, sae, tokens, context=sh.ablate_features(model, sae, [j]))
    change = got["out"] - clean
    torch.testing.assert_close(change, expected_change, atol=1e-4, rtol=1e-4)
    assert expected_change[active].norm(dim=-1).min() > 1e-3  # a real move where active
    assert torch.equal(got["out"][~active], base[~active])  # nothing moves elsewhere


def test_clamp_sets_the_latent_through_the_non_linear_decoder(model, tokens, clean):
    sae = mlp_sae(seed=6)
    with torch.no_grad():
        z = sae.encode(clean)
        j = _half_firing_latent(z)
        edited = z.clone()
        edited[..., j] = 7.5
        expected_change = sae.decode(edited) - sae.decode(z)
    got = _next_block_input(model, sae, tokens, context=sh.clamp_features(model, sae, {j: 7.5}))
    torch.testing.assert_close(got["out"] - clean, expected_change, atol=1e-4, rtol=1e-4)


def test_steering_refuses_a_decoder_that_is_not_a_dictionary(model, tokens):
    sae = mlp_sae(seed=7)
    said = r"not a dictionary of directions.*clamp_features.*ablate_features"
    with pytest.raises(InputError, match=said), sh.steer(model, sae, 3, 4.0):
        pass
    with pytest.raises(InputError, match=said), sh.steer(model, sae, {3: 4.0, 5: 1.0}):
        pass
    with pytest.raises(InputError, match=said):
        steering_vector(model, sae, 3, 4.0)
    with pytest.raises(InputError, match=said):
        decoder_vector(sae, 3)
    with pytest.raises(InputError, match=r"feature_logit_effects needs .*" + said):
        sh.feature_logit_effects(model, sae, 3)
    with pytest.raises(InputError, match=r"steering_sweep needs .*" + said):
        sh.steering_sweep(model, sae, 3, [0.0, 1.0], "def f(x):", tokens=tokens)
    assert not attached_saes(model)


def test_a_feature_page_of_an_mlp_sae_has_examples_and_no_logit_effects(model, tokens, tmp_path):
    from saehooks.analysis.html import feature_html

    sae = mlp_sae(seed=7)
    page = feature_html(model, sae, tokens, 3, tmp_path / "f3.html").read_text()
    assert "Top activating examples" in page
    assert "decoder is not a dictionary of directions (mlp)" in page


def test_evaluate_reports_the_hand_computed_reconstruction(model, tokens, clean):
    sae = mlp_sae(seed=8)
    report = sh.evaluate(model, sae, tokens, progress=False)
    keep = tokens != model.tokenizer.bos_token_id
    x = clean[keep].double()
    with torch.no_grad():
        z, x_hat = plain_mlp(sae, clean[keep])
    fvu = ((x - x_hat.double()) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert report.fvu == pytest.approx(float(fvu), rel=1e-5)
    assert report.l0 == pytest.approx(float((z > 0).double().sum(-1).mean()), rel=1e-9)

    def splice(act, hook):
        return torch.where(keep[..., None], plain_mlp(sae, act)[1], act)

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice)])
    ce = metrics.next_token_ce(logits, tokens)[keep[:, :-1]].double().mean()
    assert report.ce_loss_spliced == pytest.approx(float(ce), rel=1e-5)
    assert report.ce_loss_spliced > report.ce_loss_clean


# ---- training ----------------------------------------------------------------------------
def mlp_train_config(**changes) -> TrainConfig:
    base = dict(
        architecture="mlp",
        d_sae=64,
        mlp_hidden=0,
        l1_coefficient=0.05,
        sparsity_warmup_fraction=0.0,
        total_tokens=300 * 64,
        batch_size=64,
        progress_bar=False,
    )
    return TrainConfig(**{**base, **changes})


def test_the_loss_on_hand_values():
    """d_in = d_hidden = d_sae = 2, weights chosen so that every step is checkable:
    u = x - b_dec = [[0.5, -2], [2.5, 0.5]]; h = [[0.5, 0], [2.5, 0.5]];
    h W_enc + b_enc = [[0.5, -0.25], [2, 0.75]] -> z = [[0.5, 0], [2, 0.75]];
    z W_dec + b_dec_hidden = [[0.5, 1], [2, 0.25]] (ReLU keeps them);
    x̂ = g W_dec_out + b_dec = [[1, 2], [2.5, 0.5]]; x - x̂ = [[0, -4], [0.5, 0]]:
    mse = (16 + 0.25) / 2 = 8.125; L1 = (0.5 + 2.75) / 2 = 1.625;
    loss = 8.125 + 0.5 · 1.625 = 8.9375; L0 = (1 + 2) / 2 = 1.5."""
    objective = MLPObjective(mlp_train_config(l1_coefficient=0.5, mlp_hidden=2, d_sae=2))
    assert objective.training_config(2) == {"architecture": "mlp", "d_hidden": 2}
    sae = sh.SAE(sh.SAEConfig(d_in=2, d_sae=2, **objective.training_config(2)))
    t = torch.tensor
    with torch.no_grad():
        sae.W_enc_in.copy_(torch.eye(2))
        sae.W_enc.copy_(t([[1.0, 0.0], [-1.0, 2.0]]))
        sae.b_enc.copy_(t([0.0, -0.25]))
        sae.W_dec.copy_(t([[1.0, 0.0], [0.0, -1.0]]))
        sae.b_dec_hidden.copy_(t([0.0, 1.0]))
        sae.W_dec_out.copy_(t([[1.0, 0.0], [0.0, 2.0]]))
        sae.b_dec.copy_(t([0.5, 0.0]))
    x = t([[1.0, -2.0], [3.0, 0.5]])
    out = objective.forward(sae, x, StepState(0, 0, torch.zeros(2, dtype=torch.bool)))
    assert float(out.loss.detach()) == 8.9375
    assert float(out.mse) == 8.125 and float(out.aux) == 1.625
    assert out.l0 == 1.5 and out.fired.tolist() == [True, True]
    assert torch.equal(out.x_hat, t([[1.0, 2.0], [2.5, 0.5]]))
    out.loss.backward()  # d loss / d b_enc[1] = d(mse)/d z_1 + λ/2 · 1 (token 2 only)
    # z_1 of token 2 feeds g_1 = 1 - z_1 (W_dec[1, 1] = -1), x̂_1 = 2 g_1: d x̂_1/d z_1 = -2,
    # d mse / d x̂_1 = -2 (x_1 - x̂_1) / 2 = 0 for token 2, so only the penalty: 0.5 / 2
    assert float(sae.b_enc.grad[1]) == 0.25


def test_the_objective_needs_the_width_it_was_built_with():
    objective = MLPObjective(mlp_train_config())
    with pytest.raises(InputError, match="does not know d_hidden"):
        objective.inference_config()
    assert hidden_width(0, 16) == 32 and hidden_width(24, 16) == 24


def test_fold_scale_computes_the_training_sae_on_scaled_inputs():
    """out(x) = train(s·x) / s with the same latents, at a scale far from 1."""
    train = mlp_sae(d_in=16, d_sae=64, d_hidden=40, seed=9)
    out = sh.SAE(train.cfg.replace())
    scale = 3.7
    MLPObjective.fold_scale(train, scale, out)
    x = 5 * torch.randn(200, 16, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.testing.assert_close(out.encode(x), train.encode(scale * x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out(x), train(scale * x) / scale, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.W_enc, train.W_enc) and torch.equal(out.W_dec, train.W_dec)


def test_initialise_starts_as_a_tied_linear_sae():
    """At width 2·d_in (before the encoder-scale fit) the decoder is z D + b_dec for the
    matrix D of unit rows read off one-hot codes, and the encoder is relu((x - b_dec) Dᵀ)."""
    d_in, d_sae = 8, 32
    objective = MLPObjective(mlp_train_config(d_sae=d_sae))
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_sae, **objective.training_config(d_in)))
    x = torch.randn(300, d_in, generator=torch.Generator().manual_seed(11)) + 2.0
    gen = torch.Generator().manual_seed(12)
    objective.initialise(sae, x, b_dec_init="mean", generator=gen, fit_encoder_scale=False)
    with torch.no_grad():
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(d_sae))
        torch.testing.assert_close(sae.b_dec, x.mean(0))
        d = sae.decode(torch.eye(d_sae)) - sae.b_dec  # [d_sae, d_in]
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(d_sae), atol=1e-5, rtol=0)
        z = torch.rand(50, d_sae, generator=gen) * (torch.rand(50, d_sae, generator=gen) < 0.3)
        torch.testing.assert_close(sae.decode(z), z @ d + sae.b_dec, atol=1e-5, rtol=1e-5)
        expected = torch.relu((x - sae.b_dec) @ d.t())
        torch.testing.assert_close(sae.encode(x), expected, atol=1e-5, rtol=1e-5)
        # the least-squares encoder scale lowers the initial error
        before = ((sae(x) - x) ** 2).sum()
        objective.initialise(sae, x, b_dec_init="mean", generator=torch.Generator().manual_seed(12))
        assert ((sae(x) - x) ** 2).sum() < before


def test_a_short_training_run_lowers_the_loss_and_saves(tmp_path):
    """The loop the objective asks for (training_config, initialise, the loop's Adam step
    with unit-norm decoder rows, fold_scale), on the training tests' synthetic store."""
    import conftest_training

    cfg = mlp_train_config(target_l0=6.0, sparsity_warmup_fraction=0.1)
    objective = MLPObjective(cfg)
    store = conftest_training.FakeStore(d_in=16, batch_size=64, seed=1)
    first = torch.cat([store.next_batch() for _ in range(4)])
    scale = init.normalisation_scale(first)
    sae = sh.SAE(sh.SAEConfig(d_in=16, d_sae=64, **objective.training_config(16)))
    assert sae.cfg.d_hidden == 32  # mlp_hidden=0: 2 * d_in
    gen = torch.Generator().manual_seed(0)
    objective.initialise(sae, first * scale, b_dec_init="geometric_median", generator=gen)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses, fvus = [], []
    for step in range(cfg.total_steps):
        x = store.next_batch() * scale
        state = StepState(step, step * 64, torch.zeros(64, dtype=torch.bool))
        out = objective.forward(sae, x, state)
        optimizer.zero_grad()
        out.loss.backward()
        with torch.no_grad():  # the loop's unit-norm step (objective.unit_norm_decoder)
            w, g = sae.W_dec, sae.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        objective.after_step(sae, x, out, state, None)
        losses.append(float(out.mse))
        fvus.append(metrics.fvu(x, out.x_hat))
    assert objective.unit_norm_decoder
    assert sum(fvus[-20:]) / 20 < 0.5 * sum(fvus[:20]) / 20
    assert sum(fvus[-20:]) / 20 < 0.1
    assert objective.cfg.read == MLPObjective.fields  # every declared field is read
    saved = sh.SAE(sh.SAEConfig(d_in=16, d_sae=64, **objective.inference_config()))
    objective.fold_scale(sae, scale, saved)
    raw = store.next_batch()
    with torch.no_grad():
        torch.testing.assert_close(saved(raw), sae(raw * scale) / scale, atol=1e-4, rtol=1e-4)
    sh.save_sae(saved, tmp_path / "trained")
    back = sh.load_sae(tmp_path / "trained")
    with torch.no_grad():
        assert torch.equal(back(raw), saved(raw))


def test_fold_w_dec_norm_keeps_what_an_mlp_sae_computes():
    """Unit-norm rows of W_dec [d_sae, d_hidden] with z_j scaled by ‖W_dec[j]‖: exact for
    the mlp SAE too (ReLU is positively homogeneous, so scaling W_enc[:, j] and b_enc[j]
    scales z_j)."""
    sae = mlp_sae(d_in=16, d_sae=64, d_hidden=40, seed=13)
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1)
        z, x_hat = sae.encode(x), sae(x)
        sh.io.fold_W_dec_norm(sae)
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
        torch.testing.assert_close(sae.encode(x), z * norms, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), x_hat, atol=1e-5, rtol=1e-5)


def test_the_trainer_trains_an_mlp_sae(tmp_path):
    """The loop builds, initialises and folds through the objective
    (Objective.training_config / initialise / fold_scale): a run trains and saves an mlp
    SAE."""
    import conftest_training

    from saehooks.training.trainer import Trainer

    cfg = conftest_training.fake_config(
        tmp_path,
        architecture="mlp",
        l1_coefficient=0.05,
        target_l0=6.0,
        total_tokens=100 * 64,
        checkpoint_every_tokens=0,
        log_every_steps=10,
    )
    store = conftest_training.FakeStore(d_in=16)
    trainer = Trainer(None, store, cfg)
    sae = trainer.run()
    assert (sae.cfg.architecture, sae.cfg.d_hidden) == ("mlp", 32)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    fvu = [float(row.split(",")[6]) for row in lines[1:]]
    assert fvu[-1] < 0.5 * fvu[0]
    back = sh.load_sae(tmp_path / "sae")
    raw = store.next_batch()
    with torch.no_grad():
        assert torch.equal(back(raw), sae(raw))
        train_space = trainer.sae(raw * trainer.scale) / trainer.scale
        torch.testing.assert_close(sae(raw), train_space, atol=1e-4, rtol=1e-4)


def test_bfloat16_matmuls_give_the_float32_loss_to_bf16_precision():
    sae = mlp_sae(d_in=16, d_sae=64, d_hidden=32, seed=15)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(16))
    state = StepState(0, 0, torch.zeros(64, dtype=torch.bool))
    cfg = mlp_train_config(l1_coefficient=0.1)
    full = MLPObjective(cfg, "float32").forward(sae, x, state)
    half = MLPObjective(cfg, "bfloat16").forward(sae, x, state)
    assert half.x_hat.dtype == torch.float32
    assert not torch.equal(half.x_hat, full.x_hat)  # the bf16 path really ran
    assert float(full.loss.detach()) == pytest.approx(float(half.loss.detach()), rel=3e-2)
    torch.testing.assert_close(half.x_hat, full.x_hat, atol=0.05, rtol=0.05)
