"""TransformerLens 3: load_model builds a HookedTransformer from a local HF directory.

Runs only where TransformerLens 3 is installed (CI's second environment,
``bash .ci/tl3_env.sh``); skipped under TransformerLens 4.
"""

from __future__ import annotations

import pytest
import torch

import saehooks as sh
from saehooks import tl
from saehooks.reference import reference_model_dir

pytestmark = pytest.mark.skipif(
    tl.tl_major_version() != 3, reason="TransformerLens 3 only (.ci/tl3_env.sh)"
)


def hf_logits(tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(reference_model_dir()), dtype=torch.float32)
    with torch.no_grad():
        return hf(tokens).logits


def test_reference_model_is_a_processed_hooked_transformer(model, small_tokens):
    from transformer_lens import HookedTransformer

    assert isinstance(model, HookedTransformer)
    assert model.cfg.normalization_type == "LNPre"  # LayerNorm folded
    processing = tl.model_processing(model)
    assert processing["backend"] == "HookedTransformer"
    assert all(
        processing[k]
        for k in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    )
    tokens = small_tokens[:2, :32]
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
    assert torch.allclose(ours, hf_logits(tokens).log_softmax(-1), atol=1e-4)
    assert "blocks.3.hook_resid_post" in model.hook_dict


def test_unprocessed_model_keeps_layernorm_and_outputs(small_tokens):
    raw = sh.load_model(compatibility_mode=False)
    assert raw.cfg.normalization_type == "LN"
    assert not tl.model_processing(raw)["fold_ln"]
    tokens = small_tokens[:2, :32]
    with torch.no_grad():
        ours = raw(tokens).log_softmax(-1)
    assert torch.allclose(ours, hf_logits(tokens).log_softmax(-1), atol=1e-4)
