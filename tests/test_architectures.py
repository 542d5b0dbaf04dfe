"""saehooks on every architecture of tests/arch_fixtures.py (issue 13, "Architectures").

Tiny random-weight GPT-2, GPT-NeoX (Pythia), Llama, Gemma 2, Gemma 3, Qwen3 and Mistral
models are built offline, loaded by ``sh.load_model`` and checked against the Hugging
Face model they came from and against hand-computed SAE edits: hooks at every SAE hook
name, the error-term splice, evaluate, ablate, steer with cached generation, training,
a bridge without compatibility mode, and bf16.

With TransformerLens 4 the models are ``TransformerBridge``s. With TransformerLens 3 the
same tests run on ``HookedTransformer`` for the architectures it loads from a local
folder (all but Gemma 2 and 3, which must raise a clear error there); the tests of
bridge-only features (canonical names, no compatibility mode) are skipped.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from arch_fixtures import (
    ARCHITECTURES,
    BOS_ID,
    D_HEAD,
    D_MODEL,
    N_HEADS,
    build_hf_model,
    build_model_dir,
)

import saehooks as sh
from saehooks import tl
from saehooks.errors import HookNameError
from saehooks.hooks import ProcessingMismatchWarning

TL4 = (tl.tl_major_version() or 0) >= 4
bridge_only = pytest.mark.skipif(not TL4, reason="a TransformerLens 4 bridge feature")
TL3_CANNOT_LOAD = {"gemma2", "gemma3"}
"""Architectures TransformerLens 3 knows only by official hub names, not from a folder."""

ARCHS = list(ARCHITECTURES)
SAE_HOOKS = (
    "hook_resid_pre",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "mlp.hook_post",
    "attn.hook_z",
)
"""The hook names SAEs are published for; every fixture architecture has all of them."""
D_MLP = {"gpt2": 4 * D_MODEL, "pythia": 256}  # the others: intermediate_size 128
CANONICAL = {
    "hook_resid_pre": "hook_in",
    "hook_resid_post": "hook_out",
    "mlp.hook_post": "mlp.out.hook_in",
    "attn.hook_z": "attn.o.hook_in",
}
"""TransformerLens 4 canonical names of classic hooks (same on every fixture)."""


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def arch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("arch_models")


@pytest.fixture(scope="session")
def load(arch_root):
    """``load(arch, compat=True, dtype=fp32)``: the fixture model through
    ``sh.load_model``, loaded once per session."""
    cache: dict = {}

    def get(arch: str, compat: bool = True, dtype: torch.dtype = torch.float32):
        key = (arch, compat, dtype)
        if not TL4 and arch in TL3_CANNOT_LOAD:
            pytest.skip(
                f"TransformerLens 3 cannot load {arch} from a folder (see "
                "test_tl3_refuses_a_local_gemma_with_a_clear_error)"
            )
        assert TL4 or compat, "TransformerLens 3 has no bridge without compatibility mode"
        if key not in cache:
            folder = build_model_dir(arch_root, arch, dtype)
            cache[key] = sh.load_model(folder, compatibility_mode=compat, dtype=dtype)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def hf_model():
    cache: dict = {}

    def get(arch: str, dtype: torch.dtype = torch.float32):
        if (arch, dtype) not in cache:
            cache[arch, dtype] = build_hf_model(arch, dtype)
        return cache[arch, dtype]

    return get


def tokens(n_seq: int = 4, n_pos: int = 16, seed: int = 1) -> torch.Tensor:
    """``[n_seq, n_pos]`` random ids in 2..299, BOS at position 0."""
    out = torch.randint(2, 300, (n_seq, n_pos), generator=torch.Generator().manual_seed(seed))
    out[:, 0] = BOS_ID
    return out


def random_sae(d_in: int, hook_name: str, d_sae: int = 128, k: int = 8, seed: int = 0) -> sh.SAE:
    """TopK SAE with unit-norm random decoder rows, encoder = decoder transpose."""
    sae = sh.SAE(
        sh.SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, hook_name=hook_name)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
    return sae


def identity_sae(d_in: int, hook_name: str, shift: float) -> sh.SAE:
    """ReLU SAE with W_enc = W_dec = I and b_dec = -shift: for inputs above ``-shift``
    (every one when ``shift > max|x|``) ``decode(encode(x)) = relu(x + shift) - shift = x``."""
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=d_in, architecture="relu", hook_name=hook_name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d_in))
        sae.W_dec.copy_(torch.eye(d_in))
        sae.b_enc.zero_()
        sae.b_dec.fill_(-shift)
    return sae


def activation(model, toks: torch.Tensor, name: str) -> torch.Tensor:
    """The activation at ``name`` (after any SAE spliced there), ``[batch, pos, ...]``."""
    _, cache = model.run_with_cache(toks, names_filter=[name])
    return cache[name]


def width(arch: str, hook: str) -> int:
    if hook == "attn.hook_z":
        return D_HEAD
    return D_MLP.get(arch, 128) if hook == "mlp.hook_post" else D_MODEL


def reference_ce(logits: torch.Tensor, toks: torch.Tensor) -> float:
    """Mean next-token cross entropy over positions that do not hold BOS (by hand)."""
    logp = logits.double().log_softmax(-1)[:, :-1]
    nll = -logp.gather(-1, toks[:, 1:, None]).squeeze(-1)
    return float(nll[toks[:, :-1] != BOS_ID].mean())


# ---- loading -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_loads_through_the_bridge_with_the_hf_models_outputs(arch, load, hf_model):
    if TL4:
        from transformer_lens.model_bridge import TransformerBridge as Backend
    else:
        from transformer_lens import HookedTransformer as Backend

    toks = tokens()
    with torch.no_grad():
        expected = hf_model(arch)(toks).logits.log_softmax(-1)
        for compat in (True, False) if TL4 else (True,):
            model = load(arch, compat)
            assert isinstance(model, Backend)
            assert tl.architecture_name(model) == ARCHITECTURES[arch].hf_architecture
            assert tl.model_processing(model)["compatibility_mode"] is compat
            # compatibility mode folds LayerNorm and centres the unembedding: logits move
            # by a per-position constant, log-probabilities stay
            got = model(toks).log_softmax(-1)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    text = model.to_tokens("def forward(self, x):")
    assert text.ndim == 2 and text.shape[1] >= 5 and int(text.max()) < 512


# ---- hooks and the splice ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_every_sae_hook_splices_and_the_error_term_gives_clean_logits(arch, load):
    model = load(arch)
    toks = tokens()
    with torch.no_grad():
        clean = model(toks)
        for layer in range(2):
            for hook in SAE_HOOKS:
                name = f"blocks.{layer}.{hook}"
                d_in = width(arch, hook)
                assert tl.hook_width(model, name) == d_in, name
                assert tl.is_per_head(model, name) == (hook == "attn.hook_z")
                x = activation(model, toks, name)
                assert x.shape[2:] == ((N_HEADS, D_HEAD) if hook == "attn.hook_z" else (d_in,))
                sae = random_sae(d_in, name)
                with sh.attach(model, sae, use_error_term=True):
                    torch.testing.assert_close(model(toks), clean, atol=1e-4, rtol=0)
                with sh.attach(model, sae):  # the splice is live: the reconstruction is used
                    spliced = model(toks)
                    torch.testing.assert_close(
                        activation(model, toks, name), sae(x).to(x.dtype), atol=1e-5, rtol=0
                    )
                assert (spliced - clean).abs().max() > 1e-2, name
                ident = identity_sae(d_in, name, shift=float(x.abs().max()) + 1.0)
                with sh.attach(model, ident):
                    torch.testing.assert_close(model(toks), clean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluate_gives_score_one_for_the_identity_and_the_clean_loss_by_hand(arch, load, hf_model):
    model = load(arch)
    toks = tokens(8)
    name = "blocks.0.hook_resid_post"
    x = activation(model, toks, name)
    report = sh.evaluate(
        model, identity_sae(D_MODEL, name, float(x.abs().max()) + 1.0), toks, progress=False
    )
    with torch.no_grad():
        ce_clean = reference_ce(hf_model(arch)(toks).logits, toks)
    assert report.ce_loss_clean == pytest.approx(ce_clean, abs=1e-5)
    assert report.ce_loss_spliced == pytest.approx(ce_clean, abs=1e-5)
    assert report.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    assert report.fvu == pytest.approx(0.0, abs=1e-8)
    assert report.kl_div == pytest.approx(0.0, abs=1e-6)
    assert report.l0 == D_MODEL  # every shifted input is positive
    for hook, d_in in (("blocks.1.hook_mlp_out", D_MODEL), ("blocks.1.attn.hook_z", D_HEAD)):
        rep = sh.evaluate(model, random_sae(d_in, hook), toks, progress=False)
        values = [v for v in rep.to_dict().values() if isinstance(v, float)]
        assert values and all(math.isfinite(v) for v in values), rep
        assert rep.l0 == 8.0  # top-k with k = 8
        assert rep.ce_loss_clean == pytest.approx(ce_clean, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_ablating_a_feature_moves_the_stream_by_its_decoder_row(arch, load):
    model = load(arch)
    toks = tokens()
    name, after = "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"
    sae = random_sae(D_MODEL, name)
    with torch.no_grad():
        x = activation(model, toks, name)
        acts = sae.encode(x)
        feature = int((acts > 0).sum((0, 1)).argmax())  # the most often active one
        clean = activation(model, toks, after)
        with sh.ablate_features(model, sae, [feature]):
            ablated = activation(model, toks, after)
    expected = -acts[..., feature, None] * sae.W_dec[feature]
    assert (acts[..., feature] > 0).any()
    torch.testing.assert_close(ablated - clean, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_steering_adds_the_direction_and_cached_generation_equals_uncached(arch, load):
    model = load(arch)
    sae = random_sae(D_MODEL, "blocks.0.hook_resid_post")
    feature, coefficient = 3, 20.0
    toks = tokens(2)
    gen = dict(max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
    with torch.no_grad():
        clean = activation(model, toks, "blocks.1.hook_resid_pre")
        plain = [
            model.generate("def forward(self", use_past_kv_cache=c, **gen) for c in (True, False)
        ]
        with sh.steer(model, sae, feature=feature, coefficient=coefficient):
            steered_act = activation(model, toks, "blocks.1.hook_resid_pre")
            steered = [
                model.generate("def forward(self", use_past_kv_cache=c, **gen)
                for c in (True, False)
            ]
    direction = sae.W_dec[feature] / sae.W_dec[feature].norm()
    torch.testing.assert_close(
        steered_act - clean, (coefficient * direction).expand_as(clean), atol=1e-4, rtol=0
    )
    assert torch.equal(plain[0], plain[1])
    assert torch.equal(steered[0], steered[1])
    assert steered[0].shape[1] == plain[0].shape[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_train_sae_50_steps_and_the_loss_falls(arch, load, tmp_path):
    model = load(arch)
    train_tokens = tokens(256, 32, seed=2)
    cfg = sh.TrainConfig(
        hook_name="blocks.0.hook_resid_post",
        architecture="topk",
        d_sae=128,
        k=8,
        total_tokens=50 * 64,
        batch_size=64,
        lr=3e-3,
        dead_window_tokens=1024,
        checkpoint_every_tokens=0,
        log_every_steps=5,
        buffer_tokens=1024,
        model_batch_rows=32,
        init_tokens=512,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(tmp_path / "run"),
        seed=0,
        context_size=32,
    )
    sae = sh.train_sae(model, train_tokens, cfg)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps[-1] == 50 and steps == sorted(steps) and len(steps) >= 10  # every 5 steps
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post" and sae.cfg.d_in == D_MODEL
    assert sae.cfg.metadata["model_processing"]["compatibility_mode"] is True


# ---- hook names ----------------------------------------------------------------------------
@bridge_only
@pytest.mark.parametrize("arch", ARCHS)
def test_classic_and_canonical_names_map_to_one_hook_point(arch, load):
    for compat in (True, False):
        model = load(arch, compat)
        for name in tl.hook_dict(model):
            classic = tl.classic_hook_name(model, name)
            canonical = tl.canonical_hook_name(model, name)
            point = tl.hook_point(model, name)
            assert tl.hook_point(model, classic) is point
            assert tl.hook_point(model, canonical) is point
            assert tl.classic_hook_name(model, canonical) == classic
        for layer in range(2):
            for classic, canonical in CANONICAL.items():
                assert (
                    tl.classic_hook_name(model, f"blocks.{layer}.{canonical}")
                    == f"blocks.{layer}.{classic}"
                )
                assert (
                    tl.canonical_hook_name(model, f"blocks.{layer}.{classic}")
                    == f"blocks.{layer}.{canonical}"
                )
    # which canonical hook is mlp.hook_pre depends on the MLP: gated or not
    gated = arch not in ("gpt2", "pythia")
    assert tl.canonical_hook_name(model, "blocks.0.mlp.hook_pre") == (
        "blocks.0.mlp.gate.hook_out" if gated else "blocks.0.mlp.in.hook_out"
    )


@bridge_only
@pytest.mark.parametrize("arch", ARCHS)
def test_a_bridge_without_compatibility_mode_takes_both_names(arch, load, hf_model):
    model = load(arch, compat=False)
    toks = tokens()
    with torch.no_grad():
        clean = model(toks)
        torch.testing.assert_close(clean, hf_model(arch)(toks).logits, atol=1e-4, rtol=0)
        for hook in SAE_HOOKS:
            classic = f"blocks.1.{hook}"
            canonical = tl.canonical_hook_name(model, classic)
            assert canonical != classic
            d_in = width(arch, hook)
            out = {}
            for name in (classic, canonical):
                sae = random_sae(d_in, name)
                with sh.attach(model, sae, use_error_term=True):
                    torch.testing.assert_close(model(toks), clean, atol=1e-4, rtol=0)
                with sh.attach(model, sae):
                    out[name] = model(toks)
            torch.testing.assert_close(out[classic], out[canonical], atol=0, rtol=0)
            assert (out[classic] - clean).abs().max() > 1e-2
    name = tl.canonical_hook_name(model, "blocks.0.hook_resid_post")
    x = activation(model, toks, name)
    report = sh.evaluate(
        model, identity_sae(D_MODEL, name, float(x.abs().max()) + 1.0), toks, progress=False
    )
    assert report.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    assert report.fvu == pytest.approx(0.0, abs=1e-8)


@bridge_only
def test_an_sae_moves_between_bridges_with_and_without_compatibility_mode(load, tmp_path):
    compat, plain = load("llama"), load("llama", compat=False)
    toks = tokens()
    sae = random_sae(D_HEAD, "blocks.1.attn.hook_z")
    sae.save(str(tmp_path / "sae"))
    loaded = sh.load_sae(str(tmp_path / "sae"))
    assert loaded.cfg.hook_name == "blocks.1.attn.hook_z"
    for model in (compat, plain):
        with torch.no_grad():
            clean = model(toks)
            x = activation(model, toks, "blocks.1.attn.o.hook_in")
            _, cache = sh.run_with_cache_with_saes(model, toks, loaded, use_error_term=True)
        torch.testing.assert_close(
            cache["blocks.1.attn.hook_z.hook_sae_acts_post"], loaded.encode(x), atol=1e-5, rtol=0
        )
        with torch.no_grad():
            torch.testing.assert_close(
                sh.run_with_saes(model, toks, loaded, use_error_term=True), clean, atol=1e-4, rtol=0
            )


@bridge_only
def test_training_on_a_canonical_name_stores_the_classic_one(load, tmp_path):
    model = load("llama", compat=False)
    cfg = sh.TrainConfig(
        hook_name="blocks.0.hook_out",
        architecture="topk",
        d_sae=64,
        k=4,
        total_tokens=4 * 64,
        batch_size=64,
        checkpoint_every_tokens=0,
        buffer_tokens=256,
        init_tokens=256,
        model_batch_rows=32,
        matmul_dtype="float32",
        progress_bar=False,
        context_size=32,
        out_dir=str(tmp_path / "run"),
    )
    sae = sh.train_sae(model, tokens(64, 32, seed=3), cfg)
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    assert sae.cfg.metadata["model_processing"]["compatibility_mode"] is False
    toks = tokens()
    with torch.no_grad():
        clean = model(toks)
        _, cache = sh.run_with_cache_with_saes(model, toks, sae, use_error_term=True)
    assert "blocks.0.hook_resid_post.hook_sae_acts_post" in cache
    # on a bridge in compatibility mode the name fits; the processing differs, and says so
    with pytest.warns(
        ProcessingMismatchWarning, match="compatibility_mode: SAE False vs model True"
    ):
        with sh.attach(load("llama"), sae):
            pass
    torch.testing.assert_close(
        sh.run_with_saes(model, toks, sae, use_error_term=True), clean, atol=1e-4, rtol=0
    )


def test_a_hook_transformerlens_lacks_names_the_architecture_and_the_hook(load, tmp_path):
    pythia, gpt2 = load("pythia"), load("gpt2")
    sae = random_sae(D_MODEL, "blocks.0.hook_resid_mid")
    with pytest.raises(
        HookNameError,
        match=r"'blocks\.0\.hook_resid_mid' not found on this "
        r"GPTNeoXForCausalLM model; attention and MLP read the same residual "
        r"stream in parallel",
    ):
        with sh.attach(pythia, sae):
            pass
    with sh.attach(load("llama"), sae):  # sequential blocks have it
        pass
    with pytest.raises(
        HookNameError,
        match=r"'blocks\.1\.attn\.hook_rot_q' not found on this "
        r"GPT2LMHeadModel model",
    ):
        sh.train_sae(
            gpt2,
            tokens(8, 16),
            sh.TrainConfig(hook_name="blocks.1.attn.hook_rot_q", out_dir=str(tmp_path)),
        )
    assert "blocks.1.attn.hook_rot_q" in tl.hook_dict(load("llama"))  # rotary models do


@pytest.mark.skipif(TL4, reason="TransformerLens 3 only")
@pytest.mark.parametrize("arch", sorted(TL3_CANNOT_LOAD))
def test_tl3_refuses_a_local_gemma_with_a_clear_error(arch, arch_root):
    from saehooks.errors import InputError

    folder = build_model_dir(arch_root, arch)
    with pytest.raises(
        InputError,
        match=f"TransformerLens 3 cannot load the local model .*"
        f"{ARCHITECTURES[arch].hf_architecture}.*install TransformerLens 4",
    ):
        sh.load_model(folder)


# ---- bf16 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_loads_splices_and_evaluates(arch, load, hf_model):
    model = load(arch, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    toks = tokens()
    with torch.no_grad():
        clean = model(toks)
        expected = hf_model(arch, torch.bfloat16)(toks).logits
        torch.testing.assert_close(
            clean.float().log_softmax(-1), expected.float().log_softmax(-1), atol=5e-2, rtol=0
        )
        for hook in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"):
            d_in = width(arch, hook.split(".", 2)[2])
            for dtype in (torch.float32, torch.bfloat16):
                sae = random_sae(d_in, hook).to(dtype)
                with sh.attach(model, sae, use_error_term=True):
                    out = model(toks)
                assert out.dtype == torch.bfloat16
                torch.testing.assert_close(out.float(), clean.float(), atol=5e-2, rtol=0)
    name = "blocks.1.hook_resid_post"
    x = activation(model, toks, name)
    ident = identity_sae(D_MODEL, name, float(x.abs().max()) + 1.0)
    report = sh.evaluate(model, ident, toks, progress=False)
    assert report.ce_loss_score == pytest.approx(1.0, abs=1e-2)
    report = sh.evaluate(model, random_sae(D_MODEL, name).to(torch.bfloat16), toks, progress=False)
    assert all(math.isfinite(v) for v in report.to_dict().values() if isinstance(v, float))
