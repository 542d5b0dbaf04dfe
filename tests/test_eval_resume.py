"""evaluate resumes its spliced and ablated passes from the hook, with the same results.

The reference is the plain path every pass of which runs the whole model from the tokens
(``evaluation._RESUME_FROM_HOOK = False``, the implementation before resuming). Runs under
TransformerLens 4 (bridge) and 3 (``bash .ci/tl3_env.sh tests/test_eval_resume.py``).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import random_sae
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saehooks import evaluation, tl
from saehooks.evaluation import evaluate, loss_increase_per_token
from saehooks.tl import resume as tl_resume

RESUMABLE = [
    "blocks.2.hook_resid_post",
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_mlp_out",
    "blocks.2.hook_attn_out",
    "blocks.3.hook_resid_post",  # the last block: rerun it from its input
]


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    rows = eval_tokens[:5, :48].clone()
    rows[1, 20] = 0  # a BOS (document separator) inside a row, as in the real data
    return rows


def _reference(monkeypatch, fn, *args, **kwargs):
    """``fn`` with every pass run from the tokens."""
    with monkeypatch.context() as m:
        m.setattr(evaluation, "_RESUME_FROM_HOOK", False)
        return fn(*args, **kwargs)


def _as_dict(result):
    return result if isinstance(result, dict) else {result.hook_name: result}


def assert_same_reports(new, old, tol=1e-6):
    new, old = _as_dict(new), _as_dict(old)
    assert list(new) == list(old)
    for name in new:
        a, b = new[name].to_dict(), old[name].to_dict()
        assert a.keys() == b.keys()
        for field, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[field], abs=tol, rel=0), (name, field)
            elif field != "feature_density":
                assert value == b[field], (name, field)
        diff = new[name].feature_density - old[name].feature_density
        assert diff.abs().max().item() <= tol


class BlockRuns:
    """Counts the forward passes that really compute block ``layer``'s attention."""

    def __init__(self, model, layer):
        self.point = tl.hook_point(model, f"blocks.{layer}.hook_attn_out")
        self.calls = 0

    def __enter__(self):
        def count(act, hook=None):
            self.calls += 1

        self.handle = tl.add_permanent_hook(self.point, count)
        return self

    def __exit__(self, *exc):
        tl.remove_hook(self.point, self.handle)


# ---- where a pass may resume ---------------------------------------------------------------
def test_resume_points(model):
    assert tl_resume.can_resume(model)
    assert tl_resume.resume_point(model, "blocks.2.hook_resid_post") == (3, True)
    assert tl_resume.resume_point(model, "blocks.0.hook_resid_post") == (1, True)
    assert tl_resume.resume_point(model, "blocks.3.hook_resid_post") == (3, False)
    for name in ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out"):
        assert tl_resume.resume_point(model, f"blocks.1.{name}") == (1, False)
    assert tl_resume.resume_point(model, "blocks.2.mlp.hook_post") == (2, False)
    # attention internals, per-head hooks and hooks outside the blocks run whole passes
    for name in ("blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern", "hook_embed"):
        assert tl_resume.resume_point(model, name) is None
    assert tl_resume.resume_point(model, "ln_final.hook_normalized") is None
    if tl.tl_major_version() == 4:  # canonical bridge names resume as their aliases do
        assert tl_resume.resume_point(model, "blocks.2.hook_out") == (3, True)
        assert tl_resume.resume_point(model, "blocks.1.hook_in") == (1, False)
    assert tl_resume.block_input_hook(model, 2) == "blocks.2.hook_resid_pre"


def test_resume_plan_of_several_hooks(model):
    plan = evaluation._resume_plan
    assert plan(model, ["blocks.2.hook_resid_post"]) == (3, "blocks.2.hook_resid_post", None)
    # the lowest point wins; a resid_post hook below it runs inside the resumed blocks
    assert plan(model, ["blocks.2.hook_resid_post", "blocks.1.hook_mlp_out"]) == (
        1,
        None,
        "blocks.1.hook_resid_pre",
    )
    assert plan(model, ["blocks.1.hook_resid_post", "blocks.2.hook_attn_out"]) == (
        2,
        "blocks.1.hook_resid_post",
        None,
    )
    assert plan(model, ["blocks.2.hook_resid_post", "blocks.1.attn.hook_z"]) is None


def test_run_from_layer_gives_the_clean_logits(model, tokens):
    names = [tl_resume.block_input_hook(model, layer) for layer in range(tl.n_layers(model))]
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter=names)
        for layer, name in enumerate(names):
            with BlockRuns(model, 0) as below:
                resumed = tl_resume.run_from_layer(model, layer, cache[name])
            assert torch.equal(resumed, clean), layer
            assert below.calls == (1 if layer == 0 else 0)  # blocks below do not run


