"""A hook point is one thing whatever it is called; state is restored whatever the
exit order; one model serves one thread at a time."""

import threading

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks import hooks, tl
from saehooks.errors import ConcurrentUseError, DeviceError, InputError
from saehooks.tl import hook_state

HOOK = "blocks.1.hook_resid_post"


# ---- aliases and widths -----------------------------------------------------------------
def test_two_saes_at_two_aliases_of_one_hook_point_are_refused(model):
    a = random_sae(hook_name="blocks.2.hook_resid_post")
    b = random_sae(hook_name="blocks.2.hook_out", seed=1)
    before = hook_state(model)
    with pytest.raises(InputError, match="same hook point"):
        with sh.attach(model, a, b):
            pass
    with sh.attach(model, a), pytest.raises(InputError, match="same hook point"):
        with sh.attach(model, b):
            pass
    assert hook_state(model) == before


def test_an_sae_at_a_canonical_name_splices_like_the_alias(model, small_tokens):
    a = random_sae(hook_name="blocks.2.hook_resid_post")
    b = random_sae(hook_name="blocks.2.hook_out")
    with torch.no_grad():
        with sh.attach(model, a):
            via_alias = model(small_tokens)
        with sh.attach(model, b):
            via_canonical = model(small_tokens)
    assert torch.equal(via_alias, via_canonical)


def test_hook_width_is_the_measured_width_for_every_hook_name(model):
    """Over every hook name of the reference model (aliases and canonical names):
    hook_width equals the last dimension the hook really sees."""
    tokens = sh.load_eval_tokens(1)[:, :3]
    seen = {}
    names = [n for n in model.hook_dict if ".hook_sae_" not in n]
    fwd = []
    for name in names:

        def read(act, hook, name=name):
            seen[name] = act.shape

        fwd.append((name, read))
    with torch.no_grad():
        for name, fn in fwd:  # one at a time: some hooks must be switched on by name
            try:
                model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])
            except ValueError:
                pass
    assert len(seen) > 150
    for name, shape in seen.items():
        if "pattern" in name or "attn_scores" in name or len(shape) < 3:
            continue  # [batch, head, q, k] and token ids [batch, pos] have no width
        assert tl.hook_width(model, name) == shape[-1], name
    assert tl.hook_width(model, "blocks.0.mlp.in.hook_out") == 1024
    assert tl.hook_width(model, "blocks.0.ln2.hook_normalized") == 256
    assert tl.is_per_head(model, "blocks.0.attn.o.hook_in")


@pytest.mark.parametrize(
    "name, d_in",
    [
        ("blocks.0.mlp.in.hook_out", 256),
        ("blocks.0.ln2.hook_normalized", 1024),
        ("blocks.0.mlp.hook_post", 256),
    ],
)
def test_a_wrong_width_sae_is_refused_at_any_name(model, name, d_in):
    sae = random_sae(d_in=d_in, hook_name=name)
    with pytest.raises(InputError, match="does not match the width"):
        with sh.attach(model, sae):
            pass


def test_a_right_width_sae_at_a_canonical_mlp_name_attaches(model, small_tokens):
    sae = random_sae(d_in=1024, hook_name="blocks.0.mlp.in.hook_out")
    with torch.no_grad(), sh.attach(model, sae):
        assert torch.isfinite(model(small_tokens)).all()


# ---- state restored -----------------------------------------------------------------------
def test_error_term_is_restored_whatever_the_exit_order(model, small_tokens):
    """Exiting attach(use_error_term=True) before an inner ablate_features(False)
    used to leave use_error_term=True, after which sae(x) returned x."""
    sae = random_sae(hook_name=HOOK)
    outer = sh.attach(model, sae, use_error_term=True)
    outer.__enter__()
    inner = hooks.error_term(model, sae, False)
    inner.__enter__()
    assert sae.use_error_term is False
    outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    assert sae.use_error_term is False
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert not torch.allclose(sae(x), x, atol=1e-3)


def test_hooks_added_on_sae_points_inside_attach_are_gone_after(model, small_tokens):
    sae = random_sae(hook_name=HOOK)
    with torch.no_grad():
        with sh.attach(model, sae):
            reference = model(small_tokens)
        with sh.attach(model, sae):
            model.add_hook(f"{HOOK}.hook_sae_acts_post", lambda a, hook: torch.zeros_like(a))
            model.reset_hooks()  # TL4 does not reach every SAE hook point this way
            sae.hook_sae_acts_pre.add_hook(lambda a, hook: a * 0, is_permanent=True)
        assert all(not hp.fwd_hooks and not hp._forward_hooks for hp in sae.hook_points().values())
        with sh.attach(model, sae):
            again = model(small_tokens)
    assert torch.equal(reference, again)


def test_reset_hooks_inside_attach_keeps_the_splice(model, small_tokens):
    sae = random_sae(hook_name=HOOK)
    before = hook_state(model)
    with torch.no_grad():
        with sh.attach(model, sae):
            spliced = model(small_tokens)
            model.reset_hooks()
            assert torch.equal(model(small_tokens), spliced)
        assert hook_state(model) == before


def test_the_model_is_unchanged_after_an_exception_inside_attach(model, small_tokens):
    sae = random_sae(hook_name=HOOK)
    before = hook_state(model)
    with torch.no_grad():
        clean = model(small_tokens)
        with pytest.raises(RuntimeError, match="boom"), sh.attach(model, sae):
            raise RuntimeError("boom")
        assert torch.equal(model(small_tokens), clean)
    assert hook_state(model) == before and hooks.attachments(model) == []


# ---- threads ------------------------------------------------------------------------------
def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, name="other")
    thread.start()
    thread.join(timeout=120)
    return box


