"""``matmul_dtype="auto"``: the dtype this machine multiplies fastest, decided from
injected probe timings; an explicit setting always wins; the choice reaches the forward
pass, the metadata and the progress bar (issue #10 part 7)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saehooks.errors import InputError
from saehooks.training import TrainConfig, Trainer, sparse
from saehooks.training import device as device_module
from saehooks.training.device import (
    BF16_MIN_SPEEDUP,
    choose_matmul_dtype,
    probe_matmul_seconds,
    resolve_matmul_dtype,
)

try:
    from tests import conftest_training as _fixtures
except ImportError:  # pytest's rootdir-relative import mode
    import conftest_training as _fixtures

FakeStore, fake_config = _fixtures.FakeStore, _fixtures.fake_config


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test starts with no cached decision."""
    monkeypatch.setattr(device_module, "_MATMUL_CACHE", {})


def _probe(fp32: float, bf16: float, calls: list | None = None):
    def probe(device):
        if calls is not None:
            calls.append(device)
        return fp32, bf16

    return probe


def _never(device):
    raise AssertionError("an explicit matmul_dtype must not be probed")


@pytest.mark.parametrize(
    "fp32,bf16,expected",
    [
        (1.5e-3, 50e-3, "float32"),  # AVX2-only EPYC (this machine): bf16 ~35x slower
        (2.1e-3, 113e-3, "float32"),
        (3.0e-3, 1.0e-3, "bfloat16"),  # AMX / AVX512-BF16: bf16 ~3x faster
        (1.25, 1.0, "bfloat16"),  # exactly the required speed-up
        (1.2499, 1.0, "float32"),  # just short of it: not worth the precision
        (1.0, 1.0, "float32"),  # a tie
        (1.0, math.inf, "float32"),  # bf16 could not run
        (1.0, math.nan, "float32"),
        (0.0, 1.0, "float32"),  # a timer that saw nothing
        (1.0, 0.0, "float32"),
    ],
)
def test_choose_matmul_dtype_from_timings(fp32, bf16, expected):
    assert BF16_MIN_SPEEDUP == 1.25
    assert choose_matmul_dtype(fp32, bf16) == expected


def test_choose_matmul_dtype_with_another_threshold():
    assert choose_matmul_dtype(1.9, 1.0, min_speedup=2.0) == "float32"
    assert choose_matmul_dtype(2.0, 1.0, min_speedup=2.0) == "bfloat16"


@pytest.mark.parametrize("explicit", ["float32", "bfloat16"])
def test_an_explicit_dtype_is_never_overridden_nor_probed(explicit, monkeypatch):
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _never)
    for probe in (None, _never):
        for device in ("cpu", "cuda"):
            choice = resolve_matmul_dtype(explicit, device, probe=probe)
            assert (choice.dtype, choice.source) == (explicit, "explicit")
            assert choice.float32_ms is None and choice.bfloat16_ms is None


def test_auto_follows_the_probe_and_records_its_timings():
    choice = resolve_matmul_dtype("auto", "cpu", probe=_probe(0.004, 0.001))
    assert choice == ("bfloat16", "probe", 4.0, 1.0)
    choice = resolve_matmul_dtype("auto", "cpu", probe=_probe(0.0015, 0.05))
    assert choice == ("float32", "probe", 1.5, 50.0)
    assert choice.as_metadata() == {
        "matmul_dtype_resolved": "float32",
        "matmul_dtype_source": "probe",
        "matmul_probe_ms": {"float32": 1.5, "bfloat16": 50.0},
    }
    assert resolve_matmul_dtype("auto", "cpu", probe=_probe(0.001, math.inf)) == (
        "float32",
        "probe",
        1.0,
        None,
    )


def test_auto_probes_once_per_process_and_thread_count(monkeypatch):
    calls: list = []
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _probe(0.004, 0.001, calls))
    first = resolve_matmul_dtype("auto", "cpu")
    assert resolve_matmul_dtype("auto", torch.device("cpu")) is first and len(calls) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        resolve_matmul_dtype("auto", "cpu")
        assert len(calls) == 2  # another thread count: timed again
    finally:
        torch.set_num_threads(threads)
    assert resolve_matmul_dtype("auto", "cpu") is first and len(calls) == 2


