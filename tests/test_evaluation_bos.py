"""evaluate(..., ablate_bos=True) is SAELens' CE loss score; several SAEs evaluated at once.

SAELens' ``get_recons_loss`` keeps ignored (BOS) positions clean in its spliced run but
zeroes every position in its zero-ablation run; saehooks keeps BOS clean in both by
default. Both definitions are computed here by hand, with plain hooks, and compared.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks import metrics
from saehooks.evaluation import evaluate

HOOK = "blocks.1.hook_resid_post"
HOOK2 = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    rows = eval_tokens[:3, :40].clone()
    rows[1, 20] = 0  # a BOS (document separator) inside a row, as in the real data
    return rows


@pytest.fixture(scope="module")
def sae():
    return random_sae(k=16, hook_name=HOOK, seed=7)


def _ce(logits, tokens, predict):
    return metrics.next_token_ce(logits, tokens)[predict].double().mean().item()


@pytest.fixture(scope="module")
def by_hand(model, sae, tokens):
    """CE losses computed with plain hooks on the whole token set at once."""
    bos = tokens == model.tokenizer.bos_token_id
    keep = ~bos
    predict = keep[:, :-1]
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK]
        recon = sae.decode(sae.encode(x))
        mean = x[keep].double().mean(0).float()

        def run(fn):
            return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, fn)])

        spliced = run(lambda a, hook: torch.where(keep[..., None], recon, a))
        zero_keep_bos = run(lambda a, hook: torch.where(keep[..., None], 0.0, a))
        zero_all = run(lambda a, hook: torch.zeros_like(a))
        mean_keep_bos = run(lambda a, hook: torch.where(keep[..., None], mean, a))
        mean_all = run(lambda a, hook: mean.expand_as(a).clone())
    return {
        name: _ce(logits, tokens, predict)
        for name, logits in [
            ("clean", clean),
            ("spliced", spliced),
            ("zero_keep_bos", zero_keep_bos),
            ("zero_all", zero_all),
            ("mean_keep_bos", mean_keep_bos),
            ("mean_all", mean_all),
        ]
    }


def test_ablate_bos_gives_saelens_ce_loss_score(model, sae, tokens, by_hand):
    r = evaluate(model, sae, tokens, batch_size=2, progress=False, ablate_bos=True)
    h = by_hand
    assert r.ablate_bos is True
    assert r.ce_loss_clean == pytest.approx(h["clean"], rel=1e-6)
    assert r.ce_loss_spliced == pytest.approx(h["spliced"], rel=1e-6)
    assert r.ce_loss_zero_ablation == pytest.approx(h["zero_all"], rel=1e-6)
    assert r.ce_loss_mean_ablation == pytest.approx(h["mean_all"], rel=1e-6)
    saelens = (h["zero_all"] - h["spliced"]) / (h["zero_all"] - h["clean"])
    assert r.ce_loss_score == pytest.approx(saelens, rel=1e-5)


def test_default_keeps_bos_clean_in_the_ablations_and_says_so(model, sae, tokens, by_hand):
    r = evaluate(model, sae, tokens, batch_size=2, progress=False)
    h = by_hand
    assert r.ablate_bos is False
    assert r.ce_loss_zero_ablation == pytest.approx(h["zero_keep_bos"], rel=1e-6)
    assert r.ce_loss_mean_ablation == pytest.approx(h["mean_keep_bos"], rel=1e-6)
    ours = (h["zero_keep_bos"] - h["spliced"]) / (h["zero_keep_bos"] - h["clean"])
    assert r.ce_loss_score == pytest.approx(ours, rel=1e-5)
    # the two definitions really differ on this data, so the option matters
    assert abs(h["zero_all"] - h["zero_keep_bos"]) > 1e-3
    assert "ablate_bos=True" in str(r) and "SAELens" in str(r)
    assert "ablate_bos=True" in sh.evaluate.__doc__


def test_ablate_bos_changes_only_the_ablation_baselines(model, sae, tokens):
    a = evaluate(model, sae, tokens, batch_size=3, progress=False)
    b = evaluate(model, sae, tokens, batch_size=3, progress=False, ablate_bos=True)
    for key in ("ce_loss_clean", "ce_loss_spliced", "kl_div", "fvu", "l0", "n_tokens"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.ce_loss_zero_ablation != b.ce_loss_zero_ablation


# ---- several SAEs at once ---------------------------------------------------------------
def test_several_saes_are_spliced_together_and_each_reports_its_own_reconstruction(model, tokens):
    sae1, sae2 = random_sae(k=16, hook_name=HOOK, seed=7), random_sae(k=8, hook_name=HOOK2, seed=8)
    reports = evaluate(model, [sae1, sae2], tokens, batch_size=2, exclude_bos=False, progress=False)
    assert list(reports) == [HOOK, HOOK2]
    alone = {
        s.cfg.hook_name: evaluate(model, s, tokens, exclude_bos=False, progress=False)
        for s in (sae1, sae2)
    }
    for name, report in reports.items():
        assert report.hook_name == name and report.spliced_hooks == (HOOK, HOOK2)
        for key in ("fvu", "mse", "l0", "l1", "dead_fraction", "pca_fvu", "n_tokens"):
            assert getattr(report, key) == pytest.approx(getattr(alone[name], key), rel=1e-6), (
                name,
                key,
            )
        assert torch.equal(report.feature_density, alone[name].feature_density)
    # the joint CE: both SAEs spliced in at every position, computed by hand
    with torch.no_grad():
        both = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (s.cfg.hook_name, lambda a, hook, s=s: s.decode(s.encode(a))) for s in (sae1, sae2)
            ],
        )
        zero = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (s.cfg.hook_name, lambda a, hook: torch.zeros_like(a)) for s in (sae1, sae2)
            ],
        )
    every = torch.ones_like(tokens[:, :-1], dtype=torch.bool)
    joint = reports[HOOK2]
    assert joint.ce_loss_spliced == pytest.approx(_ce(both, tokens, every), rel=1e-6)
    assert joint.ce_loss_zero_ablation == pytest.approx(_ce(zero, tokens, every), rel=1e-6)
    assert reports[HOOK].ce_loss_spliced == joint.ce_loss_spliced
    # splicing both costs more than either alone (the second SAE sees the first's output)
    assert joint.ce_loss_spliced > max(r.ce_loss_spliced for r in alone.values())
    assert f"{HOOK2} spliced in too" in str(reports[HOOK])
