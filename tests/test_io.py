"""Saving and loading: round trips, the SAELens v6 file, pre-v6 configs, damaged files.

Foreign layouts (sparsify, dictionary_learning) are in test_io_foreign.py, the hub in
test_io_hub.py, and running loaded SAEs on the reference model in test_io_hooked.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import saehooks as sh
from saehooks.errors import InputError
from saehooks.io import SAEFileError, detect_format, fold_W_dec_norm, save_sae
from saehooks.io.sparsify import to_sparsify_form

ARCHS = ("relu", "topk", "jumprelu", "gated")
D_IN, D_SAE, K = 16, 48, 5


def rich_sae(architecture: str, dtype: str = "float32", seed: int = 0, **kw) -> sh.SAE:
    """An SAE whose every tensor matters: uneven decoder norms, random biases,
    thresholds, gates and magnitudes."""
    cfg = sh.SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        k=K if architecture == "topk" else None,
        hook_name="blocks.1.hook_resid_post",
        dtype=dtype,
        metadata={"model_name": "reference-lm", "context_size": 64},
        **kw,
    )
    sae = sh.SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=gen))
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE)[:, None].to(sae.W_dec.dtype))
        if architecture == "jumprelu":
            sae.threshold.copy_(0.2 * torch.rand(D_SAE, generator=gen))
        if architecture == "gated":
            sae.b_enc.zero_()  # unused by the gated forward pass
    return sae


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6, atol: float = 1e-6
) -> None:
    """torch.allclose with the largest difference in the message (torch.testing's
    version imports sympy on first use, which costs seconds)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.float(), expected.float(), rtol=rtol, atol=atol), (
        f"max abs difference {(actual.float() - expected.float()).abs().max().item():.3g}"
    )


def inputs(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


# ---- round trips ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("architecture", ARCHS)
def test_saelens_round_trip_is_exact(tmp_path, architecture, dtype):
    sae = rich_sae(architecture, dtype)
    sae.save(tmp_path)
    back = sh.load_sae(tmp_path)
    x = inputs()
    acts = sae.encode(x)
    assert back.dtype == getattr(torch, dtype)
    assert acts.count_nonzero() > 0
    assert torch.equal(back.encode(x), acts)
    assert torch.equal(back.decode(acts), sae.decode(acts))
    assert torch.equal(back(x), sae(x))
    for name, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert back.cfg.replace(metadata={}) == sae.cfg.replace(metadata={})
    assert back.cfg.metadata["model_name"] == "reference-lm"
    assert not back.training


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sparsify_round_trip_is_exact(tmp_path, dtype):
    sae = rich_sae("topk", dtype)
    save_sae(sae, tmp_path / "layers.1", format="sparsify")
    assert detect_format(tmp_path / "layers.1") == "sparsify"
    back = sh.load_sae(tmp_path / "layers.1")
    x = inputs()
    assert back.cfg.architecture == "topk" and back.cfg.k == K
    assert back.cfg.hook_name == "blocks.1.hook_resid_post"
    assert back.dtype == getattr(torch, dtype)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))


@pytest.mark.parametrize(
    "kw",
    [
        {"rescale_acts_by_decoder_norm": True},
        {"apply_b_dec_to_input": False},
        {"rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": False},
    ],
)
def test_sparsify_refuses_options_it_cannot_express_and_writes_nothing(tmp_path, kw):
    sae = rich_sae("topk", **kw)
    with pytest.raises(InputError, match="to_sparsify_form"):
        save_sae(sae, tmp_path / "layers.1", format="sparsify")
    assert not (tmp_path / "layers.1").exists() and list(tmp_path.iterdir()) == []


def test_to_sparsify_form_folds_rescaling_and_input_bias(tmp_path):
    sae = rich_sae("topk", rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=False)
    save_sae(to_sparsify_form(sae), tmp_path, format="sparsify")
    back = sh.load_sae(tmp_path)
    x = inputs()
    assert not back.cfg.rescale_acts_by_decoder_norm and back.cfg.apply_b_dec_to_input
    assert torch.equal(back.encode(x) > 0, sae.encode(x) > 0)
    assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    assert_close(back(x), sae(x), rtol=1e-5, atol=1e-5)
    assert sae.cfg.rescale_acts_by_decoder_norm  # the SAE being saved is left alone


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated"])
def test_sparsify_refuses_what_it_cannot_hold(tmp_path, architecture):
    with pytest.raises(ValueError, match="top-k SAEs only"):
        save_sae(rich_sae(architecture), tmp_path, format="sparsify")


