"""Attaching SAEs to a live model: splicing, error term, caching, leaks, errors.

Runs on TransformerLens 4 (TransformerBridge) and, in CI's second environment, 3.
"""

import warnings

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks.hooks import ProcessingMismatchWarning
from saehooks.tl import HookNameError, hook_state

HOOK = "blocks.1.hook_resid_post"


def identity_sae(d_in=256, hook_name=HOOK):
    """ReLU SAE with dictionary [I; -I]: relu(x) - relu(-x) == x exactly."""
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=2 * d_in, architecture="relu", hook_name=hook_name))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def test_a_hook_returning_zeros_changes_the_loss(model, small_tokens):
    clean = model(small_tokens, return_type="loss")
    zeroed = model.run_with_hooks(
        small_tokens, return_type="loss", fwd_hooks=[(HOOK, lambda a, hook: torch.zeros_like(a))]
    )
    assert zeroed.item() > clean.item() + 1.0


def test_spliced_model_uses_the_reconstruction(model, small_tokens):
    sae = random_sae()
    with torch.no_grad():
        expected = model.run_with_hooks(small_tokens, fwd_hooks=[(HOOK, lambda a, hook: sae(a))])
        spliced = sh.run_with_saes(model, small_tokens, [sae])
        clean = model(small_tokens)
    assert torch.allclose(spliced, expected, atol=1e-5)
    assert (spliced - clean).abs().max() > 0.1


def test_identity_sae_reproduces_the_model_exactly(model, small_tokens):
    with torch.no_grad():
        clean = model(small_tokens)
        with sh.attach(model, identity_sae()):
            spliced = model(small_tokens)
    assert torch.equal(spliced, clean)


def test_error_term_gives_the_clean_logits_and_caches_features(model, small_tokens):
    sae = random_sae(k=8)
    with torch.no_grad():
        clean = model(small_tokens)
        with sh.attach(model, sae, use_error_term=True):
            logits, cache = model.run_with_cache(small_tokens)
    assert (logits - clean).abs().max() <= 1e-4
    acts = cache[HOOK + ".hook_sae_acts_post"]
    assert acts.shape == (*small_tokens.shape, sae.cfg.d_sae)
    assert torch.equal((acts != 0).sum(-1), torch.full(small_tokens.shape, 8))
    for name in (
        "hook_sae_input",
        "hook_sae_acts_pre",
        "hook_sae_recons",
        "hook_sae_error",
        "hook_sae_output",
    ):
        assert cache[f"{HOOK}.{name}"].shape[:2] == small_tokens.shape
    x = cache[HOOK + ".hook_sae_input"]
    assert torch.allclose(acts, sae.encode(x), atol=1e-5)
    assert torch.allclose(cache[HOOK + ".hook_sae_output"], x, atol=1e-4)
    assert sae.use_error_term is False  # restored on exit


def test_feature_intervention_through_the_model_hook_api(model, small_tokens):
    sae = random_sae(k=8)
    with torch.no_grad(), sh.attach(model, sae, use_error_term=True):
        acts = model.run_with_cache(small_tokens, names_filter=HOOK + ".hook_sae_acts_post")[1][
            HOOK + ".hook_sae_acts_post"
        ]
        feature = int(acts[0, 5].nonzero()[0])
        outs = {}

        def keep(a, hook):
            outs["out"] = a

        def zero(a, hook):
            a = a.clone()
            a[..., feature] = 0
            return a

        model.run_with_hooks(
            small_tokens,
            fwd_hooks=[(HOOK + ".hook_sae_acts_post", zero), (HOOK + ".hook_sae_output", keep)],
        )
        _, cache = model.run_with_cache(small_tokens, names_filter=HOOK + ".hook_sae_input")
    x = cache[HOOK + ".hook_sae_input"]
    expected = x - acts[..., feature, None] * sae.W_dec[feature]
    assert torch.allclose(outs["out"], expected, atol=1e-4)


def test_several_saes_at_different_hooks(model, small_tokens):
    a, b = random_sae(hook_name="blocks.0.hook_resid_post"), random_sae(seed=1)
    with torch.no_grad():
        both = sh.run_with_saes(model, small_tokens, [a, b])
        manual = model.run_with_hooks(
            small_tokens,
            fwd_hooks=[
                ("blocks.0.hook_resid_post", lambda x, hook: a(x)),
                (HOOK, lambda x, hook: b(x)),
            ],
        )
        _, cache = sh.run_with_cache_with_saes(model, small_tokens, [a, b])
    assert torch.allclose(both, manual, atol=1e-5)
    assert "blocks.0.hook_resid_post.hook_sae_acts_post" in cache
    assert HOOK + ".hook_sae_acts_post" in cache


