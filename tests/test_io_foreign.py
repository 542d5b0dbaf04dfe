"""Files in other libraries' layouts, written here from their published descriptions,
load to SAEs that compute what those libraries compute.

* EleutherAI sparsify: ``cfg.json`` (SparseCoderConfig + ``d_in``) and
  ``sae.safetensors`` with ``encoder.weight [F, D]``, ``encoder.bias``, ``W_dec [F, D]``,
  ``b_dec``; forward ``topk(relu(encoder(x - b_dec)))``, ``acts @ W_dec + b_dec``.
* saprmarks/dictionary_learning: ``ae.pt`` (``torch.save(state_dict)``) and
  ``config.json`` ``{"trainer": {"dict_class", "layer", "submodule_name", ...}}``.

Each reference forward below is written from those descriptions, independently of
saehooks' SAE class.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import saehooks as sh
from saehooks.io import SAEFileError, detect_format
from saehooks.io.sparsify import hook_name_from_module

D, F, K = 12, 40, 4


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = rand(50, D, seed=99)


# ---- sparsify ---------------------------------------------------------------------
def write_sparsify(folder, dtype=torch.float32, **cfg_changes):
    """A sparsify hook-point folder; returns its tensors."""
    folder.mkdir(parents=True)
    tensors = {
        "encoder.weight": rand(F, D, seed=1),
        "encoder.bias": rand(F, seed=2),
        "W_dec": rand(F, D, seed=3),
        "b_dec": rand(D, seed=4),
    }
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    tensors.update(cfg_changes.pop("extra_tensors", {}))
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": F,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **cfg_changes,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def sparsify_forward(t, x):
    """sparsify's SparseCoder: relu pre-activations of x - b_dec, keep the top k."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, indices, values)
    return acts, acts @ t["W_dec"] + t["b_dec"]


def test_sparsify_folder_loads_as_the_same_topk_sae(tmp_path):
    tensors = write_sparsify(tmp_path / "layers.2")
    sae = sh.load_sae(tmp_path / "layers.2")
    assert detect_format(tmp_path / "layers.2") == "sparsify"
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.d_in, sae.cfg.d_sae) == ("topk", K, D, F)
    assert sae.cfg.hook_name == "blocks.2.hook_resid_post"
    assert sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata["sparsify_config"]["normalize_decoder"] is True
    acts, recons = sparsify_forward(tensors, X)
    assert torch.equal(sae.encode(X) > 0, acts > 0)
    assert torch.allclose(sae.encode(X), acts, atol=1e-5)
    assert torch.allclose(sae(X), recons, atol=1e-5)
    assert torch.all((sae.encode(X) != 0).sum(-1) == K)


def test_sparsify_bfloat16_folder_keeps_its_dtype_and_values(tmp_path):
    tensors = write_sparsify(tmp_path / "layers.2", torch.bfloat16)
    sae = sh.load_sae(tmp_path / "layers.2")
    assert sae.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16"
    assert torch.equal(sae.W_enc, tensors["encoder.weight"].T)
    assert torch.equal(sae.b_enc, tensors["encoder.bias"])
    assert torch.equal(sae.W_dec, tensors["W_dec"]) and torch.equal(sae.b_dec, tensors["b_dec"])


def test_sparsify_size_from_expansion_factor(tmp_path):
    write_sparsify(tmp_path / "h.0", num_latents=0, expansion_factor=F // D + 1)
    with pytest.raises(SAEFileError, match=r"W_enc has shape \(12, 40\), expected \(12, 48\)"):
        sh.load_sae(tmp_path / "h.0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activation": "groupmax"}, "'groupmax' is not supported"),
        ({"transcode": True}, "transcoder"),
        ({"skip_connection": True}, "skip_connection"),
    ],
)
def test_sparsify_coders_that_are_not_plain_saes_are_refused(tmp_path, change, message):
    write_sparsify(tmp_path / "layers.0", **change)
    with pytest.raises(ValueError, match=message):
        sh.load_sae(tmp_path / "layers.0")


def test_sparsify_extra_tensor_is_named(tmp_path):
    write_sparsify(tmp_path / "layers.0", extra_tensors={"W_skip": torch.zeros(D, D)})
    with pytest.raises(SAEFileError, match=r"unexpected tensors \['W_skip'\]"):
        sh.load_sae(tmp_path / "layers.0")


@pytest.mark.parametrize(
    ("module", "hook"),
    [
        ("layers.3", "blocks.3.hook_resid_post"),
        ("model.layers.3", "blocks.3.hook_resid_post"),
        ("transformer.h.11", "blocks.11.hook_resid_post"),
        ("gpt_neox.layers.5", "blocks.5.hook_resid_post"),
        ("layers.3.mlp", "blocks.3.hook_mlp_out"),
        ("h.0.attn", "blocks.0.hook_attn_out"),
        ("embed_tokens", "hook_embed"),
        ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_pre"),
        ("lm_head", ""),
    ],
)
def test_sparsify_hook_points_map_to_transformer_lens_names(module, hook):
    assert hook_name_from_module(module) == hook


# ---- dictionary_learning -------------------------------------------------------------
def dl_state(dict_class: str) -> dict[str, torch.Tensor]:
    """A state dict of ``dict_class`` with random values (nn.Linear weights are [out, in])."""
    enc_w, enc_b, dec_w = rand(F, D, seed=11), rand(F, seed=12), rand(D, F, seed=13)
    vec_d, vec_f = rand(D, seed=14), rand(F, seed=15)
    return {
        "AutoEncoder": {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "bias": vec_d,
        },
        "AutoEncoderNew": {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "decoder.bias": vec_d,
        },
        "GatedAutoEncoder": {
            "encoder.weight": enc_w,
            "decoder.weight": dec_w,
            "decoder_bias": vec_d,
            "r_mag": 0.3 * vec_f,
            "gate_bias": enc_b,
            "mag_bias": rand(F, seed=16),
        },
        "JumpReluAutoEncoder": {
            "W_enc": enc_w.T.contiguous(),
            "b_enc": enc_b,
            "W_dec": dec_w.T.contiguous(),
            "b_dec": vec_d,
            "threshold": vec_f.abs(),
        },
        "AutoEncoderTopK": {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "b_dec": vec_d,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(-1.0),
        },
        "BatchTopKSAE": {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "b_dec": vec_d,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.7),
        },
    }[dict_class]


