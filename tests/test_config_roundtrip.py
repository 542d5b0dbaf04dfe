"""A config either means one SAE or is refused, and save + load never changes an SAE.

Issue #10 part 3 and #11 part 3: every combination of architecture x option x dtype x
writable format either raises at ``SAEConfig`` construction (meaningless), is refused
by the writer (the format cannot express it), or round-trips with ``forward``,
``encode``, every tensor and the whole config bit-for-bit equal.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saehooks as sh
from saehooks.errors import DeviceError, InputError, InputTypeError, SAEHooksError
from saehooks.io import save_sae

ARCHS = ("relu", "topk", "jumprelu", "gated")
DTYPES = ("float32", "bfloat16", "float16", "float64")
FORMATS = ("saelens", "sparsify")
D_IN, D_SAE, K = 12, 40, 5


def filled_sae(cfg: sh.SAEConfig, seed: int = 0) -> sh.SAE:
    """An SAE whose every tensor matters: random weights, uneven decoder norms,
    thresholds that cut some latents, a feature density."""
    sae = sh.SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.4 * torch.randn(param.shape, generator=gen))
        scale = torch.linspace(0.3, 3.0, cfg.d_sae, dtype=torch.float64)[:, None]
        sae.W_dec.mul_(scale.to(sae.W_dec.dtype))
        if cfg.architecture == "jumprelu":
            sae.threshold.copy_(0.3 * torch.rand(cfg.d_sae, generator=gen))
        if cfg.architecture == "gated":
            sae.b_enc.zero_()  # not a parameter of SAELens' gated SAE (unused by forward)
    sae.feature_density = torch.rand(cfg.d_sae, generator=gen) * 0.5 + 1e-3
    return sae


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, NaN where the other is NaN (0/0 of an all-zero decoder row
    with rescaling gives NaN in both)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    )


def assert_same_sae(back: sh.SAE, sae: sh.SAE, x: torch.Tensor) -> None:
    """cfg, every tensor, encode, forward (with and without the error term) identical."""
    assert back.cfg == sae.cfg
    assert back.state_dict().keys() == sae.state_dict().keys()
    for name, value in sae.state_dict().items():
        assert back.state_dict()[name].dtype == value.dtype, name
        assert torch.equal(back.state_dict()[name], value), name
    assert identical(back.encode(x), sae.encode(x))
    assert identical(back(x), sae(x))
    back.use_error_term = sae.use_error_term = True
    try:
        assert identical(back(x), sae(x))
    finally:
        back.use_error_term = sae.use_error_term = False


def make_cfg(architecture: str, apply_b_dec: bool, rescale: bool, dtype: str) -> sh.SAEConfig:
    return sh.SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        k=K if architecture == "topk" else None,
        hook_name="blocks.1.hook_resid_post",
        apply_b_dec_to_input=apply_b_dec,
        rescale_acts_by_decoder_norm=rescale,
        dtype=dtype,
        metadata={
            "model_name": "reference-lm",
            "context_size": 64,
            "training": {"tokens": 1000, "betas": [0.9, 0.999], "note": None, "flag": False},
        },
    )


CASES = list(itertools.product(ARCHS, (True, False), (False, True), DTYPES, FORMATS))


@pytest.mark.parametrize(("architecture", "apply_b_dec", "rescale", "dtype", "fmt"), CASES)
def test_every_combination_is_refused_or_round_trips_exactly(
    tmp_path, architecture, apply_b_dec, rescale, dtype, fmt
):
    if rescale and architecture != "topk":  # no file format stores it: meaningless
        with pytest.raises(InputError, match="rescale_acts_by_decoder_norm.*top-k option"):
            make_cfg(architecture, apply_b_dec, rescale, dtype)
        return
    sae = filled_sae(make_cfg(architecture, apply_b_dec, rescale, dtype))
    folder = tmp_path / "sae"
    if fmt == "sparsify" and (architecture != "topk" or rescale or not apply_b_dec):
        with pytest.raises(InputError, match="sparsify"):
            save_sae(sae, folder, format=fmt)
        assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
        return
    save_sae(sae, folder, format=fmt)
    back = sh.load_sae(folder)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1)).to(sae.dtype)
    assert sae.encode(x).count_nonzero() > 0
    assert_same_sae(back, sae, x)
    if fmt == "saelens":
        assert torch.allclose(back.feature_density, sae.feature_density, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_the_issue_jumprelu_with_rescaling_is_refused_at_construction():
    # accepted before: the SAELens writer then dropped the flag and the output changed
    with pytest.raises(InputError, match="fold_W_dec_norm"):
        sh.SAEConfig(d_in=8, d_sae=16, architecture="jumprelu", rescale_acts_by_decoder_norm=True)
    cfg = sh.SAEConfig(d_in=8, d_sae=16, architecture="jumprelu")
    with pytest.raises(InputError, match="top-k option"):
        cfg.replace(rescale_acts_by_decoder_norm=True)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated"])
def test_k_on_an_architecture_without_k_is_refused(architecture):
    with pytest.raises(InputError, match=r"SAEConfig.k=32 is only used by architecture='topk'"):
        sh.SAEConfig(d_in=8, d_sae=64, architecture=architecture, k=32)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_sae", "4096", r"SAEConfig.d_sae must be an integer, got '4096'; pass int\('4096'\)"),
        ("d_sae", 4096.9, r"SAEConfig.d_sae must be an integer, got 4096.9"),
        ("d_sae", 4096.0, r"SAEConfig.d_sae must be an integer, got 4096.0"),
        ("d_sae", True, r"SAEConfig.d_sae must be an integer, got True"),
        ("d_in", None, r"SAEConfig.d_in must be an integer, got None"),
        ("k", "32", r"SAEConfig.k must be an integer"),
        ("k", 32.0, r"SAEConfig.k must be an integer"),
        ("apply_b_dec_to_input", "false", r"SAEConfig.apply_b_dec_to_input must be True or False"),
        ("rescale_acts_by_decoder_norm", 0, r"SAEConfig.rescale_acts_by_decoder_norm must be True"),
        ("hook_name", 3, r"SAEConfig.hook_name must be a string"),
        ("metadata", [("a", 1)], r"SAEConfig.metadata must be a dict"),
        ("dtype", 32, r"torch.dtype or its name"),
    ],
)
def test_fields_are_type_checked_at_construction(field, value, message):
    kw = {"d_in": 8, "d_sae": 4096, "architecture": "topk", "k": 32} | {field: value}
    with pytest.raises(InputTypeError, match=message):
        sh.SAEConfig(**kw)


def test_numpy_and_tensor_integers_are_sizes():
    np = pytest.importorskip("numpy")
    cfg = sh.SAEConfig(d_in=np.int64(8), d_sae=torch.tensor(16), architecture="topk", k=np.int32(4))
    assert (cfg.d_in, cfg.d_sae, cfg.k) == (8, 16, 4)
    assert all(type(v) is int for v in (cfg.d_in, cfg.d_sae, cfg.k))


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_a_missing_cuda_device_is_a_device_error(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(
        DeviceError,
        match=r"SAEConfig.device='cuda' is not available: this "
        r"machine has 'cpu'",
    ):
        sh.SAEConfig(d_in=8, d_sae=16, device="cuda")


def test_load_sae_on_a_missing_cuda_device_is_a_device_error(tmp_path, monkeypatch):
    sae = filled_sae(make_cfg("relu", True, False, "float32"))
    save_sae(sae, tmp_path / "sae")
    _no_cuda(monkeypatch)
    with pytest.raises(
        DeviceError,
        match=r"device='cuda' is not available: this machine has "
        r"'cpu'",
    ):
        sh.load_sae(tmp_path / "sae", device="cuda")
    with pytest.raises(DeviceError, match="'cuda:1'"):
        sh.load_sae(tmp_path / "sae", device="cuda:1")


def test_metadata_json_cannot_hold_is_refused_before_writing(tmp_path):
    cfg = make_cfg("relu", True, False, "float32")
    cfg.metadata["scale"] = torch.ones(3)
    with pytest.raises(InputError, match=r"cfg.metadata\['scale'\] cannot be written as JSON"):
        save_sae(sh.SAE(cfg), tmp_path / "sae")
    assert list(tmp_path.iterdir()) == []


def test_hook_name_in_metadata_is_refused_rather_than_lost(tmp_path):
    cfg = make_cfg("relu", True, False, "float32")
    cfg.metadata["hook_name"] = "blocks.0.hook_resid_post"
    with pytest.raises(InputError, match="'hook_name' entry"):
        save_sae(sh.SAE(cfg), tmp_path / "sae")


# ---- randomised round trips ----------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False, width=64),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def configs(draw):
    architecture = draw(st.sampled_from(ARCHS))
    d_in = draw(st.integers(1, 9))
    d_sae = draw(st.integers(1, 24))
    topk = architecture == "topk"
    k = draw(st.sampled_from([1, d_sae, max(1, d_sae // 2)])) if topk else None
    metadata = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=6).filter(lambda key: key != "hook_name"),
            JSON_VALUES,
            max_size=3,
        )
    )
    return sh.SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=k,
        hook_name=draw(st.sampled_from(["", "blocks.0.hook_resid_post", "hook_embed"])),
        apply_b_dec_to_input=draw(st.booleans()),
        rescale_acts_by_decoder_norm=draw(st.booleans()) if topk else False,
        dtype=draw(st.sampled_from(DTYPES)),
        metadata=metadata,
    )


@settings(max_examples=50, deadline=None)
@given(
    cfg=configs(),
    seed=st.integers(0, 2**16),
    weights=st.sampled_from(["random", "zeros", "ties", "all_dead"]),
    with_density=st.booleans(),
)
def test_random_saes_round_trip_bit_for_bit(tmp_path_factory, cfg, seed, weights, with_density):
    """Adversarial corners on purpose: k = d_sae and k = 1, d_sae = 1, all-zero
    weights (every decoder norm 0), tied pre-activations, every latent dead."""
    sae = filled_sae(cfg, seed)
    with torch.no_grad():
        if weights == "zeros":
            for param in sae.parameters():
                param.zero_()
        elif weights == "ties":
            sae.W_enc.fill_(0.25)
            if cfg.architecture != "gated":
                sae.b_enc.fill_(0.5)
        elif weights == "all_dead":
            bias = sae.b_gate if cfg.architecture == "gated" else sae.b_enc
            bias.fill_(-1e4)
    if not with_density:
        sae.feature_density = None
    folder = tmp_path_factory.mktemp("rt") / "sae"
    fmt_ok = (
        cfg.architecture == "topk"
        and cfg.apply_b_dec_to_input
        and not cfg.rescale_acts_by_decoder_norm
    )
    for fmt in ("saelens", "sparsify") if fmt_ok else ("saelens",):
        save_sae(sae, folder, format=fmt, overwrite=True)
        back = sh.load_sae(folder)
        x = torch.randn(16, cfg.d_in, generator=torch.Generator().manual_seed(seed))
        x = x.to(sae.dtype)
        assert_same_sae(back, sae, x)
        if fmt == "saelens" and with_density:
            assert torch.equal(back.feature_density, 10.0 ** sae.feature_density.float().log10())
        elif fmt == "saelens":
            assert back.feature_density is None


def test_round_trip_keeps_metadata_json_types_exactly(tmp_path):
    cfg = make_cfg("topk", True, False, "float32")
    cfg.metadata["nested"] = {"ints": [1, 2, 3], "float": 0.1, "none": None, "text": "é/ü"}
    sae = filled_sae(cfg)
    save_sae(sae, tmp_path / "a")
    save_sae(sae, tmp_path / "b", format="sparsify")
    for folder in ("a", "b"):
        back = sh.load_sae(tmp_path / folder)
        assert back.cfg.metadata == cfg.metadata
        assert json.dumps(back.cfg.metadata) == json.dumps(cfg.metadata)


def test_every_refusal_is_a_saehooks_error():
    for bad in (
        {"d_sae": "x"},
        {"architecture": "softmax"},
        {"dtype": "int8"},
        {"architecture": "gated", "rescale_acts_by_decoder_norm": True},
    ):
        with pytest.raises(SAEHooksError):
            sh.SAEConfig(**({"d_in": 4, "d_sae": 8} | bad))