def test_hooks_never_leak(model, small_tokens):
    before = hook_state(model)
    names_before = set(model.hook_dict)
    with torch.no_grad():
        clean = model(small_tokens)
    sae = random_sae()
    with pytest.raises(RuntimeError, match="boom"), sh.attach(model, sae):
        raise RuntimeError("boom")
    assert hook_state(model) == before and set(model.hook_dict) == names_before
    # nested inside the model's own hook context and another attach
    user_hook_calls = []
    with model.hooks(
        fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: user_hook_calls.append(1))]
    ):
        with sh.attach(model, random_sae(hook_name="blocks.2.hook_resid_post")):
            with pytest.raises(ValueError), sh.attach(model, sae):
                raise ValueError("inner")
            with sh.attach(model, sae), torch.no_grad():
                model(small_tokens)
        with torch.no_grad():
            model(small_tokens)
    assert len(user_hook_calls) == 2
    assert hook_state(model) == before and set(model.hook_dict) == names_before
    with torch.no_grad():
        assert torch.equal(model(small_tokens), clean)


def test_generate_while_attached(model):
    sae = random_sae(k=16)
    prompt = model.to_tokens("def main():\n    ")
    with sh.attach(model, sae, use_error_term=True):
        spliced = model.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)
    clean = model.generate(prompt, max_new_tokens=5, do_sample=False, verbose=False)
    assert spliced.shape == (1, prompt.shape[1] + 5)
    assert torch.equal(spliced, clean)


def test_sae_dtype_and_stream_dtype(model, small_tokens):
    sae = random_sae(dtype="bfloat16")
    seen = {}

    def look(name):
        def hook(a, hook):
            seen[name] = a.dtype

        return hook

    with torch.no_grad(), sh.attach(model, sae):
        model.run_with_hooks(
            small_tokens,
            fwd_hooks=[
                (HOOK + ".hook_sae_acts_post", look("acts")),
                (HOOK, look("out")),
                ("blocks.2.hook_resid_pre", look("next")),
            ],
        )
    assert seen == {"acts": torch.bfloat16, "out": torch.float32, "next": torch.float32}


def test_unknown_hook_name_lists_close_ones(model):
    with pytest.raises(HookNameError, match=r"did you mean 'blocks.1.hook_resid_post'"):
        with sh.attach(model, random_sae(hook_name="blocks.1.hook_resid_pots")):
            pass
    with pytest.raises(HookNameError, match=r"4 layers .*blocks.3.hook_resid_post"):
        with sh.attach(model, random_sae(hook_name="blocks.9.hook_resid_post")):
            pass


def test_width_mismatch(model):
    with pytest.raises(ValueError, match="d_in=128 does not match the width 256"):
        with sh.attach(model, random_sae(d_in=128)):
            pass


def test_per_head_hooks_are_checked_before_the_forward(model):
    z = "blocks.2.attn.hook_z"  # [batch, pos, 4 heads, 64]
    with pytest.raises(ValueError, match=r"flattened heads .* not supported.*hook_attn_out"):
        with sh.attach(model, random_sae(d_in=256, hook_name=z)):
            pass
    with pytest.raises(ValueError, match=r"\[batch, pos, 4, 64\]; an SAE on it needs d_in=64"):
        with sh.attach(model, random_sae(d_in=100, hook_name=z)):
            pass
    tokens = sh.load_eval_tokens(1)[:, :8]
    with sh.attach(model, random_sae(d_in=64, hook_name=z)):  # one SAE shared by the heads
        assert model(tokens).shape == (1, 8, model.cfg.d_vocab)


def test_device_mismatch_is_explained(model):
    sae = random_sae().to("meta")
    with pytest.raises(ValueError, match=r"sae.to\('cpu'\)"):
        with sh.attach(model, sae):
            pass


def test_two_saes_at_one_hook(model):
    with pytest.raises(ValueError, match="same hook point"):
        with sh.attach(model, random_sae(), random_sae(seed=1)):
            pass


def test_processing_mismatch_warns(model):
    sae = random_sae()
    sae.cfg.metadata["model_processing"] = {"compatibility_mode": True, "fold_ln": False}
    with pytest.warns(ProcessingMismatchWarning, match="fold_ln"):
        with sh.attach(model, sae):
            pass
    sae.cfg.metadata["model_processing"] = sh.tl.model_processing(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProcessingMismatchWarning)
        with sh.attach(model, sae):
            pass
