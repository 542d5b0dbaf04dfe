"""A strict TrainConfig and strict training entry points (issue #11 part 3, training share):
every bad value fails at construction with a named saehooks error whose message says
what to pass instead; token sources are checked against the model's vocabulary."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import saehooks as sh
from saehooks.cli.cmd_train import add_train_arguments, run_train
from saehooks.errors import (
    DeviceError,
    InputError,
    InputTypeError,
    SAEFileError,
    SAEHooksError,
    SAENotFoundError,
)
from saehooks.training import ActivationStore, TokenSource, TrainConfig
from saehooks.training.config import parse_count

HOOK = "blocks.1.hook_resid_post"
NO_CUDA = not torch.cuda.is_available()

# (fields, error class, a regex the message must match: the problem and what to pass)
BAD_CONFIGS = [
    ({"d_sae": "4096"}, InputTypeError, r"d_sae must be an integer, got '4096'; pass int"),
    ({"d_sae": 4096.0}, InputTypeError, r"d_sae must be an integer, got 4096\.0"),
    ({"d_sae": 0}, InputError, r"d_sae must be >= 1, got 0"),
    ({"log_every_steps": 0}, InputError, r"log_every_steps must be >= 1, got 0"),
    ({"model_batch_rows": 0}, InputError, r"model_batch_rows must be >= 1, got 0"),
    ({"buffer_tokens": -5}, InputError, r"buffer_tokens must be >= 1, got -5"),
    ({"batch_size": 0}, InputError, r"batch_size must be >= 1"),
    ({"shard_tokens": 0}, InputError, r"shard_tokens must be >= 1"),
    ({"init_tokens": 0}, InputError, r"init_tokens must be >= 1"),
    ({"dead_window_tokens": 0}, InputError, r"dead_window_tokens must be >= 1"),
    ({"checkpoint_every_tokens": -1}, InputError, r"checkpoint_every_tokens must be >= 0"),
    ({"seed": -1}, InputError, r"seed must be >= 0, got -1"),
    ({"seed": True}, InputTypeError, r"seed must be an integer, got True"),
    ({"context_size": 1}, InputError, r"context_size must be >= 2, got 1"),
    ({"k": 0}, InputError, r"k must be >= 1, got 0"),
    (
        {"k": 65, "d_sae": 64},
        InputError,
        r"topk needs 1 <= k <= d_sae=64, got k=65; pass a "
        r"smaller k or a larger d_sae",
    ),
    ({"architecture": "batchtopk", "k": 100, "d_sae": 64}, InputError, r"batchtopk needs"),
    (
        {"total_tokens": 100, "batch_size": 4096},
        InputError,
        r"total_tokens=100 is less than one batch .*pass total_tokens >= batch_size",
    ),
    ({"lr": 0}, InputError, r"lr must be > 0\.0, got 0\.0"),
    ({"lr": math.nan}, InputError, r"lr must be a finite number, got nan"),
    ({"lr": "1e-3"}, InputTypeError, r"lr must be a real number, got '1e-3'"),
    ({"grad_clip": -1.0}, InputError, r"grad_clip must be >= 0\.0"),
    (
        {"adam_betas": (0.9,)},
        InputTypeError,
        r"adam_betas must be a pair .*pass e\.g\. "
        r"\(0\.9, 0\.999\)",
    ),
    ({"adam_betas": (0.9, 1.0)}, InputError, r"adam_betas must lie in \[0, 1\)"),
    ({"adam_betas": "0.9,0.99"}, InputTypeError, r"adam_betas must be a pair"),
    ({"lr_warmup_fraction": 1.5}, InputError, r"lr_warmup_fraction must be <= 1\.0"),
    (
        {"lr_warmup_fraction": 0.6, "lr_decay_fraction": 0.6},
        InputError,
        r"lr_warmup_fraction \+ lr_decay_fraction must be <= 1.*shorten one",
    ),
    (
        {"architecture": "gated"},
        InputError,
        r"architecture must be one of 'topk', 'batchtopk', 'l1', 'kl', 'jumprelu', "
        r"'matryoshka_batchtopk', 'mlp'; got 'gated'",
    ),
    ({"b_dec_init": "random"}, InputError, r"b_dec_init must be one of 'zeros', 'mean'"),
    (
        {"matmul_dtype": "fp16"},
        InputError,
        r"matmul_dtype must be one of 'auto', "
        r"'float32', 'bfloat16'",
    ),
    ({"auxk": "false"}, InputTypeError, r"auxk must be True or False, got 'false'"),
    ({"progress_bar": 1}, InputTypeError, r"progress_bar must be True or False"),
    ({"hook_name": ""}, InputError, r"hook_name is empty; pass a hook name such as"),
    ({"hook_name": 3}, InputTypeError, r"hook_name must be a string.*pass a hook name"),
    ({"out_dir": ""}, InputError, r"out_dir is empty; pass a folder path"),
    (
        {"out_dir": None},
        InputTypeError,
        r"out_dir must be a folder path \(str or "
        r"pathlib\.Path\)",
    ),
    ({"kl_rho": 0.0}, InputError, r"kl_rho must be > 0\.0"),
    ({"kl_rho": 1.0}, InputError, r"kl_rho must be < 1"),
    ({"kl_scale": 0.0}, InputError, r"kl_scale must be > 0\.0"),
    ({"target_l0_max_factor": 0.5}, InputError, r"target_l0_max_factor must be >= 1\.0"),
    (
        {"device": "gpu"},
        DeviceError,
        r"device='gpu' is not a device name .*pass 'cpu', "
        r"'cuda' or 'cuda:N'",
    ),
    ({"device": 3.5}, InputTypeError, r"device must be a string such as 'cpu' or 'cuda:0'"),
    pytest.param(
        {"device": "cuda"},
        DeviceError,
        r"device='cuda' is not available: this machine has 'cpu'; pass one of those",
        marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
    ),
    ({"device": "cuda:99"}, DeviceError, r"device='cuda:99' is not available"),
]


@pytest.mark.parametrize("fields,error,message", BAD_CONFIGS)
def test_train_config_refuses_bad_values_with_a_named_error(fields, error, message):
    with pytest.raises(error, match=message) as info:
        TrainConfig(**fields)
    assert isinstance(info.value, SAEHooksError)


def test_the_table_is_large_enough():
    assert len(BAD_CONFIGS) >= 40


def test_dataclasses_replace_checks_too():
    with pytest.raises(InputError, match="log_every_steps must be >= 1"):
        dataclasses.replace(TrainConfig(), log_every_steps=0)


def test_good_values_come_out_canonical(tmp_path):
    cfg = TrainConfig(
        d_sae=np.int64(512),
        k=torch.tensor(8),
        lr=1,
        adam_betas=[0.8, 0.9],
        out_dir=tmp_path,
        cache_dir=Path("cache"),
        device="cpu",
    )
    assert type(cfg.d_sae) is int and cfg.d_sae == 512 and type(cfg.k) is int and cfg.k == 8
    assert type(cfg.lr) is float and cfg.adam_betas == (0.8, 0.9)
    assert cfg.out_dir == str(tmp_path) and cfg.cache_dir == "cache" and cfg.device == "cpu"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().device is None  # the model's device


def test_from_dict_names_unknown_fields():
    with pytest.raises(
        InputTypeError,
        match=r"unknown TrainConfig field\(s\) 'dsae' \(did "
        r"you mean 'd_sae'\?\)",
    ):
        TrainConfig.from_dict({"dsae": 10})
    with pytest.raises(InputTypeError, match="needs a dict"):
        TrainConfig.from_dict([("d_sae", 10)])


@pytest.mark.parametrize(
    "text,expected",
    [("20M", 20_000_000), ("1.5e6", 1_500_000), ("64k", 64_000), ("4_096", 4096), (4096, 4096)],
)
def test_parse_count_accepts_counts(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["lots", "1.5", "inf", "nan", "2.5k7", True])
def test_parse_count_refuses_non_counts(text):
    with pytest.raises(InputError, match="expected a (whole )?count such as 4096, 20M"):
        parse_count(text)


def _parser():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser


def test_cli_refuses_bad_values_before_loading_anything(monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("saehooks.tl.load_model", no_model)
    parser = _parser()
    with pytest.raises(InputError, match="log_every_steps must be >= 1"):
        run_train(parser.parse_args(["--log-every-steps", "0", "--out", str(tmp_path)]))
    with pytest.raises(InputError, match="--threads must be >= 0, got -2"):
        run_train(parser.parse_args(["--threads", "-2", "--out", str(tmp_path)]))
    with pytest.raises(DeviceError, match="device='cuda:99' is not available"):
        run_train(parser.parse_args(["--device", "cuda:99", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit):  # argparse: "invalid parse_count value: '1.5'"
        parser.parse_args(["--d-sae", "1.5"])


# ---- train_sae and the activation store, on the reference model -------------------------


@pytest.fixture
def cfg(tmp_path):
    return TrainConfig(
        hook_name=HOOK,
        d_sae=64,
        k=4,
        total_tokens=256,
        batch_size=64,
        buffer_tokens=256,
        model_batch_rows=2,
        init_tokens=64,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(tmp_path / "o"),
        checkpoint_every_tokens=0,
    )


def test_out_of_vocabulary_ids_in_a_token_tensor_fail_before_training(model, cfg, tmp_path):
    d_vocab = model.cfg.d_vocab
    tokens = sh.load_eval_tokens(4)[:, :32].clone()
    tokens[2, 5] = d_vocab
    with pytest.raises(
        InputError,
        match=rf"token source rows hold ids \[{d_vocab}\] outside "
        rf"the model's vocabulary 0 … {d_vocab - 1}; "
        r"tokenize with this model's tokenizer",
    ):
        sh.train_sae(model, tokens, cfg)
    assert not (tmp_path / "o" / "metrics.csv").exists()  # nothing started
    tokens[2, 5] = -1
    with pytest.raises(InputError, match=r"ids \[-1\] outside"):
        ActivationStore(model, tokens, HOOK)


def test_out_of_vocabulary_ids_in_an_iterable_fail_at_their_batch(model):
    good = sh.load_eval_tokens(4)[:, :32].clone()
    bad = good.clone()
    bad[0, 3] = model.cfg.d_vocab + 7
    store = ActivationStore(
        model, [good[:2], bad], HOOK, batch_size=16, buffer_tokens=32, model_batch_rows=2
    )
    assert store.next_batch().shape == (16, 256)  # the first model batch is fine
    with pytest.raises(InputError, match=rf"ids \[{model.cfg.d_vocab + 7}\] outside"):
        for _ in range(10):
            store.next_batch()


def test_rows_longer_than_the_context_window_are_refused(model):
    n_ctx = model.cfg.n_ctx
    tokens = torch.ones(1, n_ctx + 1, dtype=torch.long)
    with pytest.raises(
        InputError,
        match=rf"have {n_ctx + 1} positions but the model's "
        rf"context window is n_ctx={n_ctx}; cut them",
    ):
        ActivationStore(model, tokens, HOOK)


def test_bad_token_sources_raise_named_errors(model, cfg, tmp_path):
    with pytest.raises(
        InputTypeError, match="token arrays must hold integer ids, got torch.float32; tokenize"
    ):
        TokenSource(torch.zeros(4, 8))
    with pytest.raises(  # a float tensor with a model is read as that hook's activations
        InputError, match=r"activations are 8 wide, the model's 'blocks.1.hook_resid_post' is 256"
    ):
        sh.train_sae(model, torch.zeros(4, 8), cfg)
    with pytest.raises(
        InputError,
        match=r"must be \[n_seq >= 1, n_ctx >= 1\], got shape "
        r"\(2, 3, 4\)",
    ):
        TokenSource(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(SAENotFoundError, match="does not exist; pass a LongTensor"):
        sh.train_sae(model, tmp_path / "missing.safetensors", cfg)
    with pytest.raises(InputTypeError, match="unsupported token source int"):
        sh.train_sae(model, 42, cfg)
    from safetensors.torch import save_file

    save_file({"ids": torch.zeros(2, 4, dtype=torch.long)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(
        SAEFileError,
        match=r"holds no 'tokens' tensor \(it has \['ids'\]\); "
        "save the token ids under the name 'tokens'",
    ):
        sh.train_sae(model, tmp_path / "t.safetensors", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no text files .* pass a folder that holds some"):
        sh.train_sae(model, tmp_path / "empty", cfg)
    bos = model.tokenizer.bos_token_id
    with pytest.raises(InputError, match="every token of the token source is BOS"):
        sh.train_sae(model, torch.full((4, 8), bos, dtype=torch.long), cfg)


def test_train_sae_checks_its_other_arguments(model, cfg, tmp_path):
    tokens = sh.load_eval_tokens(2)[:, :32]
    with pytest.raises(
        InputTypeError,
        match="cfg must be a TrainConfig, got dict; pass "
        r"saehooks\.TrainConfig\(\.\.\.\)",
    ):
        sh.train_sae(model, tokens, {"d_sae": 64})
    with pytest.raises(
        sh.errors.HookNameError,
        match=r"hook 'blocks\.9\.hook_resid_post' "
        r"not found.*the model has 4 layers",
    ):
        sh.train_sae(model, tokens, dataclasses.replace(cfg, hook_name="blocks.9.hook_resid_post"))
    with pytest.raises(SAENotFoundError, match="no checkpoint under"):
        sh.train_sae(model, tokens, cfg, resume_from=tmp_path)
    with pytest.raises(InputError, match="model_batch_rows must be >= 1, got 0"):
        ActivationStore(model, tokens, HOOK, model_batch_rows=0)
    with pytest.raises(InputError, match="max_steps must be >= 0"):
        sh.training.Trainer(None, _Fake(), dataclasses.replace(cfg, hook_name=HOOK)).run(-1)


class _Fake:
    d_in = 8

    def next_batch(self):
        return torch.randn(64, 8)

    def state_dict(self):
        return {}, {}

    def load_state_dict(self, tensors, values):
        pass


def test_a_finished_run_is_never_overwritten_by_accident(model, tmp_path):
    """A second run into the same out_dir without resume used to replace the first
    silently; it is refused unless overwrite=True, which starts afresh."""
    tokens = sh.load_eval_tokens(8)
    cfg = sh.TrainConfig(
        hook_name="blocks.1.hook_resid_post",
        architecture="topk",
        k=4,
        d_sae=64,
        batch_size=256,
        total_tokens=1024,
        init_tokens=512,
        buffer_tokens=1024,
        out_dir=str(tmp_path),
        progress_bar=False,
    )
    first = sh.train_sae(model, tokens, cfg)
    second_cfg = sh.TrainConfig(**{**cfg.to_dict(), "d_sae": 32, "out_dir": str(tmp_path)})
    with pytest.raises(InputError, match="already holds a run"):
        sh.train_sae(model, tokens, second_cfg)
    assert torch.equal(sh.load_sae(str(tmp_path / "sae")).W_dec, first.W_dec)
    second = sh.train_sae(model, tokens, second_cfg, overwrite=True)
    assert sh.load_sae(str(tmp_path / "sae")).cfg.d_sae == 32 == second.cfg.d_sae


def test_settings_the_objective_does_not_read_are_named_in_a_warning(tmp_path):
    """``k`` means nothing to ``jumprelu`` (its L0 comes from λ / target_l0): a run
    given one says so instead of ignoring it silently; defaults and read fields do not
    warn."""
    import warnings

    from saehooks.training import train_sae

    acts = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    base = dict(d_sae=16, batch_size=64, total_tokens=64, init_tokens=64, progress_bar=False)
    cfg = TrainConfig(architecture="jumprelu", k=7, out_dir=str(tmp_path / "a"), **base)
    with pytest.warns(UserWarning, match=r"'jumprelu' objective does not read k=7") as seen:
        train_sae(acts, cfg)
    assert "l0_coefficient" in str(seen[0].message)
    cfg = TrainConfig(architecture="topk", k=7, out_dir=str(tmp_path / "b"), **base)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not read.*")
        train_sae(acts, cfg)
