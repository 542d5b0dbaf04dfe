"""Fixtures of the training tests (imported by tests/test_training.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import saehooks as sh
from saehooks.training import TrainConfig


@pytest.fixture(scope="module")
def train_tokens():
    """[48, 128] held-out rows (BOS first): ~6k activation tokens to train on."""
    return sh.load_eval_tokens(48)[:, :128].clone()


@pytest.fixture(scope="module")
def heldout_acts(model):
    """Raw blocks.1.hook_resid_post activations of rows the tests never train on,
    BOS positions dropped: [n, 256]."""
    tokens = sh.load_eval_tokens(64)[56:64, :128]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    return cache["blocks.1.hook_resid_post"][tokens != model.tokenizer.bos_token_id].float()


def tiny_config(out_dir, **changes) -> TrainConfig:
    """A TopK config small enough for a test: d_sae 256, k 8, batch 256, 24 steps."""
    base = TrainConfig(hook_name="blocks.1.hook_resid_post", architecture="topk", d_sae=256,
                       k=8, total_tokens=24 * 256, batch_size=256, lr=3e-3,
                       dead_window_tokens=1024, checkpoint_every_tokens=8 * 256,
                       log_every_steps=4, buffer_tokens=1024, model_batch_rows=8,
                       init_tokens=512, matmul_dtype="float32", progress_bar=False,
                       out_dir=str(out_dir), seed=3)
    return dataclasses.replace(base, **changes)