def test_unknown_and_read_only_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match="read-only"):
        save_sae(rich_sae("relu"), tmp_path, format="dictionary_learning")
    with pytest.raises(ValueError, match="'saelens', 'sparsify'"):
        save_sae(rich_sae("relu"), tmp_path, format="pickle")


def test_load_sae_honours_device_and_dtype(tmp_path):
    rich_sae("jumprelu").save(tmp_path)
    half = sh.load_sae(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.cfg.dtype == "bfloat16"
    assert half.threshold.dtype == torch.bfloat16
    on_meta = sh.load_sae(tmp_path, device="meta", dtype="float16")
    assert on_meta.device.type == "meta" and on_meta.cfg.device == "meta"
    assert on_meta.dtype == torch.float16
    with pytest.raises(ValueError, match="unsupported SAE dtype"):
        sh.load_sae(tmp_path, dtype="int8")


# ---- the SAELens v6 file ------------------------------------------------------------
V6_FIELDS = {
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
}


@pytest.mark.parametrize("architecture", ARCHS)
def test_written_cfg_is_what_saelens_6_reads(tmp_path, architecture):
    rich_sae(architecture).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    extra = {"k", "rescale_acts_by_decoder_norm"} if architecture == "topk" else set()
    assert set(cfg) == V6_FIELDS | extra
    assert cfg["architecture"] == {"relu": "standard"}.get(architecture, architecture)
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D_IN, D_SAE, "float32")
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6  # else SAELens reads it as pre-v6
    assert meta["model_name"] == "reference-lm" and meta["context_size"] == 64
    names = set(load_file(str(tmp_path / "sae_weights.safetensors")))
    expected = {"W_enc", "b_enc", "W_dec", "b_dec"} | {
        "jumprelu": {"threshold"},
        "gated": {"b_gate", "r_mag", "b_mag"},
    }.get(architecture, set())
    if architecture == "gated":
        expected.discard("b_enc")  # SAELens' gated SAE has none
    assert names == expected


def test_sparsity_file_is_the_feature_density(tmp_path):
    sae = rich_sae("relu")
    density = torch.linspace(0, 1, D_SAE)
    sae.feature_density = density
    sae.save(tmp_path)
    stored = load_file(str(tmp_path / "sparsity.safetensors"))["sparsity"]
    assert stored[0] == float("-inf") and stored[-1] == 0.0  # log10 of the density
    back = sh.load_sae(tmp_path)
    assert_close(back.feature_density, density)
    assert sh.load_sae(tmp_path).feature_density is not None
    (tmp_path / "sparsity.safetensors").unlink()
    assert sh.load_sae(tmp_path).feature_density is None


def test_saelens_training_checkpoint_log_threshold(tmp_path):
    sae = rich_sae("jumprelu")
    sae.save(tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    tensors["log_threshold"] = tensors.pop("threshold").log()
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    back = sh.load_sae(tmp_path)
    assert_close(back.threshold, sae.threshold)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normalize_activations", "layer_norm", "normalises every input"),
        ("normalize_activations", "expected_average_only_in", "fold_activation_norm_scaling"),
        ("reshape_activations", "hook_z", "hook_z"),
        ("architecture", "matryoshka_batchtopk", "not supported"),
    ],
)
def test_v6_settings_that_cannot_run_are_refused(tmp_path, field, value, message):
    rich_sae("relu").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg[field] = value
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        sh.load_sae(tmp_path)


