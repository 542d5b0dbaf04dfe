"""Every analysis entry point refuses bad input with a named error that says what to pass.

One table: the call, the :mod:`saehooks.errors` class it must raise, and a piece of the
message that tells the user what to pass instead. Most rows fail before any forward
pass; the rest run on two rows of eight tokens. Below the table, the reasonable inputs
that must keep working (NumPy ids) and the refusals that hold after the first call
(no hooks are left behind).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks import interventions
from saehooks.errors import (
    HookNameError,
    InputError,
    InputTypeError,
    SAEHooksError,
)
from saehooks.tl import hook_state

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def sae():
    return random_sae(hook_name=HOOK, seed=1)


@pytest.fixture(scope="module")
def dead_row_sae():
    """Latent 5's decoder row is zero (a pruned latent): no direction to steer along."""
    sae = random_sae(hook_name=HOOK, seed=2)
    with torch.no_grad():
        sae.W_dec[5] = 0.0
    return sae


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    return eval_tokens[:2, :8].clone()


def _enter(model, context, tokens):
    """Enter an intervention and run one forward pass inside it."""
    with context:
        model(tokens)


OOV = torch.tensor([[0, 17, 4096, 5]])  # 4096 is one past the reference vocabulary
TOO_LONG = torch.ones(1, 257, dtype=torch.long)  # n_ctx is 256
ALL_BOS = torch.zeros(2, 6, dtype=torch.long)  # BOS is token 0
NAN = float("nan")

