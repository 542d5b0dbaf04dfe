"""The used-by flows with the model and SAEs on a GPU: attach, cache, evaluate, ablate,
clamp, steer with generate, and the feature tools.

Each flow runs on the device and is compared with the same flow on the CPU (the shared
``model`` fixture), so a tensor left on the wrong device, a CUDA tensor added into a
CPU accumulator or a ``.numpy()`` on a device tensor fails here. Skipped without CUDA.
``SAEHOOKS_FLOW_DEVICE=cpu`` runs the same flows with a second CPU model, to check the
tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks.analysis.html import feature_html
from saehooks.tl import hook_state

DEVICE = os.environ.get("SAEHOOKS_FLOW_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (SAEHOOKS_FLOW_DEVICE=cpu runs these flows on the CPU)",
    ),
]
HOOK = "blocks.1.hook_resid_post"
HOOK2 = "blocks.2.hook_resid_post"
GEN = {"do_sample": False, "stop_at_eos": False, "verbose": False}


@pytest.fixture(scope="module")
def dev_model():
    return sh.load_model(device=DEVICE)


@pytest.fixture(scope="module")
def saes():
    """``(on_device, on_cpu)`` copies of one SAE, and of a second at another hook."""
    pairs = {}
    for hook, seed in ((HOOK, 11), (HOOK2, 12)):
        cpu = random_sae(k=16, hook_name=hook, seed=seed)
        pairs[hook] = (random_sae(k=16, hook_name=hook, seed=seed).to(DEVICE), cpu)
    return pairs


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    return eval_tokens[:3, :48].clone()  # on the CPU, as users load them


def _device(t: torch.Tensor) -> str:
    return t.device.type


def test_models_and_saes_are_where_the_test_put_them(dev_model, saes):
    assert _device(next(dev_model.parameters())) == torch.device(DEVICE).type
    assert _device(saes[HOOK][0].W_enc) == torch.device(DEVICE).type


def test_attach_and_cache_with_the_error_term_are_exact(dev_model, saes, tokens):
    sae, _ = saes[HOOK]
    rows = tokens.to(DEVICE)
    clean = dev_model(rows)
    with sh.attach(dev_model, sae, use_error_term=True):
        logits, cache = dev_model.run_with_cache(rows)
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert _device(acts) == torch.device(DEVICE).type and acts.shape == (3, 48, 512)
    torch.testing.assert_close(logits, clean, atol=1e-4, rtol=0)
    logits, cache = sh.run_with_cache_with_saes(dev_model, rows, [sae])
    l0 = (cache[f"{HOOK}.hook_sae_acts_post"] > 0).sum(-1)
    assert l0.le(16).all() and l0.eq(16).float().mean() > 0.9  # k = 16


def test_evaluate_on_the_device_matches_the_cpu(dev_model, model, saes, tokens):
    sae, cpu_sae = saes[HOOK]
    on_dev = sh.evaluate(dev_model, sae, tokens, batch_size=2, progress=False)
    on_cpu = sh.evaluate(model, cpu_sae, tokens, batch_size=2, progress=False)
    for key in (
        "ce_loss_clean",
        "ce_loss_spliced",
        "ce_loss_zero_ablation",
        "ce_loss_mean_ablation",
        "ce_loss_score",
        "kl_div",
        "fvu",
        "mse",
        "l0",
        "l1",
        "pca_fvu",
    ):
        assert getattr(on_dev, key) == pytest.approx(getattr(on_cpu, key), rel=2e-3, abs=1e-5), key
    assert on_dev.n_tokens == on_cpu.n_tokens
    assert _device(on_dev.feature_density) == "cpu"  # CPU-side accumulators
    torch.testing.assert_close(on_dev.feature_density, on_cpu.feature_density, atol=0.02, rtol=0)
    # tokens already on the device give the same report; so does the SAELens score option
    same = sh.evaluate(dev_model, sae, tokens.to(DEVICE), batch_size=3, progress=False)
    assert same.ce_loss_spliced == pytest.approx(on_dev.ce_loss_spliced, rel=1e-5)
    saelens = sh.evaluate(dev_model, sae, tokens, progress=False, ablate_bos=True)
    assert saelens.ce_loss_zero_ablation != on_dev.ce_loss_zero_ablation


def test_several_saes_and_the_loss_table_on_the_device(dev_model, saes, tokens):
    both = sh.evaluate(dev_model, [saes[HOOK][0], saes[HOOK2][0]], tokens, progress=False)
    assert list(both) == [HOOK, HOOK2]
    table = sh.loss_increase_per_token(dev_model, saes[HOOK][0], tokens, progress=False)
    report = sh.evaluate(dev_model, saes[HOOK][0], tokens, progress=False)
    assert len(table) == int((tokens[:, :-1] != 0).sum())
    assert table.loss_spliced.mean() == pytest.approx(report.ce_loss_spliced, rel=1e-4)


def test_ablation_and_clamping_on_the_device_are_exact(dev_model, saes, tokens):
    sae, _ = saes[HOOK]
    rows = tokens.to(DEVICE)
    names = [f"{HOOK}.hook_sae_input", f"{HOOK}.hook_sae_output"]

    def cache():
        _, c = dev_model.run_with_cache(rows, names_filter=lambda n: n in names)
        return c[names[0]], c[names[1]]

    with sh.attach(dev_model, sae, use_error_term=True):
        x, clean_out = cache()
    a = sae.encode(x)
    f = int((a > 0).sum((0, 1)).argmax())
    row = sae.W_dec[f].detach()
    with sh.ablate_features(dev_model, sae, [f], positions=[5, 6]):
        _, out = cache()
    expected = torch.zeros_like(out)
    expected[:, 5:7] = -a[:, 5:7, f, None] * row
    torch.testing.assert_close(out - clean_out, expected, atol=1e-4, rtol=0)
    means = sh.mean_feature_acts(dev_model, sae, tokens)
    assert _device(means) == "cpu"
    with sh.ablate_features(dev_model, sae, [f], mode="mean", mean_acts=means):
        _, out = cache()
    torch.testing.assert_close(
        out - clean_out, (means[f].to(DEVICE) - a[..., f, None]) * row, atol=1e-4, rtol=0
    )
    with sh.clamp_features(dev_model, sae, {f: 5.0}):
        _, out = cache()
    torch.testing.assert_close(out - clean_out, (5.0 - a[..., f, None]) * row, atol=1e-4, rtol=0)


def test_steer_with_generate_on_the_device(dev_model, saes, tokens):
    sae, _ = saes[HOOK]
    before = hook_state(dev_model)
    prompt = dev_model.to_tokens("import os\n\n\ndef main(args):\n    ").to(DEVICE)
    clean = dev_model.generate(prompt, max_new_tokens=8, use_past_kv_cache=False, **GEN)
    outs = []
    for cached in (True, False):
        with sh.steer(dev_model, sae, 7, 60.0):
            outs.append(
                dev_model.generate(prompt, max_new_tokens=8, use_past_kv_cache=cached, **GEN)
            )
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], clean)
    f = int(sh.feature_density(dev_model, sae, tokens).argmax())
    with sh.steer(dev_model, sae, f, 1.0, coefficient_mode="relative", tokens=tokens):
        relative = dev_model(prompt)
    assert not torch.allclose(relative, dev_model(prompt), atol=1e-4)
    vector = torch.randn(256, generator=torch.Generator().manual_seed(0))  # not constant:
    with sh.steer_direction(dev_model, HOOK, vector, 20.0, positions=[1]):  # LN centres that
        moved = dev_model(prompt)
    # position 0 comes before the steered position 1: unchanged (causal attention)
    torch.testing.assert_close(moved[:, :1], dev_model(prompt)[:, :1], atol=1e-5, rtol=0)
    assert not torch.allclose(moved[:, 1:], dev_model(prompt)[:, 1:], atol=1e-3)
    assert hook_state(dev_model) == before


def test_feature_tools_on_the_device_match_the_cpu(dev_model, model, saes, tokens, tmp_path):
    sae, cpu_sae = saes[HOOK]
    density = sh.feature_density(dev_model, sae, tokens)
    assert _device(density) == "cpu"
    torch.testing.assert_close(
        density, sh.feature_density(model, cpu_sae, tokens), atol=0.02, rtol=0
    )
    f = int(density.argmax())
    scan = sh.scan_features(dev_model, sae, tokens, [f, 3], k=5, context=2)
    want = sh.top_activating_examples(model, cpu_sae, tokens, f, k=5, context=2)
    got = scan.examples[f]
    assert (got.sequence.iloc[0], got.position.iloc[0]) == (
        want.sequence.iloc[0],
        want.position.iloc[0],
    )
    assert got.activation.iloc[0] == pytest.approx(want.activation.iloc[0], rel=1e-3)
    effects_dev = sh.feature_ablation_effects(dev_model, sae, tokens, [f, 3], batch_size=2)
    effects_cpu = sh.feature_ablation_effects(model, cpu_sae, tokens, [f, 3], batch_size=2)
    # a latent at the top-k boundary may flip between devices: loose, but a wrong device
    # would fail outright
    assert effects_dev["frequency"].tolist() == pytest.approx(
        effects_cpu["frequency"].tolist(), abs=0.02
    )
    for col in ("loss_change", "kl"):
        assert effects_dev[col].tolist() == pytest.approx(effects_cpu[col].tolist(), abs=2e-3)
    attribution = sh.feature_attribution(dev_model, sae, tokens, batch_size=2)
    assert len(attribution) == 512 and attribution["attribution"].notna().all()
    logits = sh.feature_logit_effects(dev_model, sae, f, k=5)
    cpu_logits = sh.feature_logit_effects(model, cpu_sae, f, k=5)
    assert logits.promoted_id.iloc[0] == cpu_logits.promoted_id.iloc[0]
    assert logits.promoted_effect.tolist() == pytest.approx(
        cpu_logits.promoted_effect.tolist(), rel=1e-3
    )
    sweep = sh.steering_sweep(
        dev_model, sae, f, [0.0, 20.0], "x = 1", tokens=tokens[:2], max_new_tokens=3
    )
    assert sweep.loc[0, "kl"] == 0 and sweep.loc[1, "kl"] > 0
    page = feature_html(dev_model, sae, tokens, f, tmp_path / "f.html", k=3, density=density)
    assert page.read_text(encoding="utf-8").count('class="tok hit"') == 3


def test_a_cpu_batch_reaches_the_gpu_through_pinned_memory_unchanged():
    from saehooks.training.device import to_training_device

    batch = torch.randn(64, 16)
    moved = to_training_device(batch, torch.device(DEVICE))
    assert moved.device.type == torch.device(DEVICE).type
    assert torch.equal(moved.cpu(), batch)
