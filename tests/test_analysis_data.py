"""saehooks.data: capture (the one way activations are read), sae_acts, replace_where and
the BOS mask, against plain TransformerLens calls written here."""

from __future__ import annotations

import pytest
import torch
from conftest import random_sae

from saehooks import data
from saehooks.tl import hook_state

NAMES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def rows(eval_tokens):
    return eval_tokens[:2, :12].clone()


def test_capture_equals_run_with_cache_and_stops_early(model, rows):
    before = hook_state(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(rows, names_filter=lambda n: n in NAMES)
        got_logits, acts = data.capture(model, rows, NAMES)
        stopped_logits, stopped = data.capture(model, rows, NAMES, stop=True)
        one_logits, one = data.capture(model, rows, NAMES[0])
    assert torch.equal(got_logits, logits) and torch.equal(one_logits, logits)
    assert list(acts) == NAMES and stopped_logits is None
    for name in NAMES:
        assert torch.equal(acts[name], cache[name]) and torch.equal(stopped[name], cache[name])
    assert acts[NAMES[1]].shape == (2, 12, 4, 64)  # per-head [batch, pos, n_heads, d_head]
    assert torch.equal(one, cache[NAMES[0]])
    assert hook_state(model) == before


def test_capture_stops_only_where_it_can(model, rows):
    """Stopping after block 1 skips blocks 2 and 3 (a hook there never runs); a hook in
    the last block or outside the blocks runs the whole model and still gives no logits."""
    calls = []

    def count(act, hook):
        calls.append("block 3")

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.3.hook_resid_post", count)]):
        data.capture(model, rows, "blocks.1.hook_resid_post", stop=True)
        assert calls == []
        logits, act = data.capture(model, rows, "blocks.3.hook_resid_post", stop=True)
        assert calls == ["block 3"] and logits is None
        _, act = data.capture(model, rows, ["hook_embed", "blocks.0.hook_resid_post"], stop=True)
        assert calls == ["block 3"] * 2


def test_sae_acts_is_the_encoded_activation(model, rows):
    sae = random_sae(hook_name="blocks.1.hook_resid_post", seed=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter=sae.cfg.hook_name)
        want = sae.encode(cache[sae.cfg.hook_name])
    assert torch.equal(data.sae_acts(model, sae, rows), want)


def test_replace_where_and_the_bos_mask(model, rows):
    mask = data.position_mask(model, rows)
    # BOS (token 0) opens each row and separates documents: row 0 has it at 0 and 1
    assert mask.tolist() == [[False, False] + [True] * 10, [False] + [True] * 11]
    assert data.position_mask(model, rows, exclude_bos=False).all()
    act = torch.arange(2 * 12 * 3, dtype=torch.float32).reshape(2, 12, 3) + 1
    zeroed = data.replace_where(mask, 0.0)(act)
    assert torch.equal(zeroed != 0, ~mask[..., None].expand(2, 12, 3))
    assert torch.equal(zeroed[~mask], act[~mask])
    mean = torch.tensor([1.0, 2.0, 3.0])
    meaned = data.replace_where(mask, mean)(act)
    assert torch.equal(meaned[mask], mean.expand(21, 3)) and torch.equal(meaned[~mask], act[~mask])
    heads = torch.randn(2, 12, 4, 5)  # per-head: the mask selects positions across heads
    out = data.replace_where(mask, 0.0)(heads)
    assert torch.equal(out[~mask], heads[~mask]) and (out[mask] == 0).all()
    half = torch.float16
    assert data.replace_where(mask, mean)(act.to(half)).dtype == half


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_iter_batches_cover_the_rows_once_in_order(batch_size):
    tokens = torch.arange(5 * 4).reshape(5, 4)
    got = list(data.iter_batches(tokens, batch_size))
    assert [start for start, _ in got] == list(range(0, 5, batch_size))
    assert torch.equal(torch.cat([b for _, b in got]), tokens)
