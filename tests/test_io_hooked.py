"""SAEs loaded from every supported layout run hooked on the reference model.

Runs on TransformerLens 4 and, through .ci/tl3_env.sh, on TransformerLens 3.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_sae
from safetensors.torch import save_file

import saehooks as sh
from saehooks.io import save_sae

HOOK = "blocks.1.hook_resid_post"
D_SAE = 512


def base_sae(architecture: str, **kw) -> sh.SAE:
    sae = random_sae(architecture=architecture, d_sae=D_SAE, hook_name=HOOK, **kw)
    with torch.no_grad():
        if architecture == "gated":
            sae.b_enc.zero_()
            sae.b_gate.fill_(0.1)
            sae.r_mag.fill_(0.2)
            sae.b_mag.fill_(-0.05)
    return sae


def write_legacy_topk(path, sae):
    path.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in sae.state_dict().items()},
        str(path / "sae_weights.safetensors"),
    )
    (path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": 256,
                "d_sae": D_SAE,
                "dtype": "float32",
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": sae.cfg.k},
                "hook_point": HOOK,
                "hook_point_layer": 1,
                "sae_lens_version": "4.0.0",
            }
        )
    )


def write_dictionary_learning(path, sae, dict_class):
    path.mkdir(parents=True)
    s = {k: v.detach() for k, v in sae.state_dict().items()}
    if dict_class == "AutoEncoder":
        state = {
            "encoder.weight": s["W_enc"].T,
            "encoder.bias": s["b_enc"],
            "decoder.weight": s["W_dec"].T,
            "bias": s["b_dec"],
        }
    elif dict_class == "GatedAutoEncoder":
        state = {
            "encoder.weight": s["W_enc"].T,
            "decoder.weight": s["W_dec"].T,
            "decoder_bias": s["b_dec"],
            "r_mag": s["r_mag"],
            "gate_bias": s["b_gate"],
            "mag_bias": s["b_mag"],
        }
    elif dict_class == "JumpReluAutoEncoder":
        state = {k: s[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    else:  # AutoEncoderTopK
        state = {
            "encoder.weight": s["W_enc"].T,
            "encoder.bias": s["b_enc"],
            "decoder.weight": s["W_dec"].T,
            "b_dec": s["b_dec"],
            "k": torch.tensor(sae.cfg.k, dtype=torch.int),
            "threshold": torch.tensor(-1.0),
        }
    torch.save({k: v.contiguous() for k, v in state.items()}, path / "ae.pt")
    (path / "config.json").write_text(
        json.dumps(
            {"trainer": {"dict_class": dict_class, "layer": 1, "submodule_name": "resid_post"}}
        )
    )


CASES = {
    "saelens-relu": lambda p: (base_sae("relu"), "saelens"),
    "saelens-topk-bf16": lambda p: (base_sae("topk", dtype="bfloat16"), "saelens"),
    "saelens-jumprelu": lambda p: (base_sae("jumprelu"), "saelens"),
    "saelens-gated": lambda p: (base_sae("gated"), "saelens"),
    "saelens-pre-v6-topk": lambda p: (base_sae("topk"), write_legacy_topk),
    "sparsify-topk": lambda p: (base_sae("topk"), "sparsify"),
    "dl-AutoEncoder": lambda p: (base_sae("relu"), "AutoEncoder"),
    "dl-GatedAutoEncoder": lambda p: (base_sae("gated"), "GatedAutoEncoder"),
    "dl-JumpReluAutoEncoder": lambda p: (
        base_sae("jumprelu", apply_b_dec_to_input=False),
        "JumpReluAutoEncoder",
    ),
    "dl-AutoEncoderTopK": lambda p: (base_sae("topk"), "AutoEncoderTopK"),
}


def write(case: str, path) -> sh.SAE:
    sae, how = CASES[case](path)
    if how in ("saelens", "sparsify"):
        save_sae(sae, path, format=how)
    elif callable(how):
        how(path, sae)
    else:
        write_dictionary_learning(path, sae, how)
    return sae


@pytest.mark.parametrize("case", list(CASES))
def test_loaded_sae_runs_hooked_on_the_reference_model(model, small_tokens, tmp_path, case):
    tokens = small_tokens[:2, :32]
    original = write(case, tmp_path / "sae")
    sae = sh.load_sae(tmp_path / "sae")
    assert sae.cfg.hook_name == HOOK and sae.cfg.architecture == original.cfg.architecture
    _, clean_cache = model.run_with_cache(tokens, names_filter=HOOK)
    resid = clean_cache[HOOK]
    acts = original.encode(resid)
    assert acts.count_nonzero() > 0
    with torch.no_grad():
        clean = model(tokens)
        with sh.attach(model, sae, use_error_term=True):
            logits, cache = model.run_with_cache(tokens)
        spliced = sh.run_with_saes(model, tokens, [sae])
    bf16 = original.dtype == torch.bfloat16  # the error term is added in the SAE's dtype
    assert torch.allclose(logits, clean, atol=0.1 if bf16 else 1e-3)
    cached = cache[f"{HOOK}.hook_sae_acts_post"]
    assert cached.shape == (2, 32, D_SAE)
    assert torch.allclose(cached.float(), acts.float(), atol=0.1 if bf16 else 1e-4)
    assert not torch.allclose(spliced, clean, atol=1e-2)  # the reconstruction is used