# (id, call(model, sae, tokens, dead_row_sae), error class, hint: what to pass instead)
CASES = [
    # evaluate
    (
        "evaluate-two-saes-one-hook",
        lambda m, s, t, z: sh.evaluate(m, [s, z], t, progress=False),
        InputError,
        "evaluate SAEs that share a hook in separate calls",
    ),
    (
        "evaluate-empty-list",
        lambda m, s, t, z: sh.evaluate(m, [], t, progress=False),
        InputError,
        "pass an SAE or a non-empty list of SAEs",
    ),
    (
        "evaluate-path-not-sae",
        lambda m, s, t, z: sh.evaluate(m, "topk-k32", t, progress=False),
        InputTypeError,
        "load one with sh.load_sae(...)",
    ),
    (
        "evaluate-batch-size-0",
        lambda m, s, t, z: sh.evaluate(m, s, t, batch_size=0, progress=False),
        InputError,
        "batch_size must be >= 1",
    ),
    (
        "evaluate-longer-than-n_ctx",
        lambda m, s, t, z: sh.evaluate(m, s, TOO_LONG, progress=False),
        InputError,
        "cut them, e.g. tokens[:, :256]",
    ),
    (
        "evaluate-flag-as-string",
        lambda m, s, t, z: sh.evaluate(m, s, t, exclude_bos="no", progress=False),
        InputTypeError,
        "exclude_bos must be True or False",
    ),
    (
        "evaluate-all-bos",
        lambda m, s, t, z: sh.evaluate(m, s, ALL_BOS, progress=False),
        InputError,
        "exclude_bos=False",
    ),
    (
        "evaluate-ablate-bos-not-bool",
        lambda m, s, t, z: sh.evaluate(m, s, t, ablate_bos=1, progress=False),
        InputTypeError,
        "ablate_bos must be True or False",
    ),
    # loss_increase_per_token
    (
        "loss-table-batch-size-negative",
        lambda m, s, t, z: sh.loss_increase_per_token(m, s, t, batch_size=-1, progress=False),
        InputError,
        "batch_size must be >= 1",
    ),
    (
        "loss-table-out-of-vocabulary",
        lambda m, s, t, z: sh.loss_increase_per_token(m, s, OOV, progress=False),
        InputError,
        "tokenize with this model's tokenizer (model.to_tokens)",
    ),
    # ablate_features
    (
        "ablate-repeated-ids",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [211, 211]), t),
        InputError,
        "pass each id once",
    ),
    (
        "ablate-float-positions",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [3], positions=[1.5, 2.7]), t),
        InputTypeError,
        "each of positions must be an integer",
    ),
    (
        "ablate-mask-for-another-batch",
        lambda m, s, t, z: _enter(
            m, sh.ablate_features(m, s, [3], positions=torch.ones(3, 8, dtype=torch.bool)), t
        ),
        InputError,
        "pass a [pos] mask (the same positions in every row)",
    ),
    (
        "ablate-3d-mask",
        lambda m, s, t, z: _enter(
            m, sh.ablate_features(m, s, [3], positions=torch.ones(2, 8, 1, dtype=torch.bool)), t
        ),
        InputError,
        "must be [pos] or [batch, pos]",
    ),
    (
        "ablate-unknown-mode",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [3], mode="average"), t),
        InputError,
        "mode must be one of 'zero', 'mean'",
    ),
    (
        "ablate-nan-means",
        lambda m, s, t, z: _enter(
            m, sh.ablate_features(m, s, [3], mode="mean", mean_acts=torch.full((512,), NAN)), t
        ),
        InputError,
        "pass finite numbers",
    ),
    (
        "ablate-float-ids",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [1.0]), t),
        InputTypeError,
        "each of features must be an integer",
    ),
    (
        "ablate-id-out-of-range",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [512]), t),
        InputError,
        "(ids 0 … 511)",
    ),
    (
        "ablate-several-saes-one-list",
        lambda m, s, t, z: _enter(
            m,
            sh.ablate_features(m, [s, random_sae(hook_name="blocks.2.hook_resid_post")], [1, 2, 3]),
            t,
        ),
        InputError,
        "one per SAE (e.g. [[1, 2], [3]])",
    ),
    (
        "ablate-empty-positions",
        lambda m, s, t, z: _enter(m, sh.ablate_features(m, s, [3], positions=[]), t),
        InputError,
        "(None = every position)",
    ),
    # clamp_features
    (
        "clamp-none-value",
        lambda m, s, t, z: _enter(m, sh.clamp_features(m, s, {5: None}), t),
        InputTypeError,
        "must be a real number",
    ),
    (
        "clamp-nan-value",
        lambda m, s, t, z: _enter(m, sh.clamp_features(m, s, {5: NAN}), t),
        InputError,
        "must be a finite number",
    ),
    (
        "clamp-empty",
        lambda m, s, t, z: _enter(m, sh.clamp_features(m, s, {}), t),
        InputError,
        "e.g. {123: 5.0}",
    ),
    (
        "clamp-list-not-dict",
        lambda m, s, t, z: _enter(m, sh.clamp_features(m, s, [5]), t),
        InputTypeError,
        "must be a dict {latent id: activation}",
    ),
    # steer / steer_direction
    (
        "steer-nan-coefficient",
        lambda m, s, t, z: _enter(m, sh.steer(m, s, 3, NAN), t),
        InputError,
        "coefficient must be a finite number",
    ),
    (
        "steer-zero-decoder-row",
        lambda m, s, t, z: _enter(m, sh.steer(m, z, 5, 4.0), t),
        InputError,
        "pick another latent, or pass a vector to steer_direction",
    ),
    (
        "steer-several-features",
        lambda m, s, t, z: _enter(m, sh.steer(m, s, [1, 2], 4.0), t),
        InputTypeError,
        "call once per feature",
    ),
    (
        "steer-unknown-mode",
        lambda m, s, t, z: _enter(m, sh.steer(m, s, 3, 1.0, coefficient_mode="rel"), t),
        InputError,
        "one of 'absolute', 'relative'",
    ),
    (
        "steer-relative-without-scale",
        lambda m, s, t, z: _enter(m, sh.steer(m, s, 3, 1.0, coefficient_mode="relative"), t),
        InputError,
        "pass max_activation=..., or tokens=...",
    ),
    (
        "steer-unknown-positions",
        lambda m, s, t, z: _enter(m, sh.steer(m, s, 3, 1.0, positions="first"), t),
        InputError,
        "pass None or 'all', an int, a list of ints",
    ),
    (
        "steer-direction-inf-vector",
        lambda m, s, t, z: _enter(
            m, sh.steer_direction(m, HOOK, torch.full((256,), math.inf), 1.0), t
        ),
        InputError,
        "pass finite numbers",
    ),
    (
        "steer-direction-zero-vector",
        lambda m, s, t, z: _enter(m, sh.steer_direction(m, HOOK, torch.zeros(256), 1.0), t),
        InputError,
        "pass a nonzero vector or normalize=False",
    ),
    (
        "steer-direction-inf-coefficient",
        lambda m, s, t, z: _enter(m, sh.steer_direction(m, HOOK, torch.ones(256), math.inf), t),
        InputError,
        "coefficient must be a finite number",
    ),
    (
        "steer-direction-unknown-hook",
        lambda m, s, t, z: _enter(
            m, sh.steer_direction(m, "blocks.9.hook_resid_post", torch.ones(256), 1.0), t
        ),
        HookNameError,
        "did you mean 'blocks.3.hook_resid_post'",
    ),
    # feature_ablation_effects / feature_attribution
    (
        "ablation-effects-one-token",
        lambda m, s, t, z: sh.feature_ablation_effects(m, s, torch.tensor([[5]]), [3]),
        InputError,
        "pos >= 2]",
    ),
    (
        "ablation-effects-out-of-vocabulary",
        lambda m, s, t, z: sh.feature_ablation_effects(m, s, OOV, [3]),
        InputError,
        "(model.to_tokens)",
    ),
    (
        "ablation-effects-batch-size-0",
        lambda m, s, t, z: sh.feature_ablation_effects(m, s, t, [3], batch_size=0),
        InputError,
        "batch_size must be >= 1",
    ),
    (
        "ablation-effects-list-of-saes",
        lambda m, s, t, z: sh.feature_ablation_effects(m, [s, z], t, [3]),
        InputTypeError,
        "call once per SAE",
    ),
    (
        "ablation-effects-all-bos",
        lambda m, s, t, z: sh.feature_ablation_effects(m, s, ALL_BOS, [3]),
        InputError,
        "exclude_bos=False",
    ),
    (
        "attribution-one-token",
        lambda m, s, t, z: sh.feature_attribution(m, s, torch.tensor([[5]])),
        InputError,
        "pos >= 2]",
    ),
    (
        "attribution-too-long",
        lambda m, s, t, z: sh.feature_attribution(m, s, TOO_LONG),
        InputError,
        "tokens[:, :256]",
    ),
    # top_activating_examples / scan_features / feature_logit_effects / feature_density
    (
        "top-examples-out-of-vocabulary",
        lambda m, s, t, z: sh.top_activating_examples(m, s, OOV, 3),
        InputError,
        "(model.to_tokens)",
    ),
    (
        "top-examples-k-0",
        lambda m, s, t, z: sh.top_activating_examples(m, s, t, 3, k=0),
        InputError,
        "k must be >= 1",
    ),
    (
        "top-examples-float-feature",
        lambda m, s, t, z: sh.top_activating_examples(m, s, t, 1.5),
        InputTypeError,
        "feature must be an integer",
    ),
    (
        "scan-no-features",
        lambda m, s, t, z: sh.scan_features(m, s, t, []),
        InputError,
        "pass at least one latent id",
    ),
    (
        "scan-negative-context",
        lambda m, s, t, z: sh.scan_features(m, s, t, [3], context=-1),
        InputError,
        "context must be >= 0",
    ),
    (
        "logit-effects-k-0",
        lambda m, s, t, z: sh.feature_logit_effects(m, s, 3, k=0),
        InputError,
        "k must be >= 1",
    ),
    (
        "logit-effects-out-of-range",
        lambda m, s, t, z: sh.feature_logit_effects(m, s, 512),
        InputError,
        "(ids 0 … 511)",
    ),
    (
        "density-batch-size-0",
        lambda m, s, t, z: sh.feature_density(m, s, t, batch_size=0),
        InputError,
        "batch_size must be >= 1",
    ),
    (
        "density-text-not-tokens",
        lambda m, s, t, z: sh.feature_density(m, s, "def f(): pass"),
        InputTypeError,
        "tokenize text with model.to_tokens(...)",
    ),
    # steering_sweep
    (
        "sweep-nan-coefficient",
        lambda m, s, t, z: sh.steering_sweep(m, s, 3, [1.0, NAN], "x = 1"),
        InputError,
        "each coefficient must be a finite number",
    ),
    (
        "sweep-one-number",
        lambda m, s, t, z: sh.steering_sweep(m, s, 3, 5.0, "x = 1"),
        InputTypeError,
        "e.g. [0.0, 4.0, 8.0]",
    ),
    (
        "sweep-no-prompts",
        lambda m, s, t, z: sh.steering_sweep(m, s, 3, [1.0], []),
        InputError,
        "pass at least one non-empty prompt",
    ),
    (
        "sweep-zero-new-tokens",
        lambda m, s, t, z: sh.steering_sweep(m, s, 3, [1.0], "x = 1", max_new_tokens=0),
        InputError,
        "max_new_tokens must be >= 1",
    ),
    (
        "sweep-zero-decoder-row",
        lambda m, s, t, z: sh.steering_sweep(m, z, 5, [1.0], "x = 1"),
        InputError,
        "pick another latent",
    ),
]


