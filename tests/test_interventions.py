"""Ablation, clamping and steering: exact arithmetic, generation, and no leaking hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks import interventions
from saehooks.data import capture, sae_acts
from saehooks.errors import InputError
from saehooks.metrics import kl_div
from saehooks.metrics import next_token_ce as token_losses
from saehooks.tl import hook_state

GEN = {"do_sample": False, "stop_at_eos": False, "verbose": False}


@pytest.fixture(scope="module")
def sae():
    return random_sae(hook_name="blocks.1.hook_resid_post", seed=1)


@pytest.fixture(scope="module")
def sae2():
    return random_sae(hook_name="blocks.2.hook_resid_post", seed=2)


def _frequencies(model, sae, tokens):
    return (sae_acts(model, sae, tokens) > 0).float().mean((0, 1))


def _cache(model, sae, tokens, names=("hook_sae_input", "hook_sae_output")):
    """SAE hook values of a run inside the current hook context."""
    wanted = [f"{sae.cfg.hook_name}.{n}" for n in names]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return [cache[w] for w in wanted]


def _with_sae(model, sae, tokens):
    with sh.attach(model, sae, use_error_term=True):
        return _cache(model, sae, tokens)


def test_zero_ablation_moves_output_by_exactly_the_decoder_row(model, small_tokens, sae):
    freq = _frequencies(model, sae, small_tokens)
    f = int(freq.argmax())
    x, clean_out = _with_sae(model, sae, small_tokens)
    with interventions.ablate_features(model, sae, [f]):
        x2, out = _cache(model, sae, small_tokens)
    torch.testing.assert_close(x2, x)  # upstream of the edit nothing changes
    a = sae.encode(x)[..., f]
    assert 0 < (a > 0).float().mean() < 1  # fires at some positions, not all
    expected = -a[..., None] * sae.W_dec[f].detach()
    torch.testing.assert_close(out - clean_out, expected, atol=1e-5, rtol=0)
    assert (out - clean_out)[a == 0].abs().max() == 0  # nothing elsewhere


def test_several_saes_and_features(model, small_tokens, sae, sae2):
    freq1, freq2 = _frequencies(model, sae, small_tokens), _frequencies(model, sae2, small_tokens)
    f1, f2 = [int(i) for i in freq1.topk(2).indices]
    g = int(freq2.argmax())
    x, clean_out = _with_sae(model, sae, small_tokens)
    with interventions.ablate_features(model, [sae, sae2], [[f1, f2], g]):
        (out1,) = _cache(model, sae, small_tokens, ("hook_sae_output",))
        x2, out2 = _cache(model, sae2, small_tokens)
    acts = sae.encode(x)
    expected = -(acts[..., [f1, f2]] @ sae.W_dec[[f1, f2]].detach())
    torch.testing.assert_close(out1 - clean_out, expected, atol=1e-5, rtol=0)
    # the second SAE sees the edited stream; its own edit is exact relative to its input
    a2 = sae2.encode(x2)[..., g]
    torch.testing.assert_close(
        out2 - x2, -a2[..., None] * sae2.W_dec[g].detach(), atol=1e-4, rtol=0
    )


def test_ablation_positions_mean_mode_and_clamping(model, small_tokens, sae):
    f = int(_frequencies(model, sae, small_tokens).argmax())
    x, clean_out = _with_sae(model, sae, small_tokens)
    a = sae.encode(x)[..., f]
    row = sae.W_dec[f].detach()
    with interventions.ablate_features(model, sae, f, positions=[5, 6]):
        (out,) = _cache(model, sae, small_tokens, ("hook_sae_output",))
    expected = torch.zeros_like(out)
    expected[:, 5:7] = -a[:, 5:7, None] * row
    torch.testing.assert_close(out - clean_out, expected, atol=1e-5, rtol=0)

    means = torch.full((sae.cfg.d_sae,), 0.75)
    with interventions.ablate_features(model, sae, [f], mode="mean", mean_acts=means):
        (out,) = _cache(model, sae, small_tokens, ("hook_sae_output",))
    torch.testing.assert_close(out - clean_out, (0.75 - a)[..., None] * row, atol=1e-5, rtol=0)

    with interventions.clamp_features(model, sae, {f: 5.0}):
        (out,) = _cache(model, sae, small_tokens, ("hook_sae_output",))
    torch.testing.assert_close(out - clean_out, (5.0 - a)[..., None] * row, atol=1e-5, rtol=0)


def test_ablating_a_feature_that_never_fires_leaves_the_loss_unchanged(model, small_tokens, sae):
    freq = _frequencies(model, sae, small_tokens)
    dead = int((freq == 0).nonzero()[0])
    with torch.no_grad():  # both runs then decode the same way (SAE.decode's sparse path)
        clean = model(small_tokens, return_type="loss")
        with sh.attach(model, sae, use_error_term=True):
            spliced = model(small_tokens, return_type="loss")
        with interventions.ablate_features(model, sae, [dead]):
            ablated = model(small_tokens, return_type="loss")
    assert ablated == spliced
    torch.testing.assert_close(ablated, clean, atol=1e-5, rtol=0)
    # with gradients on, the hooked path decodes densely and the error term sparsely:
    # equal to float rounding only (reported against SAE.forward)
    with interventions.ablate_features(model, sae, [dead]):
        ablated_grad = model(small_tokens, return_type="loss")
    torch.testing.assert_close(ablated_grad.detach(), spliced, atol=1e-6, rtol=0)
    table = sh.feature_ablation_effects(model, sae, small_tokens, [dead])
    assert table.loc[dead, "loss_change"] == 0 and table.loc[dead, "kl"] == 0
    assert table.loc[dead, "frequency"] == 0


def test_ablating_all_features_without_error_term_is_the_zero_reconstruction(
    model, small_tokens, sae
):
    b_dec = sae.b_dec.detach()
    zero_recon = model.run_with_hooks(
        small_tokens,
        fwd_hooks=[(sae.cfg.hook_name, lambda act, hook: b_dec.expand_as(act).clone())],
    )
    with interventions.ablate_features(model, sae, range(sae.cfg.d_sae), use_error_term=False):
        ablated = model(small_tokens)
    torch.testing.assert_close(ablated, zero_recon, atol=1e-5, rtol=0)
    # the same nested inside an attach without the error term
    with sh.attach(model, sae), interventions.ablate_features(model, sae, range(sae.cfg.d_sae)):
        nested = model(small_tokens)
    torch.testing.assert_close(nested, zero_recon, atol=1e-5, rtol=0)
    assert sae.use_error_term is False


def test_effects_table_matches_a_direct_ablated_run(model, small_tokens, sae):
    f = int(_frequencies(model, sae, small_tokens).argmax())
    table = sh.feature_ablation_effects(
        model, sae, small_tokens, [f], batch_size=3, exclude_bos=False
    )
    with torch.no_grad(), sh.attach(model, sae, use_error_term=True):
        clean = token_losses(model(small_tokens), small_tokens)
    with torch.no_grad(), interventions.ablate_features(model, sae, [f]):
        ablated = token_losses(model(small_tokens), small_tokens)
    row = table.loc[f]
    assert row["loss_change"] == pytest.approx(float((ablated - clean).mean()), abs=1e-6)
    top = row["top_token_effects"][0]
    assert top[2] == pytest.approx(float((ablated - clean)[top[0], top[1]]), abs=1e-5)
    # KL over every predicting position; frequency over every position (last ones too)
    with torch.no_grad(), sh.attach(model, sae, use_error_term=True):
        clean_logits = model(small_tokens)
    with torch.no_grad(), interventions.ablate_features(model, sae, [f]):
        ablated_logits = model(small_tokens)
    kl = kl_div(clean_logits[:, :-1], ablated_logits[:, :-1]).double().mean()
    assert row["kl"] == pytest.approx(float(kl), rel=1e-5)
    acts = sae_acts(model, sae, small_tokens)[..., f]
    assert row["frequency"] == float((acts > 0).double().mean())
    fires = acts > 0
    assert row["mean_act_when_firing"] == pytest.approx(
        float(acts[fires].double().mean()), rel=1e-6
    )
    fires_predicting = fires[:, :-1]
    assert row["loss_change_when_firing"] == pytest.approx(
        float((ablated - clean)[fires_predicting].double().mean()), abs=1e-6
    )
    # the largest rise over every token, even when the largest |changes| are falls
    assert row["max_loss_increase"] == pytest.approx(
        max(float((ablated - clean).max()), 0.0), abs=1e-5
    )
    narrow = sh.feature_ablation_effects(
        model, sae, small_tokens, [f], batch_size=3, exclude_bos=False, n_top=1
    )
    assert narrow.loc[f, "max_loss_increase"] == pytest.approx(row["max_loss_increase"])


def test_attribution_is_the_gradient_estimate_and_is_checked_against_ablation(
    model, small_tokens, sae
):
    attr = sh.feature_attribution(model, sae, small_tokens, batch_size=2)
    assert len(attr) == sae.cfg.d_sae
    assert attr["attribution"].abs().is_monotonic_decreasing
    dead = _frequencies(model, sae, small_tokens) == 0
    assert (attr.loc[dead.nonzero()[:, 0].tolist(), "attribution"] == 0).all()
    # finite difference: scaling feature f by (1 - eps) changes the loss by eps * attribution
    f, eps = int(attr.index[0]), 0.05
    mask = small_tokens != model.tokenizer.bos_token_id

    def shrink(acts, hook):
        acts = acts.clone()
        acts[..., f] = torch.where(mask, acts[..., f] * (1 - eps), acts[..., f])
        return acts

    def mean_loss():
        return token_losses(model(small_tokens), small_tokens)[mask[:, :-1]].double().mean()

    with sh.latent_hooks(model, [(sae, lambda a, hook: a)]):
        base = mean_loss()
    with sh.latent_hooks(model, [(sae, shrink)]):
        moved = mean_loss()
    estimate = eps * attr.loc[f, "attribution"]
    assert float((moved - base).detach()) == pytest.approx(estimate, rel=0.2)
    check = sh.attribution_check(model, sae, small_tokens, top=4, attribution=attr)
    chosen = [int(g) for g in attr.index[:4]]
    exact = sh.feature_ablation_effects(model, sae, small_tokens, chosen)
    assert check.table.index.tolist() == chosen
    assert check.table["loss_change"].tolist() == exact["loss_change"].tolist()
    # Spearman by hand: 1 - 6 Σ d² / (n (n² - 1)) on the ranks (no ties here)
    est = torch.tensor(attr.loc[chosen, "attribution"].tolist(), dtype=torch.float64)
    got = torch.tensor(exact["loss_change"].tolist(), dtype=torch.float64)
    assert len(set(est.tolist())) == 4 and len(set(got.tolist())) == 4
    d = est.argsort().argsort() - got.argsort().argsort()
    assert check.spearman == pytest.approx(1 - 6 * float((d**2).sum()) / (4 * 15))
    assert check.sign_agreement == float((est.sign() == got.sign()).double().mean())
    assert (
        check.table["exact_rank"].tolist() == (4 - got.argsort().argsort()).tolist()
    )  # 1 = largest change


def test_steering_with_coefficient_zero_is_the_clean_model(model, small_tokens, sae):
    clean = model(small_tokens)
    with interventions.steer(model, sae, 3, 0.0):
        same = model(small_tokens)
    assert torch.equal(same, clean)
    with interventions.steer(model, sae, 3, 10.0):
        moved = model(small_tokens)
    assert not torch.allclose(moved, clean, atol=1e-3)  # the hook is really used


def test_kv_cache_and_no_cache_generation_agree_while_steering(model, sae):
    prompt = model.to_tokens("import os\n\n\ndef main(args):\n    ")
    clean_runs = [
        model.generate(prompt, max_new_tokens=6, use_past_kv_cache=c, **GEN) for c in (True, False)
    ]
    assert torch.equal(*clean_runs)  # load_model repairs the bridge's KV cache
    _, act = capture(model, prompt, sae.cfg.hook_name)
    f, coefficient = 7, 2 * float(act[0, 1:].norm(dim=-1).median())  # twice the stream's norm
    clean = model.generate(prompt, max_new_tokens=10, use_past_kv_cache=True, **GEN)
    outs = []
    for cache in (True, False):
        with interventions.steer(model, sae, f, coefficient):
            outs.append(model.generate(prompt, max_new_tokens=10, use_past_kv_cache=cache, **GEN))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], clean)  # steering changed the text
    # steering applies to generated positions too: their logits move
    with interventions.steer(model, sae, f, coefficient):
        steered_logits = model(outs[0])
    assert not torch.allclose(steered_logits[:, -1], model(outs[0])[:, -1], atol=1e-3)


def test_steering_raises_the_feature_and_its_promoted_tokens(model, small_tokens):
    sae = random_sae(hook_name="blocks.3.hook_resid_post", seed=3)
    _, act = capture(model, small_tokens, sae.cfg.hook_name)
    f, coefficient = 11, float(act[:, 1:].norm(dim=-1).median())  # the stream's typical norm
    prompt = "def f(x):\n    return x\n"
    sweep = sh.steering_sweep(
        model, sae, f, [0.0, coefficient], [prompt], tokens=small_tokens[:2], max_new_tokens=4
    )
    assert list(sweep.columns) == [
        "coefficient",
        "added_norm",
        "feature_act",
        "kl",
        "loss",
        "sample",
    ]
    # each column recomputed with a plain hook adding c · W_dec[f] / ‖W_dec[f]‖
    row = sae.W_dec[f].detach()
    p, rows = model.to_tokens(prompt), small_tokens[:2]
    with torch.no_grad():
        clean = model(p)
    for i, c in enumerate([0.0, coefficient]):
        add = c * row / row.norm()
        seen = {}

        def steer_and_read(a, hook, add=add, seen=seen):
            seen["act"] = a + add
            return a + add

        with torch.no_grad():
            logits = model.run_with_hooks(p, fwd_hooks=[(sae.cfg.hook_name, steer_and_read)])
            feature_act = sae.encode(seen["act"])[..., f].mean()
            loss_logits = model.run_with_hooks(
                rows, fwd_hooks=[(sae.cfg.hook_name, steer_and_read)]
            )
            out = model.run_with_hooks(p, fwd_hooks=[(sae.cfg.hook_name, steer_and_read)])
        kl = kl_div(clean, logits).mean()
        predict = (rows != model.tokenizer.bos_token_id)[:, :-1]
        loss = token_losses(loss_logits, rows)[predict].double().mean()
        assert sweep.loc[i, "added_norm"] == pytest.approx(abs(c), rel=1e-5)
        assert sweep.loc[i, "feature_act"] == pytest.approx(float(feature_act), rel=1e-5)
        assert sweep.loc[i, "kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
        assert sweep.loc[i, "loss"] == pytest.approx(float(loss), rel=1e-5)
        assert sweep.loc[i, "sample"].startswith(model.tokenizer.decode([int(out[0, -1].argmax())]))
    assert sweep.loc[0, "kl"] == 0 and sweep.loc[1, "kl"] > 0.01
    assert sweep.loc[1, "feature_act"] > sweep.loc[0, "feature_act"]
    promoted = sh.feature_logit_effects(model, sae, f, k=10)["promoted_id"].tolist()
    with torch.no_grad():
        clean = model(small_tokens).log_softmax(-1)
    with torch.no_grad(), interventions.steer(model, sae, f, coefficient):
        steered = model(small_tokens).log_softmax(-1)
    gain = (steered - clean)[..., promoted].mean()
    assert gain > 0.5 and gain > (steered - clean).mean() + 0.5


def test_relative_coefficients(model, small_tokens, sae):
    f = int(_frequencies(model, sae, small_tokens).argmax())
    row = sae.W_dec[f].detach()
    v = interventions.steering_vector(model, sae, f, 2.0, "relative", max_activation=3.0)
    torch.testing.assert_close(v, 6.0 * row)
    measured = interventions.steering_vector(model, sae, f, 1.0, "relative", tokens=small_tokens)
    peak = float(sae_acts(model, sae, small_tokens)[..., f][small_tokens != 0].max())
    torch.testing.assert_close(measured, peak * row)
    with pytest.raises(ValueError, match="max_activation"):
        interventions.steering_vector(model, sae, f, 1.0, "relative")


def test_errors_name_the_problem_and_the_fix(model, sae):
    with pytest.raises(
        InputError,
        match=r"\[512\] out of range: this SAE has d_sae=512 "
        r"latents \(ids 0 … 511\)",
    ):
        with interventions.ablate_features(model, sae, [512]):
            pass
    with pytest.raises(InputError, match=r"mean_acts=saehooks.mean_feature_acts"):
        with interventions.ablate_features(model, sae, [1], mode="mean"):
            pass
    with pytest.raises(InputError, match="width 256"):
        with interventions.steer_direction(model, "blocks.0.hook_resid_post", torch.ones(3), 1.0):
            pass
    with pytest.raises(KeyError, match="blocks.3"):
        with interventions.steer_direction(model, "blocks.9.hook_resid_post", torch.ones(256), 1):
            pass


def test_hooks_never_leak(model, small_tokens, sae, sae2):
    before = hook_state(model)
    contexts = [
        lambda: interventions.ablate_features(model, sae, [1, 2]),
        lambda: interventions.ablate_features(model, [sae, sae2], [[1], [2]]),
        lambda: interventions.clamp_features(model, sae, {3: 1.0}),
        lambda: interventions.steer(model, sae, 4, 5.0),
        lambda: interventions.steer_direction(
            model, "blocks.0.hook_resid_post", torch.ones(256), 1.0
        ),
    ]
    for make in contexts:
        with make():
            model(small_tokens[:1, :8])
        assert hook_state(model) == before
        with pytest.raises(RuntimeError, match="boom"):
            with make():
                model(small_tokens[:1, :8])
                raise RuntimeError("boom")
        assert hook_state(model) == before
    # nested inside attach and inside each other
    with sh.attach(model, sae2):
        inner = hook_state(model)
        with pytest.raises(RuntimeError):
            with (
                interventions.steer(model, sae, 1, 1.0),
                interventions.ablate_features(model, sae2, [1], use_error_term=True),
            ):
                assert sae2.use_error_term is True
                raise RuntimeError
        assert hook_state(model) == inner and sae2.use_error_term is False
    assert hook_state(model) == before
    sh.feature_ablation_effects(model, sae, small_tokens[:1, :16], [1])
    sh.feature_attribution(model, sae, small_tokens[:1, :16])
    sh.steering_sweep(model, sae, 1, [1.0], "x = 1", max_new_tokens=2)
    assert hook_state(model) == before


def test_positions_apply_to_per_head_activations(model, small_tokens):
    """Per-head hooks give [batch, pos, n_heads, d_head]: positions select across heads
    (they used to be ignored there, steering every position)."""
    hook = "blocks.0.attn.hook_z"
    rows = small_tokens[:2, :10]
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))

    def z():
        _, cache = model.run_with_cache(rows, names_filter=hook)
        return cache[hook]

    clean = z()
    with interventions.steer_direction(model, hook, vector, 3.0, positions=[2, 7]):
        diff = z() - clean
    assert diff.shape == (2, 10, 4, 64)
    added = (3.0 * vector / vector.norm()).expand(2, 2, 4, 64)
    torch.testing.assert_close(diff[:, [2, 7]], added, atol=1e-5, rtol=0)
    others = [p for p in range(10) if p not in (2, 7)]
    assert diff[:, others].abs().max() == 0

    # an SAE on one head's width: ablation at a position changes only that position
    sae = random_sae(d_in=64, d_sae=128, k=8, hook_name=hook, seed=5)
    x, clean_out = _with_sae(model, sae, rows)
    acts = sae.encode(x)  # [2, 10, 4, 128]
    f = int((acts[:, 3] > 0).sum((0, 1)).argmax())
    assert (acts[:, 3, :, f] > 0).any()
    with interventions.ablate_features(model, sae, [f], positions=[3]):
        (out,) = _cache(model, sae, rows, ("hook_sae_output",))
    expected = torch.zeros_like(out)
    expected[:, 3] = -acts[:, 3, :, f, None] * sae.W_dec[f].detach()
    torch.testing.assert_close(out - clean_out, expected, atol=1e-5, rtol=0)


def test_a_mask_per_row_selects_per_row(model, small_tokens, sae):
    rows = small_tokens[:2, :12]
    f = int(_frequencies(model, sae, rows).argmax())
    x, clean_out = _with_sae(model, sae, rows)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 4], mask[1, 9] = True, True
    with interventions.ablate_features(model, sae, [f], positions=mask):
        (out,) = _cache(model, sae, rows, ("hook_sae_output",))
    a = sae.encode(x)[..., f]
    expected = torch.where(mask[..., None], -a[..., None] * sae.W_dec[f].detach(), 0.0)
    torch.testing.assert_close(out - clean_out, expected, atol=1e-5, rtol=0)