def dl_forward(dict_class: str, s: dict[str, torch.Tensor], x: torch.Tensor):
    """dictionary_learning's encode / decode for each class, from its description."""
    if dict_class == "AutoEncoder":
        f = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["bias"]
    if dict_class == "AutoEncoderNew":
        f = torch.relu(x @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["decoder.bias"]
    if dict_class == "GatedAutoEncoder":
        x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
        gate = (x_enc + s["gate_bias"] > 0).float()
        f = gate * torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
        return f, f @ s["decoder.weight"].T + s["decoder_bias"]
    if dict_class == "JumpReluAutoEncoder":  # apply_b_dec_to_input is False by default
        pre = x @ s["W_enc"] + s["b_enc"]
        f = torch.relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    post_relu = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    if dict_class == "AutoEncoderTopK":
        values, indices = post_relu.topk(K, dim=-1)
        f = torch.zeros_like(post_relu).scatter_(-1, indices, values)
    else:  # BatchTopKSAE at inference: one global threshold
        f = post_relu * (post_relu > s["threshold"])
    return f, f @ s["decoder.weight"].T + s["b_dec"]


def write_dl(folder, state, dict_class=None, **trainer):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    if dict_class is not None:
        config = {
            "trainer": {
                "dict_class": dict_class,
                "activation_dim": D,
                "dict_size": F,
                "lm_name": "EleutherAI/pythia-70m-deduped",
                **trainer,
            },
            "buffer": {"d_submodule": D, "ctx_len": 128},
        }
        (folder / "config.json").write_text(json.dumps(config))


EXPECTED_ARCH = {
    "AutoEncoder": "relu",
    "AutoEncoderNew": "relu",
    "GatedAutoEncoder": "gated",
    "JumpReluAutoEncoder": "jumprelu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "jumprelu",
}


@pytest.mark.parametrize("dict_class", list(EXPECTED_ARCH))
def test_dictionary_learning_ae_loads_as_the_same_sae(tmp_path, dict_class):
    state = dl_state(dict_class)
    write_dl(tmp_path, state, dict_class, layer=3, submodule_name="resid_post_layer_3")
    sae = sh.load_sae(tmp_path)
    assert detect_format(tmp_path) == "dictionary_learning"
    assert sae.cfg.architecture == EXPECTED_ARCH[dict_class]
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D, F)
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.metadata["model_name"] == "EleutherAI/pythia-70m-deduped"
    assert sae.cfg.metadata["dictionary_class"] == dict_class
    acts, recons = dl_forward(dict_class, state, X)
    assert acts.count_nonzero() > 0
    assert torch.equal(sae.encode(X) > 0, acts > 0)
    assert torch.allclose(sae.encode(X), acts, atol=1e-5)
    assert torch.allclose(sae(X), recons, atol=1e-4)


def test_dictionary_learning_class_is_inferred_from_tensor_names(tmp_path):
    write_dl(tmp_path, dl_state("GatedAutoEncoder"))  # no config.json
    sae = sh.load_sae(tmp_path)
    assert sae.cfg.architecture == "gated" and sae.cfg.hook_name == ""


def test_dictionary_learning_ambiguous_layout_needs_the_config(tmp_path):
    write_dl(tmp_path, dl_state("AutoEncoderTopK"))
    with pytest.raises(SAEFileError, match="trainer.dict_class"):
        sh.load_sae(tmp_path)


def test_dictionary_learning_submodule_picks_the_hook(tmp_path):
    write_dl(
        tmp_path, dl_state("AutoEncoder"), "AutoEncoder", layer=1, submodule_name="mlp_out_layer_1"
    )
    assert sh.load_sae(tmp_path).cfg.hook_name == "blocks.1.hook_mlp_out"


def test_dictionary_learning_unexpected_tensor_is_named(tmp_path):
    write_dl(tmp_path, {**dl_state("AutoEncoder"), "W_extra": torch.zeros(3)}, "AutoEncoder")
    with pytest.raises(SAEFileError, match=r"unexpected \['W_extra'\]"):
        sh.load_sae(tmp_path)


def test_dictionary_learning_uncalibrated_batch_topk_is_refused(tmp_path):
    state = {**dl_state("BatchTopKSAE"), "threshold": torch.tensor(-1.0)}
    write_dl(tmp_path, state, "BatchTopKSAE")
    with pytest.raises(SAEFileError, match="never calibrated"):
        sh.load_sae(tmp_path)


class Pickled(nn.Module):
    """A module pickled whole, as ``torch.save(ae)`` would store it."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(D, F)


def test_dictionary_learning_pickled_objects_are_refused_not_run(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    torch.save(Pickled(), tmp_path / "ae.pt")
    with pytest.raises(SAEFileError, match=r"refusing to load.*weights_only=True"):
        sh.load_sae(tmp_path)


def test_dictionary_learning_truncated_file_is_reported(tmp_path):
    write_dl(tmp_path, dl_state("AutoEncoder"), "AutoEncoder")
    path = tmp_path / "ae.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SAEFileError, match="truncated or corrupt"):
        sh.load_sae(tmp_path)
