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
    base = TrainConfig(
        hook_name="blocks.1.hook_resid_post",
        architecture="topk",
        d_sae=256,
        k=8,
        total_tokens=24 * 256,
        batch_size=256,
        lr=3e-3,
        dead_window_tokens=1024,
        checkpoint_every_tokens=8 * 256,
        log_every_steps=4,
        buffer_tokens=1024,
        model_batch_rows=8,
        init_tokens=512,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(out_dir),
        seed=3,
    )
    return dataclasses.replace(base, **changes)


class FakeStore:
    """A stand-in activation store for Trainer tests without a model: activations that
    are sparse sums of a few fixed directions plus a mean and a little noise (so an SAE
    has something to learn), reproducible, with exact ``state_dict`` resumption.

    Args:
        d_in: activation width.
        batch_size: activations per :meth:`next_batch`.
        seed: seed of the directions and of the stream.
        n_dirs: number of ground-truth directions.
    """

    def __init__(
        self, d_in: int = 16, batch_size: int = 64, seed: int = 0, n_dirs: int = 32
    ) -> None:
        self.d_in, self.batch_size = d_in, batch_size
        fixed = torch.Generator().manual_seed(1000 + seed)
        self.dirs = torch.randn(n_dirs, d_in, generator=fixed)
        self.mean = 0.5 * torch.randn(d_in, generator=fixed)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_served = 0

    def next_batch(self) -> torch.Tensor:
        g, n, m = self.generator, self.batch_size, self.dirs.shape[0]
        codes = (torch.rand(n, m, generator=g) < 0.1) * torch.rand(n, m, generator=g) * 3
        self.batches_served += 1
        return codes @ self.dirs + self.mean + 0.05 * torch.randn(n, self.d_in, generator=g)

    def state_dict(self):
        return {"generator": self.generator.get_state()}, {
            "kind": "fake",
            "batches": self.batches_served,
        }

    def load_state_dict(self, tensors, values) -> None:
        self.generator.set_state(tensors["generator"].clone())
        self.batches_served = int(values["batches"])


def fake_config(out_dir, **changes) -> TrainConfig:
    """A TopK config for :class:`FakeStore` runs: d_sae 64, k 4, batch 64, 24 steps,
    checkpoints every 4 steps, fp32 matmul, no progress bar."""
    base = TrainConfig(
        hook_name="blocks.0.hook_resid_post",
        architecture="topk",
        d_sae=64,
        k=4,
        total_tokens=24 * 64,
        batch_size=64,
        lr=3e-3,
        dead_window_tokens=256,
        checkpoint_every_tokens=4 * 64,
        log_every_steps=4,
        init_tokens=128,
        matmul_dtype="float32",
        progress_bar=False,
        out_dir=str(out_dir),
        seed=3,
    )
    return dataclasses.replace(base, **changes)
