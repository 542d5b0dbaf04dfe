"""One firing frequency: every tool that reports one gives the same numbers on the same
tokens (issue #12: ``feature_ablation_effects`` used to count predicting positions
``[:, :-1]`` and ``feature_density`` all non-BOS positions, so one name gave two numbers).

The reference is written here: the fraction of counted positions -- every position not
holding BOS (all of them with ``exclude_bos=False``), the last of each row included --
where the latent's activation, encoded from the hook's clean activation, is > 0.
Features are picked on purpose so that the two old denominators disagree: ones firing
at the last position of a row, a dead one, and the most frequent one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_sae

import saehooks as sh

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def sae():
    return random_sae(hook_name=HOOK, seed=7, k=16)


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    return eval_tokens[:3, :40].clone()


def _reference(model, sae, tokens, exclude_bos):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        acts = sae.encode(cache[HOOK])
    keep = (
        tokens != model.tokenizer.bos_token_id
        if exclude_bos
        else torch.ones_like(tokens, dtype=torch.bool)
    )
    return (acts[keep] > 0).double().mean(0), acts


def _chosen(acts, frequency):
    """Features for which the old ``[:, :-1]`` denominator gives another number."""
    at_last = (acts[:, -1] > 0).any(0)  # fires at the last position of some row
    rare_last = [int(f) for f in (at_last & (frequency < 0.2)).nonzero()[:2, 0]]
    dead = int((frequency == 0).nonzero()[0, 0])
    top = int(frequency.argmax())
    chosen = list(dict.fromkeys([*rare_last, dead, top]))
    old = (acts[:, :-1] > 0).double().mean((0, 1))
    assert any(float(old[f]) != float(frequency[f]) for f in chosen)  # the case at stake
    return chosen


@pytest.mark.parametrize("exclude_bos", [True, False])
def test_every_tool_reports_the_same_frequency(model, sae, tokens, exclude_bos):
    want, acts = _reference(model, sae, tokens, exclude_bos)
    chosen = _chosen(acts, want)
    kw = {"batch_size": 2, "exclude_bos": exclude_bos}

    density = sh.feature_density(model, sae, tokens, **kw)
    assert density.dtype == torch.float32 and torch.equal(density, want.float())
    assert torch.equal(sh.feature_act_stats(model, sae, tokens, **kw)["frequency"], want.float())
    scan = sh.scan_features(model, sae, tokens, chosen, k=3, **kw)
    assert torch.equal(scan.density, want.float())
    for f in chosen:
        assert scan.examples[f].attrs["frequency"] == float(want[f])

    table = sh.feature_ablation_effects(model, sae, tokens, chosen, **kw)
    assert table["frequency"].tolist() == [float(want[f]) for f in chosen]
    attribution = sh.feature_attribution(model, sae, tokens, **kw).sort_index()
    assert attribution["frequency"].tolist() == want.tolist()
    report = sh.evaluate(model, sae, tokens, progress=False, **kw)
    assert torch.equal(report.feature_density, want.float())


def test_mean_act_when_firing_is_over_the_same_positions(model, sae, tokens):
    want, acts = _reference(model, sae, tokens, True)
    chosen = _chosen(acts, want)
    keep = tokens != model.tokenizer.bos_token_id
    table = sh.feature_ablation_effects(model, sae, tokens, chosen, batch_size=2)
    stats = sh.feature_act_stats(model, sae, tokens, batch_size=2)
    for f in chosen:
        a = acts[..., f][keep]
        fired = a[a > 0].double()
        mean = float(fired.mean()) if fired.numel() else 0.0
        assert table.loc[f, "mean_act_when_firing"] == pytest.approx(mean, rel=1e-6)
        # the mean over all counted positions is frequency × mean when firing
        assert float(stats["mean"][f]) == pytest.approx(float(want[f]) * mean, rel=1e-5, abs=1e-9)