# ---- pre-v6 configs -------------------------------------------------------------------
def write_legacy(path, sae: sh.SAE, **cfg) -> None:
    """A flat config as SAELens 3-5 wrote it, with the SAE's tensors."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in sae.state_dict().items()}
    tensors.update(cfg.pop("tensors", {}))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    flat = {
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_point": "blocks.1.hook_resid_post",
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "context_size": 128,
        "prepend_bos": True,
        "lr": 4e-4,
        "l1_coefficient": 5.0,
        "sae_lens_version": "3.13.0",
        **cfg,
    }
    (path / "cfg.json").write_text(json.dumps(flat))


def test_legacy_topk_config_loads_as_topk_with_l0_equal_k(tmp_path):
    sae = rich_sae("topk")
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: each row keeps exactly k
    write_legacy(
        tmp_path,
        sae,
        architecture="standard",
        activation_fn_str="topk",
        activation_fn_kwargs={"k": K},
    )
    back = sh.load_sae(tmp_path)
    assert back.cfg.architecture == "topk" and back.cfg.k == K
    l0 = (back.encode(inputs(64)) != 0).sum(-1)
    assert torch.all(l0 == K)
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))


def test_legacy_keys_are_mapped_and_nothing_is_dropped(tmp_path):
    sae = rich_sae("relu")
    write_legacy(tmp_path, sae, activation_fn_str="relu", normalize_activations=False)
    back = sh.load_sae(tmp_path)
    assert back.cfg.architecture == "relu"
    assert back.cfg.hook_name == "blocks.1.hook_resid_post"
    meta = back.cfg.metadata
    assert meta["hook_layer"] == 1 and meta["model_name"] == "gpt2-small"
    assert meta["context_size"] == 128 and meta["prepend_bos"] is True
    assert meta["converted_from_sae_lens_version"] == "3.13.0"
    assert meta["legacy_config"] == {"lr": 4e-4, "l1_coefficient": 5.0}
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))
    back.save(tmp_path / "v6")  # re-saved, it is a v6 file
    cfg = json.loads((tmp_path / "v6" / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"


def test_legacy_sizes_from_expansion_factor_and_jumprelu(tmp_path):
    sae = rich_sae("jumprelu")
    write_legacy(tmp_path, sae, architecture="jumprelu", d_sae=None, expansion_factor=3)
    back = sh.load_sae(tmp_path)
    assert (back.cfg.architecture, back.cfg.d_sae) == ("jumprelu", 3 * D_IN)
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))


def test_legacy_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path):
    sae = rich_sae("relu")
    scale = torch.linspace(0.5, 1.5, D_SAE)
    write_legacy(tmp_path, sae, finetuning_scaling_factor=True, tensors={"scaling_factor": scale})
    back = sh.load_sae(tmp_path)
    x = inputs()
    acts = sae.encode(x)
    assert torch.equal(back.encode(x), acts)  # the latents SAELens reports
    assert_close(back.decode(acts), (acts * scale) @ sae.W_dec + sae.b_dec)
    write_legacy(tmp_path / "ones", sae, tensors={"scaling_factor": torch.ones(D_SAE)})
    assert torch.equal(sh.load_sae(tmp_path / "ones").W_dec, sae.W_dec)
    write_legacy(tmp_path / "bad", sae, tensors={"scaling_factor": scale})
    with pytest.raises(SAEFileError, match="scaling_factor"):
        sh.load_sae(tmp_path / "bad")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"activation_fn_str": "topk"}, "without k"),
        ({"activation_fn_str": "tanh-relu"}, "'tanh-relu' is not supported"),
        ({"normalize_activations": True}, "scaling factor"),
        ({"hook_point_head_index": 3}, "one attention head"),
        ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4, "signed": True}}, "signed"),
    ],
)
def test_legacy_configs_that_cannot_load_faithfully_are_refused(tmp_path, cfg, message):
    write_legacy(tmp_path, rich_sae("relu"), **cfg)
    with pytest.raises(ValueError, match=message):
        sh.load_sae(tmp_path)


# ---- damaged and inconsistent files -----------------------------------------------
def test_truncated_weights_raise_sae_file_error(tmp_path):
    rich_sae("relu").save(tmp_path)
    path = tmp_path / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SAEFileError, match="truncated or corrupt"):
        sh.load_sae(tmp_path)


def test_corrupt_config_raises_sae_file_error(tmp_path):
    rich_sae("relu").save(tmp_path)
    (tmp_path / "cfg.json").write_text('{"architecture": "standard", "d_in": 1')
    with pytest.raises(SAEFileError, match="not valid JSON"):
        sh.load_sae(tmp_path)


def test_unexpected_and_missing_tensors_are_named(tmp_path):
    sae = rich_sae("relu")
    sae.save(tmp_path)
    path = tmp_path / "sae_weights.safetensors"
    tensors = load_file(str(path))
    save_file({**tensors, "W_skip": torch.zeros(D_IN, D_IN)}, str(path))
    with pytest.raises(SAEFileError, match=r"unexpected tensors \['W_skip'\]"):
        sh.load_sae(tmp_path)
    del tensors["b_dec"]
    save_file(tensors, str(path))
    with pytest.raises(SAEFileError, match=r"missing tensors \['b_dec'\]"):
        sh.load_sae(tmp_path)


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path):
    rich_sae("relu").save(tmp_path)
    path = tmp_path / "sae_weights.safetensors"
    save_file({**load_file(str(path)), "b_enc": torch.zeros(D_SAE + 1)}, str(path))
    with pytest.raises(SAEFileError, match=r"b_enc has shape \(49,\), expected \(48,\)"):
        sh.load_sae(tmp_path)


def test_gated_file_with_a_nonzero_b_enc_is_refused(tmp_path):
    sae = rich_sae("gated")
    sae.save(tmp_path)
    path = tmp_path / "sae_weights.safetensors"
    save_file({**load_file(str(path)), "b_enc": torch.ones(D_SAE)}, str(path))
    with pytest.raises(SAEFileError, match="b_enc"):
        sh.load_sae(tmp_path)


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAE folder"):
        sh.load_sae(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SAEFileError, match="no known SAE format"):
        sh.load_sae(tmp_path)


def test_a_folder_of_saes_points_at_them(tmp_path):
    for layer in (0, 1):
        save_sae(rich_sae("topk"), tmp_path / f"layers.{layer}", format="sparsify")
    with pytest.raises(SAEFileError, match=r"holds 2 SAEs .*layers\.0"):
        sh.load_sae(tmp_path)
    assert sh.load_sae(tmp_path / "layers.0").cfg.k == K


# ---- gated and folded SAEs --------------------------------------------------------
def test_gated_latent_with_closed_gate_is_zero_even_when_magnitude_is_positive(tmp_path):
    sae = rich_sae("gated")
    with torch.no_grad():
        sae.b_gate[:2] = torch.tensor([-1e3, 1e3])  # latent 0 closed, latent 1 open
        sae.b_mag[:2] = 1e3  # both magnitude paths strongly positive
    x = inputs()
    pre_gate = (x - sae.b_dec) @ sae.W_enc + sae.b_gate
    magnitude = (x - sae.b_dec) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    assert torch.all(pre_gate[:, 0] < 0) and torch.all(magnitude[:, :2] > 0)
    for candidate in (sae, (sae.save(tmp_path), sh.load_sae(tmp_path))[1]):
        acts = candidate.encode(x)
        assert torch.all(acts[:, 0] == 0)
        assert_close(acts[:, 1], magnitude[:, 1])


def test_folding_jumprelu_decoder_norms_keeps_active_set_and_reconstruction():
    sae = rich_sae("jumprelu")
    with torch.no_grad():
        sae.W_dec.mul_(2.0 / sae.W_dec.norm(dim=-1, keepdim=True))  # every row has norm 2
    x = inputs(64)
    acts, recons = sae.encode(x), sae(x)
    fold_W_dec_norm(sae)
    assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    folded = sae.encode(x)
    assert torch.equal(folded > 0, acts > 0) and acts.count_nonzero() > 0
    assert_close(folded, 2.0 * acts)
    assert_close(sae(x), recons, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("architecture", "kw"),
    [("relu", {}), ("gated", {}), ("topk", {"rescale_acts_by_decoder_norm": True})],
)
def test_folding_keeps_every_architecture_equivalent(architecture, kw):
    sae = rich_sae(architecture, **kw)
    x = inputs(64)
    acts, recons = sae.encode(x), sae(x)
    norms = sae.W_dec.norm(dim=-1)
    fold_W_dec_norm(sae)
    assert torch.equal(sae.encode(x) > 0, acts > 0)
    expected = acts if kw else acts * norms
    assert_close(sae.encode(x), expected, rtol=1e-5, atol=1e-5)
    assert_close(sae(x), recons, rtol=1e-5, atol=1e-5)
    assert not sae.cfg.rescale_acts_by_decoder_norm


def test_folding_a_plain_topk_is_refused():
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm"):
        fold_W_dec_norm(rich_sae("topk"))