def test_auto_on_cuda_is_bf16_where_supported_without_a_probe(monkeypatch):
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _never)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_matmul_dtype("auto", "cuda:0") == ("bfloat16", "cuda", None, None)
    monkeypatch.setattr(device_module, "_MATMUL_CACHE", {})
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_matmul_dtype("auto", "cuda") == ("float32", "cuda", None, None)


def test_resolve_refuses_unknown_dtypes():
    with pytest.raises(
        InputError, match="matmul_dtype must be one of 'auto', 'float32', 'bfloat16'; got 'fp16'"
    ):
        resolve_matmul_dtype("fp16", "cpu")


def test_the_real_probe_is_short_and_sane():
    fp32, bf16 = probe_matmul_seconds("cpu")
    assert 0 < fp32 < 0.2 and 0 < bf16 < 0.5
    assert choose_matmul_dtype(fp32, bf16) in ("float32", "bfloat16")


def test_auto_is_the_default():
    assert TrainConfig().matmul_dtype == "auto"


def _record_encoder_dtypes(monkeypatch) -> list:
    seen: list = []
    real = sparse.encoder_pre

    def recording(x_c, W_enc, b_enc, dtype=torch.float32, out=None):
        seen.append(dtype)
        return real(x_c, W_enc, b_enc, dtype, out=out)

    monkeypatch.setattr(sparse, "encoder_pre", recording)
    return seen


def test_the_trainer_uses_records_and_shows_the_resolved_dtype(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _probe(0.004, 0.001))
    cfg = fake_config(
        tmp_path,
        matmul_dtype="auto",
        total_tokens=4 * 64,
        progress_bar=True,
        checkpoint_every_tokens=0,
    )
    trainer = Trainer(None, FakeStore(), cfg)
    assert trainer.cfg.matmul_dtype == "auto"  # the user's config is left as given
    assert trainer.matmul == ("bfloat16", "probe", 4.0, 1.0)
    seen = _record_encoder_dtypes(monkeypatch)
    sae = trainer.run()
    assert seen == [torch.bfloat16] * 4  # every step's encoder matmul
    training = sae.cfg.metadata["training"]
    assert training["matmul_dtype_resolved"] == "bfloat16"
    assert training["matmul_dtype_source"] == "probe"
    assert training["matmul_probe_ms"] == {"float32": 4.0, "bfloat16": 1.0}
    assert training["config"]["matmul_dtype"] == "auto"
    assert "topk blocks.0.hook_resid_post [cpu, bfloat16 matmul]" in capsys.readouterr().err


def test_the_trainer_keeps_an_explicit_dtype_whatever_the_probe_says(tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _never)
    cfg = fake_config(
        tmp_path, matmul_dtype="float32", total_tokens=2 * 64, checkpoint_every_tokens=0
    )
    trainer = Trainer(None, FakeStore(), cfg)
    seen = _record_encoder_dtypes(monkeypatch)
    sae = trainer.run()
    assert seen == [torch.float32] * 2
    assert sae.cfg.metadata["training"]["matmul_dtype_source"] == "explicit"
    assert trainer.describe().endswith("[cpu, float32 matmul]")


def test_a_resumed_auto_run_keeps_the_dtype_it_started_with(tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _probe(0.004, 0.001))
    cfg = fake_config(tmp_path, matmul_dtype="auto")
    Trainer(None, FakeStore(), cfg).run(max_steps=5)  # checkpoint at step 4, in bf16
    monkeypatch.setattr(device_module, "_MATMUL_CACHE", {})
    monkeypatch.setattr(device_module, "probe_matmul_seconds", _probe(0.001, 0.004))
    assert (
        Trainer(
            None, FakeStore(), dataclasses.replace(cfg, out_dir=str(tmp_path / "new"))
        ).matmul.dtype
        == "float32"
    )  # a fresh run would now take fp32 ...
    resumed = Trainer(None, FakeStore(), cfg, resume_from=tmp_path)
    assert resumed.matmul.dtype == "bfloat16" and resumed.matmul.source == "resumed"
    seen = _record_encoder_dtypes(monkeypatch)
    resumed.run(max_steps=1)
    assert seen == [torch.bfloat16]  # ... but the resumed run goes on as it began


def test_a_batch_for_the_cpu_is_moved_as_is():
    from saehooks.training.device import to_training_device

    batch = torch.randn(8, 4)
    assert to_training_device(batch, torch.device("cpu")) is batch