def test_a_plain_forward_from_another_thread_inside_attach_raises(model, small_tokens):
    sae = random_sae(hook_name=HOOK)
    with torch.no_grad():
        clean = model(small_tokens)
        with sh.attach(model, sae):
            box = _in_thread(lambda: model(small_tokens))
        assert isinstance(box.get("error"), ConcurrentUseError)
        assert "one thread at a time" in str(box["error"])
        # after the block, other threads may use the model again
        box = _in_thread(lambda: model(small_tokens))
    assert torch.equal(box["value"], clean)


def test_attach_from_another_thread_while_one_holds_the_model_raises(model):
    a = random_sae(hook_name=HOOK)
    b = random_sae(hook_name="blocks.2.hook_resid_post")

    def other():
        with sh.attach(model, b):
            pass

    with sh.attach(model, a):
        box = _in_thread(other)
    assert isinstance(box.get("error"), ConcurrentUseError)
    assert hooks.attachments(model) == []


# ---- devices ------------------------------------------------------------------------------
def test_a_device_that_does_not_exist_is_named(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="not available: this machine has 'cpu'"):
        sh.load_model(device="cuda")


def test_sae_encode_on_the_wrong_width_says_which_width():
    sae = random_sae(d_in=32, d_sae=64, hook_name=HOOK)
    with pytest.raises(InputError, match=r"d_in=32.*got shape \(3, 31\)"):
        sae.encode(torch.zeros(3, 31))


def test_evaluate_from_a_second_thread_while_one_runs_raises(model):
    """Two threads evaluating on one model gave a silently wrong report; now the second
    is refused while the first holds the model, and the first's report is right."""
    sae = random_sae(hook_name=HOOK)
    tokens = sh.load_eval_tokens(2)[:, :32]
    expected = sh.evaluate(model, sae, tokens)
    started, release = threading.Event(), threading.Event()

    def slow_read(act, hook):
        started.set()
        release.wait(timeout=60)

    def first():
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", slow_read)]):
            return sh.evaluate(model, sae, tokens)

    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("report", first()))
    thread.start()
    started.wait(timeout=60)
    try:
        with pytest.raises(ConcurrentUseError):
            sh.evaluate(model, sae, tokens)
    finally:
        release.set()
        thread.join(timeout=120)
    assert box["report"].ce_loss_spliced == pytest.approx(expected.ce_loss_spliced, rel=1e-6)


# ---- SAEs that stay attached (SAELens' add_sae habit) --------------------------------------
def test_add_sae_stays_until_reset_and_survives_reset_hooks(model, small_tokens):
    a = random_sae(hook_name=HOOK)
    b = random_sae(hook_name="blocks.2.hook_resid_post", seed=1)
    before = hook_state(model)
    with torch.no_grad():
        clean = model(small_tokens)
        with sh.attach(model, a, b):
            both = model(small_tokens)
        with sh.attach(model, b):
            only_b = model(small_tokens)
        sh.add_sae(model, a)
        sh.add_sae(model, b)
        try:
            assert sh.attached_saes(model) == [a, b]
            model.reset_hooks()
            assert torch.equal(model(small_tokens), both)
            sh.reset_saes(model, a)
            assert torch.equal(model(small_tokens), only_b)
            with pytest.raises(InputError, match="was not added with saehooks.add_sae"):
                sh.reset_saes(model, a)
        finally:
            sh.reset_saes(model)
        assert torch.equal(model(small_tokens), clean)
    assert hook_state(model) == before and sh.attached_saes(model) == []


def test_steer_several_features_adds_the_sum_of_their_vectors(model, small_tokens):
    sae = random_sae(hook_name=HOOK)
    store = {}

    def read(act, hook):
        store.setdefault("acts", []).append(act.detach().clone())

    with torch.no_grad():
        model.run_with_hooks(small_tokens, fwd_hooks=[(HOOK, read)])
        with sh.steer(model, sae, {3: 2.0, 7: -1.5}):
            model.run_with_hooks(small_tokens, fwd_hooks=[(HOOK, read)])
    clean, steered = store["acts"]
    unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    expected = clean + 2.0 * unit[3] - 1.5 * unit[7]
    torch.testing.assert_close(steered, expected.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="coefficients in the dict only"):
        with sh.steer(model, sae, {3: 2.0}, coefficient=1.0):
            pass


def test_a_hook_that_carries_no_activation_is_refused(model, tmp_path):
    """blocks.2.hook_attn_in exists but is empty until use_attn_in is switched on: an SAE
    there never ran (attach) or gave a raw TransformerLens error (evaluate, train)."""
    sae = random_sae(hook_name="blocks.2.hook_attn_in")
    with pytest.raises(sh.HookNameError, match="carries no activation.*set_use_attn_in"):
        with sh.attach(model, sae):
            pass
    cfg = sh.TrainConfig(
        hook_name="blocks.2.hook_attn_in",
        architecture="topk",
        k=4,
        d_sae=64,
        total_tokens=1024,
        batch_size=256,
        out_dir=str(tmp_path),
    )
    with pytest.raises(sh.HookNameError, match="carries no activation"):
        sh.train_sae(model, sh.load_eval_tokens(2), cfg)
    cfg = sh.TrainConfig(
        hook_name="blocks.2.attn.hook_z",
        architecture="topk",
        k=4,
        d_sae=64,
        total_tokens=1024,
        batch_size=256,
        out_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match="per-head activations.*hook_attn_out"):
        sh.train_sae(model, sh.load_eval_tokens(2), cfg)


def test_use_error_term_must_be_a_bool(model):
    with pytest.raises(sh.InputTypeError, match="use_error_term"):
        with sh.attach(model, random_sae(hook_name=HOOK), use_error_term="no"):
            pass
