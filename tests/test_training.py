"""Training on the reference model's activations: stores, short runs, exact resumption,
folded normalisation, the CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import warnings

import pytest
import torch

import saehooks as sh
from saehooks.cli.cmd_train import add_train_arguments, config_from_args, run_train
from saehooks.errors import InputError
from saehooks.training import (
    ActivationStore,
    CachedActivationStore,
    TokenSource,
    Trainer,
    write_activation_cache,
)
from saehooks.training import checkpoint as ckpt_module
from saehooks.training.launch import train_sae
from saehooks.training.objectives import StepState
from saehooks.training.stores import make_store

try:
    from tests import conftest_training as _fixtures
except ImportError:  # pytest's rootdir-relative import mode
    import conftest_training as _fixtures

tiny_config = _fixtures.tiny_config
FakeStore, fake_config = _fixtures.FakeStore, _fixtures.fake_config
train_tokens = _fixtures.train_tokens
heldout_acts = _fixtures.heldout_acts

HOOK = "blocks.1.hook_resid_post"


def _fvu(sae, x):
    with torch.no_grad():
        return float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_store_matches_a_full_forward_and_drops_bos(model, train_tokens):
    tokens = train_tokens[:3]
    store = ActivationStore(model, tokens, HOOK, batch_size=64)
    acts = store.activations(tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    keep = tokens != model.tokenizer.bos_token_id
    assert acts.shape == (int(keep.sum()), 256) and int(keep.sum()) < tokens.numel()
    assert torch.allclose(acts, cache[HOOK][keep], atol=1e-5)


def test_text_folder_source_tokenises_with_bos_rows(model, tmp_path):
    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n" * 5)
    (tmp_path / "b.txt").write_text("import os\nprint(os.getcwd())\n" * 5)
    tok, bos = model.tokenizer, model.tokenizer.bos_token_id
    source = TokenSource(tmp_path, tok, context_size=16, bos_id=bos)
    rows = list(zip(range(1000), source.iter_rows()))
    first_epoch = [r for _, r in rows][: source.rows_served]
    stream = []
    for name in ("a.py", "b.txt"):
        stream += [bos] + tok((tmp_path / name).read_text(), add_special_tokens=False)["input_ids"]
    n_rows = len(stream) // 15
    body = torch.cat([r[1:] for r in first_epoch[:n_rows]])
    assert all(r.shape == (16,) and r[0] == bos for r in first_epoch)
    assert body.tolist() == stream[: n_rows * 15]


def test_a_token_source_says_when_it_starts_over():
    source = TokenSource(torch.arange(6).view(2, 3))
    rows = source.iter_rows()
    assert [next(rows).tolist() for _ in range(2)] == [[0, 1, 2], [3, 4, 5]]
    with pytest.warns(UserWarning, match="ran out after 2 rows and starts over"):
        assert next(rows).tolist() == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per source
        assert next(rows).tolist() == [3, 4, 5] and next(rows).tolist() == [0, 1, 2]


def test_cache_serves_every_activation_once_per_epoch_and_resumes(model, train_tokens, tmp_path):
    store = ActivationStore(model, train_tokens[:8], HOOK, buffer_tokens=512, seed=1)
    write_activation_cache(store, tmp_path, None, shard_tokens=300, progress=False)
    reference = store.activations(train_tokens[:8])
    cached = CachedActivationStore(tmp_path, batch_size=127, seed=2, shards_per_group=2)
    n = reference.shape[0]
    served = torch.cat([cached.next_batch() for _ in range(-(-n // 127))])[:n]
    assert served.shape == reference.shape
    assert not torch.equal(served, reference)  # shuffled
    key = [1, 0]  # sort rows to compare as multisets
    assert torch.equal(
        served[torch.argsort(served[:, key[0]])], reference[torch.argsort(reference[:, key[0]])]
    )
    state = cached.state_dict()
    ahead = [cached.next_batch() for _ in range(5)]
    again = CachedActivationStore(tmp_path, batch_size=127, seed=2, shards_per_group=2)
    again.load_state_dict(*state)
    assert all(torch.equal(a, again.next_batch()) for a in ahead)
    assert cached.epochs_done >= 1


def test_short_topk_run_lowers_fvu_and_keeps_l0(model, train_tokens, heldout_acts, tmp_path):
    cfg = tiny_config(
        tmp_path,
        d_sae=512,
        k=16,
        total_tokens=60 * 512,
        batch_size=512,
        cache_dir=str(tmp_path / "cache"),
        checkpoint_every_tokens=0,
    )
    store = make_store(model, train_tokens, cfg)
    trainer = Trainer(model, store, cfg)
    fvu_init = _fvu(trainer.folded_sae(), heldout_acts)
    sae = trainer.run()
    fvu_final = _fvu(sae, heldout_acts)
    assert fvu_final < 0.4 * fvu_init and fvu_final < 0.35
    l0 = (sae.encode(heldout_acts) > 0).sum(-1)
    assert int(l0.max()) <= 16 and float(l0.float().mean()) > 12
    meta = sae.cfg.metadata
    assert meta["model_processing"] == sh.tl.model_processing(model)
    assert meta["context_size"] == 128 and meta["prepend_bos"] is True
    assert meta["training"]["tokens"] == 60 * 512 and meta["training"]["config"]["k"] == 16
    # no path of this machine in what a shipped SAE carries (issue #11 part 2)
    assert str(tmp_path) not in json.dumps(meta)
    assert not {"out_dir", "cache_dir", "device"} & set(meta["training"]["config"])
    assert meta["training"]["device_type"] == "cpu"
    assert meta["training"]["matmul_dtype_resolved"] == "float32"
    loaded = sh.load_sae(tmp_path / "sae")
    assert torch.equal(loaded.W_enc, sae.W_enc)
    import pandas as pd

    log = pd.read_csv(tmp_path / "metrics.csv")
    # progress from the first step on: a row after step 1, then every log_every_steps
    assert log["step"].tolist() == [1, *range(4, 61, 4)]
    assert log["fvu"].iloc[-1] < log["fvu"].iloc[0]


@pytest.mark.parametrize(
    "arch",
    [
        "batchtopk",
        pytest.param("l1", marks=pytest.mark.slow),
        pytest.param("kl", marks=pytest.mark.slow),
    ],
)
def test_short_runs_of_other_objectives(arch, model, train_tokens, heldout_acts, tmp_path):
    cfg = tiny_config(
        tmp_path,
        architecture=arch,
        d_sae=512,
        k=16,
        total_tokens=60 * 512,
        batch_size=512,
        checkpoint_every_tokens=0,
        lr=3e-3 if arch == "batchtopk" else 1e-3,
        l1_coefficient=1.0,
        kl_beta=0.3,
        kl_rho=16 / 512,
        resample_every_tokens=8 * 512,
    )
    store = make_store(model, train_tokens, cfg)
    trainer = Trainer(model, store, cfg)
    initial = trainer.folded_sae()
    fvu_init = _fvu(initial, heldout_acts)
    l0_init = float((initial.encode(heldout_acts) > 0).sum(-1).float().mean())
    sae = trainer.run()
    l0 = float((sae.encode(heldout_acts) > 0).sum(-1).float().mean())
    assert _fvu(sae, heldout_acts) < 0.5 * fvu_init
    if arch == "batchtopk":
        assert sae.cfg.architecture == "jumprelu"
        threshold = sae.threshold.detach()
        assert float(threshold.min()) == float(threshold.max()) > 0
        assert 4 <= l0 <= 64  # mean 16 per token in training
    else:
        assert sae.cfg.architecture == "relu"
        assert l0 < 0.75 * l0_init  # the penalty is bringing L0 down (~250 at the start)


def _final_params(trainer_or_sae):
    return {k: v.clone() for k, v in trainer_or_sae.sae.state_dict().items()}


def _rows(path):
    with open(path) as f:  # compare everything but the timing columns
        return [r[:10] for r in csv.reader(f)]


@pytest.mark.parametrize("arch,cached", [("topk", False), ("l1", True)])
def test_kill_and_resume_reproduces_the_uninterrupted_weights(
    arch, cached, model, train_tokens, tmp_path
):
    extra = {"cache_dir": str(tmp_path / "cache")} if cached else {}
    extra |= {"resample_every_tokens": 5 * 256, "l1_coefficient": 1.0} if arch == "l1" else {}
    cfg_a = tiny_config(tmp_path / "a", architecture=arch, **extra)
    full = Trainer(model, make_store(model, train_tokens, cfg_a), cfg_a)
    full.run()
    if arch == "topk":
        assert full.tracker.dead.any()  # AuxK was active: the dead counters matter too
    cfg_b = tiny_config(tmp_path / "b", architecture=arch, **extra)
    killed = Trainer(model, make_store(model, train_tokens, cfg_b), cfg_b)
    assert killed.run(max_steps=13) is None  # checkpoint at step 8, killed at step 13
    resumed = Trainer(
        model, make_store(model, train_tokens, cfg_b), cfg_b, resume_from=tmp_path / "b"
    )
    assert resumed.step_count == 8
    resumed.run()
    a, b = _final_params(full), _final_params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")
    sae_a, sae_b = sh.load_sae(tmp_path / "a" / "sae"), sh.load_sae(tmp_path / "b" / "sae")
    assert torch.equal(sae_a.W_dec, sae_b.W_dec)


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    model, train_tokens, tmp_path, monkeypatch
):
    cache = str(tmp_path / "cache")  # no model forward passes after the first store
    cfg_a = tiny_config(tmp_path / "a", cache_dir=cache)
    full = Trainer(model, make_store(model, train_tokens, cfg_a), cfg_a)
    full.run()
    cfg_b = tiny_config(tmp_path / "b", cache_dir=cache)
    calls = {"n": 0}
    real = ckpt_module.write_safetensors

    def dies_on_second_checkpoint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_module, "write_safetensors", dies_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, make_store(model, train_tokens, cfg_b), cfg_b).run()
    monkeypatch.undo()
    assert ckpt_module.find_checkpoint(tmp_path / "b").name == "step_00000008"
    sae = train_sae(model, train_tokens, cfg_b, resume_from=tmp_path / "b")
    assert torch.equal(sae.W_enc, full.folded_sae().W_enc)


def test_mid_run_checkpoint_reconstructs_raw_activations_like_the_trainer(
    model, train_tokens, heldout_acts, tmp_path
):
    cfg = tiny_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(model, make_store(model, train_tokens, cfg), cfg)
    trainer.run(max_steps=10)  # checkpoint written at step 8
    trainer2 = Trainer(model, make_store(model, train_tokens, cfg), cfg, resume_from=tmp_path)
    saved = sh.load_sae(ckpt_module.find_checkpoint(tmp_path) / "sae")
    assert abs(trainer2.scale - 1.0) > 0.1  # the raw activations are far from normalised
    x = heldout_acts[:200]
    no_dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        inside = trainer2.objective.forward(
            trainer2.sae, x * trainer2.scale, StepState(8, 8 * 256, no_dead)
        ).x_hat
        assert torch.allclose(saved(x), inside / trainer2.scale, rtol=1e-4, atol=1e-4)


def test_cli_flags_come_from_the_config(model, train_tokens, tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            "x",
            "--hook",
            HOOK,
            "--tokens",
            "20M",
            "--k",
            "16",
            "--no-auxk",
            "--adam-betas",
            "0.8",
            "0.9",
            "--out",
            "o",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.hook_name, cfg.total_tokens, cfg.k, cfg.auxk, cfg.adam_betas, cfg.out_dir) == (
        HOOK,
        20_000_000,
        16,
        False,
        (0.8, 0.9),
        "o",
    )
    from safetensors.torch import save_file

    save_file({"tokens": train_tokens[:8].contiguous()}, str(tmp_path / "tokens.safetensors"))
    args = parser.parse_args(
        [
            "--data",
            str(tmp_path / "tokens.safetensors"),
            "--hook",
            HOOK,
            "--tokens",
            "2048",
            "--batch-size",
            "256",
            "--d-sae",
            "256",
            "--k",
            "8",
            "--init-tokens",
            "256",
            "--buffer-tokens",
            "1024",
            "--out",
            str(tmp_path / "run"),
            "--no-progress-bar",
        ]
    )
    monkeypatch.setattr("saehooks.tl.load_model", lambda name=None, **kw: model)
    assert run_train(args) == 0
    assert "saved" in capsys.readouterr().out
    assert sh.load_sae(tmp_path / "run" / "sae").cfg.k == 8


def test_cli_trains_on_the_reference_split_by_default(model, train_tokens, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    calls = []

    def fake_split(max_rows=None, strict=False):
        calls.append(max_rows)
        return train_tokens[:8]

    monkeypatch.setattr("saehooks.reference.load_train_tokens", fake_split)
    monkeypatch.setattr("saehooks.tl.load_model", lambda name=None, **kw: model)
    args = parser.parse_args(
        [
            "--hook",
            HOOK,
            "--tokens",
            "1024",
            "--batch-size",
            "256",
            "--d-sae",
            "256",
            "--k",
            "8",
            "--init-tokens",
            "256",
            "--buffer-tokens",
            "1024",
            "--out",
            str(tmp_path / "run"),
            "--no-progress-bar",
        ]
    )
    assert run_train(args) == 0 and calls == [None]
    args = parser.parse_args(["--model", "gpt2", "--out", str(tmp_path / "run2")])
    with pytest.raises(InputError, match="--data is required with --model"):
        run_train(args)


# ---- devices (issue #10 part 6) ---------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_training_device_is_the_configs_else_the_models_else_the_cpu(model, tmp_path):
    from saehooks.training.device import training_device

    cfg = fake_config(tmp_path)
    assert cfg.device is None
    assert training_device(model, cfg) == sh.tl.model_device(model) == torch.device("cpu")
    assert training_device(None, cfg) == torch.device("cpu")
    assert training_device(model, dataclasses.replace(cfg, device="cpu")) == torch.device("cpu")


def test_everything_the_trainer_makes_lives_on_its_device(tmp_path):
    cfg = fake_config(
        tmp_path, device="cpu", architecture="l1", d_sae=64, resample_every_tokens=4 * 64
    )
    trainer = Trainer(None, FakeStore(), cfg)
    trainer.run(max_steps=6)
    dev = torch.device("cpu")
    assert trainer.device == dev and trainer.generator.device == dev
    assert trainer.tracker.since_fired.device == dev
    assert all(p.device == dev for p in trainer.sae.parameters())
    assert all(
        v.device == dev
        for s in trainer.optimizer.state.values()
        for k, v in s.items()
        if k != "step"
    )
    assert trainer.folded_sae().device == dev


def test_a_run_without_a_model_records_no_machine_paths(tmp_path):
    cfg = fake_config(tmp_path / "run", cache_dir=str(tmp_path / "cache"), device="cpu")
    sae = Trainer(None, FakeStore(), cfg).run()
    meta = sae.cfg.metadata
    assert str(tmp_path) not in json.dumps(meta)
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert str(tmp_path) not in json.dumps(saved)
    assert meta["training"]["config"]["d_sae"] == 64


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "l1", "kl"])
def test_a_50_step_run_on_cuda(arch, tmp_path):
    cfg = fake_config(
        tmp_path,
        architecture=arch,
        device="cuda",
        total_tokens=50 * 64,
        checkpoint_every_tokens=20 * 64,
        resample_every_tokens=10 * 64,
        matmul_dtype="auto",
        l1_coefficient=0.3,
        kl_beta=0.3,
        kl_rho=4 / 64,
    )
    trainer = Trainer(None, FakeStore(), cfg)
    assert trainer.matmul.dtype in ("bfloat16", "float32") and trainer.matmul.source == "cuda"
    sae = trainer.run()
    assert sae.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in trainer.sae.parameters())
    log = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert int(log[-1]["step"]) == 50 and float(log[-1]["fvu"]) < float(log[0]["fvu"])
    loaded = sh.load_sae(tmp_path / "sae")
    x = FakeStore(seed=9).next_batch()
    assert torch.allclose(loaded(x), sae.cpu()(x), atol=1e-5)


@pytest.mark.cuda
@CUDA
def test_a_50_step_run_of_a_model_on_cuda_resumes_exactly(train_tokens, tmp_path):
    gpu_model = sh.load_model(device="cuda")
    cfg_a = tiny_config(tmp_path / "a", total_tokens=50 * 256)
    sae = train_sae(gpu_model, train_tokens, cfg_a)
    assert sae.device.type == "cuda"
    assert sae.cfg.metadata["training"]["device_type"] == "cuda"
    cfg_b = tiny_config(tmp_path / "b", total_tokens=50 * 256)
    Trainer(gpu_model, make_store(gpu_model, train_tokens, cfg_b), cfg_b).run(max_steps=13)
    resumed = train_sae(gpu_model, train_tokens, cfg_b, resume_from=tmp_path / "b")
    assert torch.equal(resumed.W_dec, sae.W_dec)


@pytest.mark.cuda
@CUDA
def test_a_cpu_model_feeds_a_cuda_sae(model, train_tokens, tmp_path):
    cfg = tiny_config(tmp_path, device="cuda", total_tokens=50 * 256)
    store = make_store(model, train_tokens, cfg)
    assert store.next_batch().device.type == "cuda"  # moved once, as captured
    sae = train_sae(model, train_tokens, cfg)
    assert sae.device.type == "cuda"
