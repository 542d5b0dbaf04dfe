"""The error term keeps every SAE hook point's edit: each edit moves the model's
activation by exactly what the edited path produces (issue: the error term must not
swallow interventions made before the latents).

Every expected value is computed by hand from the SAE's plain math (encode_pre,
activation, decode: no hooks) on the clean activation, and compared with what the
next block receives when the edit is made through the model's hook API.
"""

import pytest
import torch
from conftest import random_sae

import saehooks as sh

HOOK = "blocks.1.hook_resid_post"
NEXT = "blocks.2.hook_resid_pre"  # receives the spliced activation


def _clean_activation(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


def _spliced_activation(model, sae, tokens, point, edit, use_error_term):
    store = {}

    def read(act, hook):
        store["out"] = act.detach().clone()

    fwd = [(NEXT, read)]
    if point is not None:
        fwd.insert(0, (f"{HOOK}.{point}", edit))
    with torch.no_grad(), sh.attach(model, sae, use_error_term=use_error_term):
        model.run_with_hooks(tokens, fwd_hooks=fwd)
    return store["out"]


def _top_latent(sae, x):
    """Per position, the latent with the largest activation (active for every arch here)."""
    return sae.encode(x).argmax(-1, keepdim=True)


def _edits(sae, x):
    """(hook point, edit function, hand-computed SAE path output before the error term)."""
    j = _top_latent(sae, x)
    shift = torch.linspace(-1.0, 1.0, x.shape[-1])

    def pre_edit(pre, hook):
        return pre.scatter(-1, j, -1e4)

    def post_edit(acts, hook):
        return acts.scatter(-1, j, 0.0)

    def input_edit(x_, hook):
        return 0.5 * x_ + shift

    def recons_edit(r, hook):
        return r + shift

    with torch.no_grad():
        pre = sae.encode_pre(x)
        acts = sae.activation(pre)
        return [
            ("hook_sae_acts_pre", pre_edit, sae.decode(sae.activation(pre.scatter(-1, j, -1e4)))),
            ("hook_sae_acts_post", post_edit, sae.decode(acts.scatter(-1, j, 0.0))),
            ("hook_sae_input", input_edit, sae.decode(sae.encode(0.5 * x + shift))),
            ("hook_sae_recons", recons_edit, sae.decode(acts) + shift),
        ]


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize("use_error_term", [True, False])
def test_an_edit_at_each_hook_point_moves_the_output_by_its_path(
    model, architecture, use_error_term
):
    tokens = sh.load_eval_tokens(2)[:, :24]
    sae = random_sae(architecture=architecture, k=16, hook_name=HOOK, seed=3)
    x = _clean_activation(model, tokens)
    with torch.no_grad():
        error = x - sae.decode(sae.encode(x))
    for point, edit, path in _edits(sae, x):
        expected = path + error if use_error_term else path
        got = _spliced_activation(model, sae, tokens, point, edit, use_error_term)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5, msg=point)


def test_the_error_and_output_hooks(model):
    tokens = sh.load_eval_tokens(2)[:, :24]
    sae = random_sae(architecture="topk", k=16, hook_name=HOOK, seed=4)
    x = _clean_activation(model, tokens)
    with torch.no_grad():
        recons = sae.decode(sae.encode(x))
    got = _spliced_activation(
        model, sae, tokens, "hook_sae_error", lambda e, hook: 2 * e, use_error_term=True
    )
    torch.testing.assert_close(got, recons + 2 * (x - recons), atol=1e-4, rtol=1e-5)
    got = _spliced_activation(
        model,
        sae,
        tokens,
        "hook_sae_output",
        lambda o, hook: torch.zeros_like(o),
        use_error_term=True,
    )
    assert torch.equal(got, torch.zeros_like(got))


def test_no_edit_leaves_the_activation_unchanged_and_both_paths_agree(model):
    """With the error term and no edit the next block gets x; a hook that only reads
    (forcing the recomputed clean path) gives bit-for-bit the same output."""
    tokens = sh.load_eval_tokens(2)[:, :24]
    sae = random_sae(architecture="topk", k=16, hook_name=HOOK, seed=5)
    x = _clean_activation(model, tokens)
    fast = _spliced_activation(model, sae, tokens, None, None, use_error_term=True)
    slow = _spliced_activation(
        model, sae, tokens, "hook_sae_acts_post", lambda a, hook: None, use_error_term=True
    )
    torch.testing.assert_close(fast, x, atol=1e-5, rtol=0)
    assert torch.equal(fast, slow)


def test_the_issue_example_on_the_shipped_topk_sae(model):
    """Shipped TopK SAE at blocks.2: setting each position's strongest latent's
    pre-activation to -1e4 must move the activation (it moved by 2e-6 before)."""
    sae = sh.load_sae("topk-k32-blocks.2.hook_resid_post")
    hook, after = sae.cfg.hook_name, "blocks.3.hook_resid_pre"
    tokens = sh.load_eval_tokens(1)[:, :32]
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook]
    with torch.no_grad():
        pre = sae.encode_pre(x)
        j = sae.activation(pre).argmax(-1, keepdim=True)
        expected_change = sae.decode(sae.activation(pre.scatter(-1, j, -1e4))) - sae.decode(
            sae.activation(pre)
        )
    store = {}
    with torch.no_grad(), sh.attach(model, sae, use_error_term=True):
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (f"{hook}.hook_sae_acts_pre", lambda p, hook: p.scatter(-1, j, -1e4)),
                (after, lambda a, hook: store.setdefault("out", a.clone())),
            ],
        )
    change = store["out"] - x
    torch.testing.assert_close(change, expected_change, atol=1e-3, rtol=1e-4)
    assert change[0, 1:].norm(dim=-1).mean() > 10.0  # a real move, not 2e-6


def test_standalone_forward_uses_the_same_rule():
    sae = random_sae(d_in=32, d_sae=64, architecture="relu", hook_name=HOOK, seed=6)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    sae.use_error_term = True
    handle = sae.hook_sae_input.add_hook(lambda t, hook: 2 * t)
    try:
        out = sae(x)
    finally:
        handle.remove()
    with torch.no_grad():
        expected = sae.decode(sae.encode(2 * x)) + x - sae.decode(sae.encode(x))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