@pytest.mark.parametrize(("call", "error", "hint"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_raises_a_named_error_saying_what_to_pass(
    model, sae, dead_row_sae, tokens, call, error, hint
):
    before = hook_state(model)
    with pytest.raises(error) as info:
        call(model, sae, tokens, dead_row_sae)
    assert isinstance(info.value, SAEHooksError)
    assert hint in str(info.value), str(info.value)
    assert hook_state(model) == before  # a refused call leaves no hook behind


def test_the_table_covers_every_entry_point():
    names = {c[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 40
    assert {
        "evaluate",
        "loss",
        "ablate",
        "clamp",
        "steer",
        "ablation",
        "attribution",
        "top",
        "scan",
        "logit",
        "density",
        "sweep",
    } <= names


# ---- reasonable inputs keep working -----------------------------------------------------
def test_numpy_feature_ids_work_like_a_list(model, sae, eval_tokens):
    rows = eval_tokens[:2, :24]
    ids = np.array([3, 7])
    listed = sh.feature_ablation_effects(model, sae, rows, [3, 7])
    from_numpy = sh.feature_ablation_effects(model, sae, rows, ids)
    assert from_numpy.index.tolist() == [3, 7]
    assert from_numpy.drop(columns="top_token_effects").equals(
        listed.drop(columns="top_token_effects")
    )
    with interventions.ablate_features(model, sae, [3, 7]):
        want = model(rows)
    with interventions.ablate_features(model, sae, ids):
        got = model(rows)
    with interventions.ablate_features(model, sae, torch.tensor([3, 7])):
        from_tensor = model(rows)
    assert torch.equal(got, want) and torch.equal(from_tensor, want)
    with interventions.clamp_features(model, sae, {np.int64(3): np.float32(2.0)}):
        clamped = model(rows)
    with interventions.clamp_features(model, sae, {3: 2.0}):
        assert torch.equal(model(rows), clamped)


def test_numpy_positions_and_masks_work(model, sae, eval_tokens):
    rows = eval_tokens[:2, :12]
    with interventions.ablate_features(model, sae, [3], positions=[4, 5]):
        want = model(rows)
    for same in (
        np.array([4, 5]),
        torch.tensor([4, 5]),
        slice(4, 6),
        torch.arange(12).ge(4) & torch.arange(12).lt(6),
        np.isin(np.arange(12), [4, 5]),
    ):
        with interventions.ablate_features(model, sae, [3], positions=same):
            assert torch.equal(model(rows), want)