def test_run_from_layer_applies_hooks_and_restores_the_blocks(model, tokens):
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter="blocks.2.hook_resid_pre")
        zeroed = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.2.hook_mlp_out", lambda a, hook: torch.zeros_like(a))]
        )
        resumed = tl_resume.run_from_layer(
            model,
            2,
            cache["blocks.2.hook_resid_pre"],
            [("blocks.2.hook_mlp_out", lambda a, hook: torch.zeros_like(a))],
        )
        assert torch.equal(resumed, zeroed)

        def fail(act, hook=None):
            raise RuntimeError("hook failed")

        with pytest.raises(RuntimeError, match="hook failed"):
            tl_resume.run_from_layer(
                model, 3, cache["blocks.2.hook_resid_pre"], [("blocks.3.hook_attn_out", fail)]
            )
        # the skipped blocks compute again afterwards
        with BlockRuns(model, 0) as below:
            assert torch.equal(model(tokens), clean)
        assert below.calls == 1
    assert all("forward" not in block.__dict__ for block in model.blocks)
    with pytest.raises(Exception, match="not a block"):
        tl_resume.run_from_layer(model, tl.n_layers(model), cache["blocks.2.hook_resid_pre"])


# ---- evaluate: the same report, fewer blocks -----------------------------------------------
@pytest.mark.parametrize("hook_name", RESUMABLE)
def test_resumed_evaluate_equals_whole_passes(model, tokens, monkeypatch, hook_name):
    sae = random_sae(k=16, hook_name=hook_name, seed=3)
    old = _reference(monkeypatch, evaluate, model, sae, tokens, batch_size=2, progress=False)
    with BlockRuns(model, 0) as below:
        new = evaluate(model, sae, tokens, batch_size=2, progress=False)
    assert_same_reports(new, old)
    point = tl_resume.resume_point(model, hook_name)
    assert evaluation._RESUME_CHECKED[model][point.layer]
    # block 0 ran in the clean pass of each of the 3 batches, and for a hook inside a
    # block in the pass recomputing that block's input for the mean ablation (the
    # whole-pass path: 3 x 4)
    assert below.calls == (3 if point.carries_activation else 6)


def test_several_saes_with_ablate_bos(model, tokens, monkeypatch):
    saes = [
        random_sae(k=16, hook_name="blocks.1.hook_resid_post", seed=1),
        random_sae(k=8, hook_name="blocks.2.hook_mlp_out", seed=2),
        random_sae(k=12, hook_name="blocks.2.hook_resid_pre", seed=4),
    ]
    kwargs = dict(batch_size=3, progress=False, ablate_bos=True)
    old = _reference(monkeypatch, evaluate, model, saes, tokens, **kwargs)
    with BlockRuns(model, 1) as below:
        new = evaluate(model, saes, tokens, **kwargs)
    assert_same_reports(new, old)
    assert below.calls == 2  # resumed at block 2: block 1 ran in the 2 clean passes only
    # the SAEs changed the losses: not a vacuous comparison
    report = new["blocks.1.hook_resid_post"]
    assert report.ce_loss_spliced > report.ce_loss_clean + 1e-3
    assert report.ce_loss_zero_ablation > report.ce_loss_spliced


def test_loss_increase_per_token_resumes_too(model, tokens, monkeypatch):
    sae = random_sae(k=16, hook_name="blocks.2.hook_resid_post", seed=5)
    old = _reference(monkeypatch, loss_increase_per_token, model, sae, tokens, 2, progress=False)
    new = loss_increase_per_token(model, sae, tokens, 2, progress=False)
    assert new.equals(old)
    assert (new["delta"].abs() > 0).any()


def test_failed_resume_check_falls_back_to_whole_passes(model, tokens, monkeypatch):
    """A model whose resumed pass does not reproduce the clean logits (blocks needing
    state the residual does not carry) gets whole passes, and the same numbers."""
    sae = random_sae(k=16, hook_name="blocks.2.hook_resid_post", seed=6)
    old = _reference(monkeypatch, evaluate, model, sae, tokens, batch_size=5, progress=False)
    real = tl_resume.run_from_layer
    monkeypatch.setattr(evaluation, "_RESUME_CHECKED", weakref.WeakKeyDictionary())
    monkeypatch.setattr(tl_resume, "run_from_layer", lambda *a, **k: real(*a, **k) + 1.0)
    new = evaluate(model, sae, tokens, batch_size=5, progress=False)
    assert evaluation._RESUME_CHECKED[model] == {3: False}
    assert_same_reports(new, old, tol=0.0)


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    hooks=st.lists(
        st.sampled_from(RESUMABLE + ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    batch_size=st.integers(1, 5),
    n_rows=st.integers(1, 4),
    exclude_bos=st.booleans(),
    ablate_bos=st.booleans(),
    k=st.sampled_from([1, 32]),
)
def test_random_hook_sets(
    model, tokens, monkeypatch, hooks, batch_size, n_rows, exclude_bos, ablate_bos, k
):
    saes = []
    for i, name in enumerate(hooks):
        per_head = name.endswith("hook_z")
        saes.append(
            random_sae(d_in=64 if per_head else 256, d_sae=128, k=k, hook_name=name, seed=i)
        )
    rows = tokens[:n_rows, :24]
    kwargs = dict(batch_size=batch_size, exclude_bos=exclude_bos, ablate_bos=ablate_bos)
    old = _reference(monkeypatch, evaluate, model, saes, rows, progress=False, **kwargs)
    new = evaluate(model, saes, rows, progress=False, **kwargs)
    assert_same_reports(new, old)
