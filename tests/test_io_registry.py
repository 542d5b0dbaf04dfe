"""SAELens pretrained releases: registry look-up, each file layout, offline hub cache.

Every test runs offline against a hub cache it writes itself (:mod:`hub_fixtures`),
in the layout ``huggingface_hub`` reads, with tiny SAEs. Expected activations are
computed here by plain formulas (SAELens' rule for each layout), never by the SAE
under test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hub_fixtures import HubCache, offline_hub_cache, use_registry

import saehooks as sh
from saehooks.errors import InputError, SAEFileError, SAENotFoundError
from saehooks.io import registry, releases

GEN = torch.Generator().manual_seed(0)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> HubCache:
    return offline_hub_cache(tmp_path, monkeypatch)


def randn(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN).to(dtype)


def relu_ref(x, W_enc, b_enc, b_dec, centre: bool) -> torch.Tensor:
    return torch.clamp(((x - b_dec) if centre else x) @ W_enc + b_enc, min=0)


def jumprelu_ref(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(pre)
    for i in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            if pre[i, j] > threshold[j] and pre[i, j] > 0:
                out[i, j] = pre[i, j]
    return out


def topk_ref(pre: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(pre)
    for i, row in enumerate(pre.tolist()):
        for j in sorted(range(len(row)), key=lambda c: -row[c])[:k]:
            out[i, j] = max(row[j], 0.0)
    return out


# ---- SAELens v6 (cfg.json + sae_weights.safetensors), a real release name --------------------
def _v6_files(cache: HubCache) -> dict[str, torch.Tensor]:
    repo, folder = "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre"
    tensors = {
        "W_enc": randn(4, 6, dtype=torch.bfloat16),
        "b_enc": randn(6, dtype=torch.bfloat16),
        "W_dec": randn(6, 4, dtype=torch.bfloat16),
        "b_dec": randn(4, dtype=torch.bfloat16),
    }
    cache.add(
        repo,
        f"{folder}/cfg.json",
        {
            "architecture": "standard",
            "d_in": 4,
            "d_sae": 6,
            "dtype": "bfloat16",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": "6.5.0",
                "model_name": "gpt2-small",
                "hook_name": "blocks.8.hook_resid_pre",
                "context_size": 128,
            },
        },
    )
    cache.add_safetensors(repo, f"{folder}/sae_weights.safetensors", tensors)
    return tensors


def test_saelens_v6_release_loads_by_name_and_string_form(hub_cache):
    stored = _v6_files(hub_cache)
    by_name = sh.load_sae(release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    by_string = sh.load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")  # the CLI's --sae
    x = randn(5, 4)
    expected = relu_ref(x, *(stored[k].float() for k in ("W_enc", "b_enc", "b_dec")), True)
    for sae in (by_name, by_string):
        cfg = sae.cfg
        assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.hook_name) == (
            "relu",
            4,
            6,
            "blocks.8.hook_resid_pre",
        )
        assert sae.W_enc.dtype == torch.float32  # SAELens' from_pretrained default
        for name, value in stored.items():
            assert torch.equal(getattr(sae, name), value.float()), name
        assert torch.allclose(sae.encode(x), expected, atol=1e-6)
        assert torch.allclose(
            sae.decode(expected),
            expected @ stored["W_dec"].float() + stored["b_dec"].float(),
            atol=1e-5,
        )
        assert cfg.metadata["release"] == "gpt2-small-res-jb"
        assert cfg.metadata["sae_id"] == "blocks.8.hook_resid_pre"
        assert cfg.metadata["neuronpedia_id"] == "gpt2-small/8-res-jb"
        assert cfg.metadata["model_name"] == "gpt2-small"
        assert cfg.metadata["repo_id"] == "jbloom/GPT2-Small-SAEs-Reformatted"
        # the release's config_overrides: model_from_pretrained_kwargs -> model_processing
        assert cfg.metadata["model_processing"] == {"center_writing_weights": True}
        assert sae.feature_density is None
    assert (
        sh.load_sae(
            release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre", dtype=torch.bfloat16
        ).W_enc.dtype
        == torch.bfloat16
    )


# ---- SAELens pre-v6 with sparsity.safetensors and a norm_scaling_factor ---------------------
def test_saelens_legacy_release_folds_norm_scaling_factor_and_reads_sparsity(hub_cache):
    entry = registry.lookup("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out")
    s = entry.norm_scaling_factor
    assert s == pytest.approx(1.049317316132615)
    repo, folder = entry.repo_id, entry.path
    W_enc, b_enc, W_dec, b_dec = randn(5, 7), randn(7), randn(7, 5), randn(5)
    log10 = -torch.arange(1, 8, dtype=torch.float32) / 2
    hub_cache.add(
        repo,
        f"{folder}/cfg.json",
        {  # flat pre-v6 config, as SAELens 2-3 wrote
            "model_name": "gpt2-small",
            "hook_point": "blocks.0.hook_mlp_out",
            "hook_point_layer": 0,
            "hook_point_head_index": None,
            "d_in": 5,
            "d_sae": 7,
            "dtype": "float32",
            "activation_fn_str": "relu",
            "apply_b_dec_to_input": True,
            "normalize_activations": True,
            "finetuning_scaling_factor": False,
            "sae_lens_version": "2.1.3",
            "context_size": 128,
            "lr": 4e-4,
        },
    )
    hub_cache.add_safetensors(
        repo,
        f"{folder}/sae_weights.safetensors",
        {
            "W_enc": W_enc,
            "b_enc": b_enc,
            "W_dec": W_dec,
            "b_dec": b_dec,
            "scaling_factor": torch.ones(7),
        },
    )
    hub_cache.add_safetensors(repo, f"{folder}/sparsity.safetensors", {"sparsity": log10})
    sae = sh.load_sae("gpt2-small-mlp-tm/blocks.0.hook_mlp_out")
    # SAELens' fold_activation_norm_scaling_factor: W_enc * s, W_dec / s, b_dec / s
    assert torch.allclose(sae.W_enc, W_enc * s) and torch.allclose(sae.b_enc, b_enc)
    assert torch.allclose(sae.W_dec, W_dec / s) and torch.allclose(sae.b_dec, b_dec / s)
    x = randn(6, 5).double()
    scaled = s * x  # the SAE was trained on inputs scaled by s
    acts = relu_ref(scaled, W_enc.double(), b_enc.double(), b_dec.double(), True)
    assert torch.allclose(sae.encode(x.float()).double(), acts, atol=1e-5)
    out = (acts @ W_dec.double() + b_dec.double()) / s
    assert torch.allclose(sae(x.float()).double(), out, atol=1e-5)
    assert torch.allclose(sae.feature_density, 10.0**log10)
    meta = sae.cfg.metadata
    assert meta["norm_scaling_factor"] == s
    assert meta["normalize_activations"] == "expected_average_only_in"
    assert meta["dataset_path"] == "Skylion007/openwebtext"  # the release's override
    assert meta["model_processing"] == {"center_writing_weights": True}
    assert sae.cfg.hook_name == "blocks.0.hook_mlp_out"
    sh.save_sae(sae, hub_cache.root.parent / "saved")  # the metadata survives a save
    again = sh.load_sae(hub_cache.root.parent / "saved")
    assert again.cfg.metadata == meta and torch.equal(again.W_enc, sae.W_enc)


def test_expected_average_without_a_factor_warns_and_runs_unscaled(
    hub_cache, monkeypatch, tmp_path
):
    use_registry(
        monkeypatch,
        tmp_path / "reg.json",
        {
            "tiny": {
                "repo_id": "me/tiny",
                "model": "tiny-model",
                "conversion": "sae_lens",
                "saes": [["blocks.0.hook_resid_post", "sae"]],
            }
        },
    )
    W_enc, b_enc, W_dec, b_dec = randn(3, 4), randn(4), randn(4, 3), randn(3)
    hub_cache.add(
        "me/tiny",
        "sae/cfg.json",
        {
            "architecture": "standard",
            "d_in": 3,
            "d_sae": 4,
            "apply_b_dec_to_input": False,
            "normalize_activations": "expected_average_only_in",
            "metadata": {"sae_lens_version": "6.1.0", "hook_name": "blocks.0.hook_resid_post"},
        },
    )
    hub_cache.add_safetensors(
        "me/tiny",
        "sae/sae_weights.safetensors",
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
    )
    with pytest.warns(UserWarning, match="no norm_scaling_factor"):
        sae = sh.load_sae("tiny/blocks.0.hook_resid_post")
    x = randn(2, 3)
    assert torch.allclose(sae.encode(x), relu_ref(x, W_enc, b_enc, b_dec, False), atol=1e-6)
    assert sae.cfg.metadata["model_name"] == "tiny-model"  # from the registry
    assert sae.cfg.metadata["neuronpedia_id"] is None


# ---- Gemma Scope (params.npz) ----------------------------------------------------------------
GEMMA_W_ENC = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
GEMMA_W_DEC = [[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]]


def _gemma_params() -> dict[str, list]:
    return {
        "W_enc": GEMMA_W_ENC,
        "W_dec": GEMMA_W_DEC,
        "b_enc": [0.0, 0.5, 0.0],
        "b_dec": [10.0, 10.0],
        "threshold": [1.0, 1.0, 0.25],
    }


def test_gemma_scope_params_npz_jumprelu_by_hand(hub_cache):
    entry = registry.lookup("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical")
    assert entry.path == "layer_0/width_16k/average_l0_105"  # canonical -> a real folder
    hub_cache.add_npz(entry.repo_id, f"{entry.path}/params.npz", _gemma_params())
    sae = sh.load_sae(release=entry.release, sae_id=entry.sae_id)
    cfg = sae.cfg
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.hook_name, cfg.apply_b_dec_to_input) == (
        "jumprelu",
        2,
        3,
        "blocks.0.hook_resid_post",
        False,
    )
    assert torch.equal(sae.threshold, torch.tensor([1.0, 1.0, 0.25]))
    assert torch.equal(sae.W_enc, torch.tensor(GEMMA_W_ENC))
    x = torch.tensor([[1.0, 0.5], [2.0, -1.0]])
    # by hand: pre = x @ W_enc + b_enc (b_dec not subtracted) = [[1, 1, 1.5], [2, -0.5, 5]];
    # kept where pre > threshold: 1 > 1 is false
    acts = torch.tensor([[0.0, 0.0, 1.5], [2.0, 0.0, 5.0]])
    assert torch.equal(sae.encode(x), acts)
    # decode: acts @ W_dec + b_dec = [[13, 10], [22, 12]]
    assert torch.equal(sae(x), torch.tensor([[13.0, 10.0], [22.0, 12.0]]))
    assert cfg.metadata["neuronpedia_id"] == "gemma-2-2b/0-gemmascope-res-16k"
    assert cfg.metadata["model_name"] == "gemma-2-2b"
    assert cfg.metadata["repo_path"] == "layer_0/width_16k/average_l0_105"


def test_gemma_scope_embedding_sae_is_rescaled_by_sqrt_d_in(hub_cache):
    entry = registry.lookup("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6")
    W_enc, W_dec = randn(4, 3), randn(3, 4)
    hub_cache.add_npz(
        entry.repo_id,
        f"{entry.path}/params.npz",
        {
            "W_enc": W_enc.numpy(),
            "W_dec": W_dec.numpy(),
            "b_enc": [0.0] * 3,
            "b_dec": [0.0] * 4,
            "threshold": [0.1] * 3,
        },
    )
    sae = sh.load_sae(f"{entry.release}/{entry.sae_id}")
    assert sae.cfg.hook_name == "hook_embed"
    assert torch.equal(sae.W_enc, W_enc / 2) and torch.equal(sae.W_dec, W_dec * 2)  # sqrt(4)


def test_gemma_scope_2_params_safetensors(hub_cache):
    entry = registry.lookup("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big")
    hub_cache.add(
        entry.repo_id,
        f"{entry.path}/config.json",
        {
            "architecture": "jump_relu",
            "model_name": "gemma-v3-270m-pt",
            "hf_hook_point_in": "model.layers.12.output",
        },
    )
    params = {k: torch.tensor(v) for k, v in _gemma_params().items()}
    hub_cache.add_safetensors(
        entry.repo_id,
        f"{entry.path}/params.safetensors",
        {
            "w_enc": params["W_enc"],
            "w_dec": params["W_dec"],
            "b_enc": params["b_enc"],
            "b_dec": params["b_dec"],
            "threshold": params["threshold"],
        },
    )
    sae = sh.load_sae(release=entry.release, sae_id=entry.sae_id)
    assert (sae.cfg.architecture, sae.cfg.hook_name, sae.cfg.apply_b_dec_to_input) == (
        "jumprelu",
        "blocks.12.hook_resid_post",
        False,
    )
    x = torch.tensor([[1.0, 0.5], [2.0, -1.0]])
    assert torch.equal(sae.encode(x), torch.tensor([[0.0, 0.0, 1.5], [2.0, 0.0, 5.0]]))
    assert sae.cfg.metadata["model_name"] == "google/gemma-3-270m"  # SAELens' renaming
    assert sae.cfg.metadata["hf_hook_name"] == "model.layers.12.output"


# ---- sparsify (layers.N/ folders) ------------------------------------------------------------
def test_sparsify_layer_folder_release(hub_cache, monkeypatch, tmp_path):
    use_registry(
        monkeypatch,
        tmp_path / "reg.json",
        {
            "pythia-sparsify": {
                "repo_id": "EleutherAI/sae-tiny-32x",
                "model": "EleutherAI/pythia-70m",
                "conversion": "sparsify",
                "saes": [["layers.1"]],
            }
        },
    )
    repo = "EleutherAI/sae-tiny-32x"
    enc, enc_b, W_dec, b_dec = randn(12, 6), randn(12), randn(12, 6), randn(6)
    hub_cache.add(repo, "config.json", {"model": "EleutherAI/pythia-70m", "ctx_len": 2048})
    hub_cache.add(
        repo,
        "layers.1/cfg.json",
        {
            "activation": "topk",
            "expansion_factor": 2,
            "normalize_decoder": True,
            "num_latents": 12,
            "k": 3,
            "multi_topk": False,
            "skip_connection": False,
            "transcode": False,
            "d_in": 6,
        },
    )
    hub_cache.add_safetensors(
        repo,
        "layers.1/sae.safetensors",
        {"encoder.weight": enc, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
    )
    sae = sh.load_sae("pythia-sparsify/layers.1")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == (
        "topk",
        3,
        "blocks.1.hook_resid_post",
    )
    assert torch.equal(sae.W_enc, enc.T) and torch.equal(sae.W_dec, W_dec)
    x = randn(4, 6)
    # sparsify's encoder: (x - b_dec) @ encoder.weight.T + bias, ReLU, keep the top k
    acts = topk_ref((x - b_dec) @ enc.T + enc_b, 3)
    assert torch.allclose(sae.encode(x), acts, atol=1e-6)
    assert torch.allclose(sae(x), acts @ W_dec + b_dec, atol=1e-5)
    assert sae.cfg.metadata["model_name"] == "EleutherAI/pythia-70m"


# ---- the other layouts of the registry ---------------------------------------------------------
def test_dictionary_learning_release(hub_cache):
    entry = registry.lookup(
        "sae_bench_pythia70m_sweep_topk_ctx128_0730", "blocks.3.hook_resid_post__trainer_0"
    )
    enc, enc_b, dec, b_dec = randn(10, 5), randn(10), randn(5, 10), randn(5)
    hub_cache.add_torch(
        entry.repo_id,
        f"{entry.path}/ae.pt",
        {
            "encoder.weight": enc,
            "encoder.bias": enc_b,
            "decoder.weight": dec,
            "b_dec": b_dec,
            "k": torch.tensor(4),
            "threshold": torch.tensor(-1.0),
        },
    )
    hub_cache.add(
        entry.repo_id,
        f"{entry.path}/config.json",
        {
            "trainer": {
                "dict_class": "AutoEncoderTopK",
                "activation_dim": 5,
                "dict_size": 10,
                "k": 4,
                "layer": 3,
                "lm_name": "EleutherAI/pythia-70m-deduped",
            },
            "buffer": {"ctx_len": 128},
        },
    )
    sae = sh.load_sae(release=entry.release, sae_id=entry.sae_id)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == (
        "topk",
        4,
        "blocks.3.hook_resid_post",
    )
    x = randn(3, 5)
    assert torch.allclose(sae.encode(x), topk_ref((x - b_dec) @ enc.T + enc_b, 4), atol=1e-6)
    assert sae.cfg.metadata["neuronpedia_id"] == entry.neuronpedia_id


def test_llama_scope_release_as_saelens_converts_it(hub_cache):
    entry = registry.lookup("llama_scope_lxr_8x", "l0r_8x")
    s = entry.norm_scaling_factor
    d_in, avg_norm, t = 4, 0.5, 0.3
    enc, enc_b, dec, dec_b = randn(8, d_in), randn(8), randn(d_in, 8), randn(d_in)
    hub_cache.add(
        entry.repo_id,
        f"{entry.path}/hyperparams.json",
        {
            "d_model": d_in,
            "d_sae": 8,
            "jump_relu_threshold": t,
            "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
            "hook_point_in": "blocks.0.hook_resid_post",
            "hook_point_out": "blocks.0.hook_resid_post",
        },
    )
    hub_cache.add_safetensors(
        entry.repo_id,
        f"{entry.path}/checkpoints/final.safetensors",
        {
            "encoder.weight": enc,
            "encoder.bias": enc_b,
            "decoder.weight": dec,
            "decoder.bias": dec_b,
        },
    )
    sae = sh.load_sae(release=entry.release, sae_id=entry.sae_id)
    # SAELens: threshold t * sqrt(d_in) / avg_norm; W_enc = encoder.weight.T folded with s
    threshold = torch.full((8,), t * math.sqrt(d_in) / avg_norm)
    assert torch.allclose(sae.threshold, threshold)
    assert torch.allclose(sae.W_enc, enc.T * s) and torch.allclose(sae.W_dec, dec.T / s)
    x = randn(5, d_in)
    pre = x @ (enc.T * s) + enc_b
    assert torch.allclose(sae.encode(x), jumprelu_ref(pre, threshold), atol=1e-5)
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    assert not sae.cfg.apply_b_dec_to_input


def test_qwen_scope_and_goodfire_pickled_state_dicts(hub_cache):
    qwen = registry.lookup("qwen-scope-3-1.7b-base-w32k-l50", "layer0")
    W_enc, W_dec, b_enc, b_dec = randn(64, 4), randn(4, 64), randn(64), randn(4)
    hub_cache.add_torch(
        qwen.repo_id, qwen.path, {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    )
    sae = sh.load_sae(release=qwen.release, sae_id=qwen.sae_id)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == (
        "topk",
        50,
        "blocks.0.hook_resid_post",
    )  # k from the repository name (L0_50)
    x = randn(3, 4)
    assert torch.allclose(sae.encode(x), topk_ref(x @ W_enc.T + b_enc, 50), atol=1e-6)

    good = registry.lookup("goodfire-llama-3.1-8b-instruct", "layer_19")
    enc, dec, enc_b, dec_b = randn(6, 4), randn(4, 6), randn(6), randn(4)
    hub_cache.add_torch(
        good.repo_id,
        good.path,
        {
            "encoder_linear.weight": enc,
            "decoder_linear.weight": dec,
            "encoder_linear.bias": enc_b,
            "decoder_linear.bias": dec_b,
        },
    )
    sae = sh.load_sae(f"{good.release}/{good.sae_id}")
    assert (sae.cfg.architecture, sae.cfg.hook_name) == ("relu", "blocks.19.hook_resid_post")
    assert torch.allclose(sae.encode(x), relu_ref(x, enc.T, enc_b, dec_b, False), atol=1e-6)
    assert torch.allclose(
        sae(x), relu_ref(x, enc.T, enc_b, dec_b, False) @ dec.T + dec_b, atol=1e-5
    )


# ---- errors -------------------------------------------------------------------------------------
def test_offline_and_not_cached_names_repo_and_file(hub_cache):
    with pytest.raises(SAENotFoundError) as info:
        sh.load_sae(release="gpt2-small-res-jb", sae_id="blocks.3.hook_resid_pre")
    message = str(info.value)
    assert "jbloom/GPT2-Small-SAEs-Reformatted" in message
    assert "'blocks.3.hook_resid_pre/cfg.json'" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert (
        "hf download jbloom/GPT2-Small-SAEs-Reformatted blocks.3.hook_resid_pre/cfg.json" in message
    )
    assert isinstance(info.value, FileNotFoundError)
    # the weights are needed too: with only cfg.json cached, the error names the weights
    hub_cache.add("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.3.hook_resid_pre/cfg.json", {})
    with pytest.raises(SAENotFoundError, match="sae_weights.safetensors"):
        sh.load_sae("gpt2-small-res-jb/blocks.3.hook_resid_pre")


def test_unknown_names_suggest_close_ones(hub_cache):
    with pytest.raises(SAENotFoundError, match="did you mean 'gpt2-small-res-jb'"):
        sh.load_sae(release="gpt2-small-res-jbb", sae_id="blocks.8.hook_resid_pre")
    with pytest.raises(
        SAENotFoundError, match="has no SAE 'blocks.8.hook_resid_pr'.*'blocks.8.hook_resid_pre'"
    ):
        sh.load_sae(release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pr")
    with pytest.raises(SAENotFoundError, match="'gpt2-small-res-jb/...'"):
        sh.load_sae("gpt2-small-res-jbb/blocks.8.hook_resid_pre")


def test_bad_argument_mixes_are_input_errors():
    with pytest.raises(InputError, match="not both"):
        sh.load_sae("some/folder", release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    with pytest.raises(InputError, match="sae_id is missing"):
        sh.load_sae(release="gpt2-small-res-jb")
    with pytest.raises(InputError, match="release is missing"):
        sh.load_sae(sae_id="blocks.8.hook_resid_pre")
    with pytest.raises(InputError, match="pass path_or_name"):
        sh.load_sae()
    with pytest.raises(TypeError, match="release must be a string"):
        sh.load_sae(release=3, sae_id="x")


@pytest.mark.parametrize(
    "release, sae_id, reason",
    [
        ("gemma-scope-2b-pt-att-canonical", "layer_0/width_16k/canonical", "hook_z"),
        (
            "gemma-scope-2-270m-pt-transcoders",
            "transcoder/layer_15_width_262k_l0_big_affine",
            "transcoder",
        ),
        ("mistral-7b-res-wg", "blocks.8.hook_resid_pre", "constant_norm_rescale"),
    ],
)
def test_kinds_saehooks_does_not_run_are_refused_before_downloading(
    hub_cache, release, sae_id, reason
):
    with pytest.raises(SAEFileError, match=reason):  # nothing cached: no download was tried
        sh.load_sae(release=release, sae_id=sae_id)


def test_a_local_folder_wins_over_a_release_of_the_same_name(hub_cache, tmp_path, monkeypatch):
    folder = tmp_path / "gpt2-small-res-jb" / "blocks.8.hook_resid_pre"
    local = sh.SAE(sh.SAEConfig(d_in=3, d_sae=5, hook_name="blocks.0.hook_resid_post"))
    sh.save_sae(local, folder)
    monkeypatch.chdir(tmp_path)
    sae = sh.load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert sae.cfg.d_in == 3 and "release" not in sae.cfg.metadata


def test_split_name_allows_slashes_in_ids():
    assert registry.split_name("gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical") == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_0/width_16k/canonical",
    )
    assert registry.split_name("no-such-release/x") is None
    assert registry.split_name("gpt2-small-res-jb/") is None
    assert registry.split_name("gpt2-small-res-jb") is None


# ---- listing and the shipped data file -------------------------------------------------------
def test_list_pretrained_saes_includes_every_registry_sae():
    data = json.loads(registry.DATA_FILE.read_text())
    n_release_saes = sum(len(r["saes"]) for r in data["releases"].values())
    shipped = sh.list_pretrained_saes()
    table = sh.list_pretrained_saes(include_releases=True)
    assert len(table) == len(shipped) + n_release_saes
    assert (table["source"] == "shipped").sum() == len(shipped)
    row = table.loc["gpt2-small-res-jb/blocks.8.hook_resid_pre"]
    assert (row["model"], row["hook_name"], row["source"], row["neuronpedia_id"]) == (
        "gpt2-small",
        "blocks.8.hook_resid_pre",
        "saelens_release",
        "gpt2-small/8-res-jb",
    )
    gemma = table.loc["gemma-scope-2b-pt-res-canonical/layer_20/width_65k/canonical"]
    assert (gemma["hook_name"], gemma["d_sae"], gemma["architecture"], gemma["loadable"]) == (
        "blocks.20.hook_resid_post",
        65536,
        "jumprelu",
        True,
    )
    att = table.loc["gemma-scope-2b-pt-att-canonical/layer_0/width_16k/canonical"]
    assert att["hook_name"] == "blocks.0.attn.hook_z" and not att["loadable"]
    qwen = table.loc["qwen-scope-3-8b-base-w64k-l50/layer3"]
    assert (qwen["hook_name"], qwen["d_sae"], qwen["architecture"]) == (
        "blocks.3.hook_resid_post",
        65536,
        "topk",
    )
    with pytest.raises(TypeError, match="include_releases"):
        sh.list_pretrained_saes(include_releases="yes")


def test_shipped_registry_matches_saelens_yaml():
    """The data file holds exactly the YAML's repo, path, Neuronpedia id and scale of every
    SAE (checked against SAELens' own file when the TL3 environment has it)."""
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    found = sorted(root.glob(".venv-tl3/lib/python*/site-packages/sae_lens/pretrained_saes.yaml"))
    if not found:
        pytest.skip("sae-lens is not installed in .venv-tl3")
    data = json.loads(registry.DATA_FILE.read_text())
    version = found[0].parent.parent.glob("sae_lens-*.dist-info")
    if f"sae_lens-{data['sae_lens_version']}.dist-info" not in [p.name for p in version]:
        pytest.skip("the installed sae-lens is another version than the shipped registry's")
    with open(found[0]) as f:
        source = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert set(source) == set(registry.releases())
    for name, value in source.items():
        entries = {e.sae_id: e for e in registry.entries(name)}
        assert len(entries) == len(value["saes"])
        for sae in value["saes"]:
            e = entries[str(sae["id"])]
            assert (e.repo_id, e.model, e.path, e.neuronpedia_id, e.norm_scaling_factor) == (
                value["repo_id"],
                value["model"],
                str(sae["path"]),
                sae.get("neuronpedia"),
                sae.get("norm_scaling_factor"),
            )
            assert e.conversion == (value.get("conversion_func") or "sae_lens")
            assert e.overrides == (value.get("config_overrides") or {})
    assert (registry.DATA_FILE.parent / "saelens_registry.LICENSE").read_text().count("MIT") >= 1


def test_describe_reads_hooks_from_names():
    info = releases.describe(
        registry.lookup("gemma-scope-9b-pt-mlp-canonical", "layer_5/width_16k/canonical")
    )
    assert info == releases.ReleaseInfo("blocks.5.hook_mlp_out", 16384, "jumprelu", True)
    info = releases.describe(
        registry.lookup("gpt2-small-res-jb-feature-splitting", "blocks.8.hook_resid_pre_768")
    )
    assert info.hook_name == "blocks.8.hook_resid_pre"


# ---- against SAELens itself (where the TL3 environment has it) --------------------------------
SAELENS_SCRIPT = r"""
import json, os, sys, warnings
import torch
warnings.simplefilter("ignore")
import sae_lens.loading.pretrained_sae_loaders as L
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from sae_lens import SAE

def shapes(repo_id, filename):  # SAELens asks the Hub for Gemma Scope 2 shapes; read the file
    with safe_open(hf_hub_download(repo_id, filename), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

def shrink(fn, d_in, d_sae):  # SAELens takes these sizes from model names; the files are tiny
    def wrapped(*args, **kwargs):
        return {**fn(*args, **kwargs), "d_in": d_in, "d_sae": d_sae}
    return wrapped

L.get_safetensors_tensor_shapes = shapes
for name, (d_in, d_sae) in json.loads(sys.argv[2]).items():
    setattr(L, name, shrink(getattr(L, name), d_in, d_sae))
out = {}
for name, x in torch.load(sys.argv[1]).items():
    release, sae_id = name.split("|")
    sae = SAE.from_pretrained(release, sae_id)
    with torch.no_grad():
        acts = sae.encode(x)
        out[name] = {"hook": sae.cfg.metadata.hook_name, "acts": acts,
                     "recons": sae.decode(acts)}
torch.save(out, sys.argv[3])
"""


def _crosscheck_cache(cache: HubCache) -> dict[str, int]:
    """One tiny SAE per conversion at real release paths; -> ``release|sae_id``: d_in."""
    import numpy as np

    def add_gemma_2(entry):
        cache.add_npz(
            entry.repo_id,
            f"{entry.path}/params.npz",
            {
                "W_enc": randn(4, 6).numpy(),
                "W_dec": randn(6, 4).numpy(),
                "b_enc": randn(6).numpy(),
                "b_dec": randn(4).numpy(),
                "threshold": np.abs(randn(6).numpy()),
            },
        )

    cases = {}
    _v6_files(cache)
    cases["gpt2-small-res-jb|blocks.8.hook_resid_pre"] = 4
    e = registry.lookup("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out")
    cache.add(
        e.repo_id,
        f"{e.path}/cfg.json",
        {
            "model_name": "gpt2-small",
            "hook_point": "blocks.0.hook_mlp_out",
            "d_in": 5,
            "d_sae": 7,
            "activation_fn_str": "relu",
            "normalize_activations": True,
            "sae_lens_version": "2.1.3",
            "dtype": "float32",
        },
    )
    cache.add_safetensors(
        e.repo_id,
        f"{e.path}/sae_weights.safetensors",
        {"W_enc": randn(5, 7), "b_enc": randn(7), "W_dec": randn(7, 5), "b_dec": randn(5)},
    )
    cases[f"{e.release}|{e.sae_id}"] = 5
    for release, sae_id in (
        ("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical"),
        ("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6"),
    ):
        add_gemma_2(registry.lookup(release, sae_id))
        cases[f"{release}|{sae_id}"] = 4
    e = registry.lookup("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big")
    cache.add_safetensors(
        e.repo_id,
        f"{e.path}/params.safetensors",
        {
            "w_enc": randn(4, 6),
            "w_dec": randn(6, 4),
            "b_enc": randn(6),
            "b_dec": randn(4),
            "threshold": randn(6).abs(),
        },
    )
    cases[f"{e.release}|{e.sae_id}"] = 4
    e = registry.lookup(
        "sae_bench_pythia70m_sweep_gated_ctx128_0730", "blocks.3.hook_resid_post__trainer_0"
    )
    cache.add_torch(
        e.repo_id,
        f"{e.path}/ae.pt",
        {
            "encoder.weight": randn(10, 5),
            "decoder.weight": randn(5, 10),
            "decoder_bias": randn(5),
            "r_mag": randn(10),
            "gate_bias": randn(10),
            "mag_bias": randn(10),
        },
    )
    cache.add(
        e.repo_id,
        f"{e.path}/config.json",
        {
            "trainer": {
                "dict_class": "GatedAutoEncoder",
                "activation_dim": 5,
                "dict_size": 10,
                "layer": 3,
                "lm_name": "EleutherAI/pythia-70m-deduped",
            },
            "buffer": {"ctx_len": 128},
        },
    )
    cases[f"{e.release}|{e.sae_id}"] = 5
    e = registry.lookup("llama_scope_lxm_8x", "l2m_8x")
    cache.add(
        e.repo_id,
        f"{e.path}/hyperparams.json",
        {
            "d_model": 4,
            "d_sae": 8,
            "jump_relu_threshold": 0.3,
            "hook_point_in": "blocks.2.hook_mlp_out",
            "dataset_average_activation_norm": {"in": 0.5},
        },
    )
    cache.add_safetensors(
        e.repo_id,
        f"{e.path}/checkpoints/final.safetensors",
        {
            "encoder.weight": randn(8, 4),
            "encoder.bias": randn(8),
            "decoder.weight": randn(4, 8),
            "decoder.bias": randn(4),
        },
    )
    cases[f"{e.release}|{e.sae_id}"] = 4
    for release, sae_id, names in (
        ("qwen-scope-3-1.7b-base-w32k-l50", "layer0", ("W_enc", "W_dec", "b_enc", "b_dec")),
        (
            "goodfire-llama-3.1-8b-instruct",
            "layer_19",
            (
                "encoder_linear.weight",
                "decoder_linear.weight",
                "encoder_linear.bias",
                "decoder_linear.bias",
            ),
        ),
        (
            "deepseek-r1-distill-llama-8b-qresearch",
            "blocks.19.hook_resid_post",
            ("encoder.weight", "decoder.weight", "encoder.bias", "decoder.bias"),
        ),
    ):
        e = registry.lookup(release, sae_id)
        d_sae = 64 if "qwen" in release else 6
        cache.add_torch(
            e.repo_id,
            e.path,
            dict(zip(names, (randn(d_sae, 4), randn(4, d_sae), randn(d_sae), randn(4)))),
        )
        cases[f"{release}|{sae_id}"] = 4
    return cases


@pytest.mark.slow
def test_every_conversion_encodes_as_saelens_does(hub_cache, tmp_path):
    """SAELens 6 (the TL3 environment's) loads the same cached files; hooks, activations
    and reconstructions agree for every conversion saehooks implements."""
    import os
    import subprocess
    from pathlib import Path

    python = Path(__file__).resolve().parent.parent / ".venv-tl3" / "bin" / "python"
    if (
        not python.is_file()
        or subprocess.run([str(python), "-c", "import sae_lens"], capture_output=True).returncode
        != 0
    ):
        pytest.skip("needs sae-lens in .venv-tl3")
    cases = _crosscheck_cache(hub_cache)
    inputs = {name: 3 * randn(9, d_in) for name, d_in in cases.items()}
    torch.save(inputs, tmp_path / "x.pt")
    sizes = {
        "get_gemma_2_config_from_hf": (4, 6),
        "get_qwen_scope_config_from_hf": (4, 64),
        "get_goodfire_config_from_hf": (4, 6),
        "get_deepseek_r1_config_from_hf": (4, 6),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            str(python),
            "-c",
            SAELENS_SCRIPT,
            str(tmp_path / "x.pt"),
            json.dumps(sizes),
            str(tmp_path / "out.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    conversions = set()
    for name, x in inputs.items():
        release, sae_id = name.split("|")
        sae = sh.load_sae(release=release, sae_id=sae_id)
        conversions.add(sae.cfg.metadata["saelens_conversion"])
        acts = sae.encode(x)
        assert sae.cfg.hook_name == theirs[name]["hook"], name
        assert (acts != 0).any(), name
        assert torch.equal(acts != 0, theirs[name]["acts"] != 0), name
        assert torch.allclose(acts, theirs[name]["acts"], rtol=1e-5, atol=1e-4), name
        assert torch.allclose(sae.decode(acts), theirs[name]["recons"], rtol=1e-5, atol=1e-4), name
    assert conversions == set(releases.LOADERS) - {"sparsify"}  # no sparsify release exists
