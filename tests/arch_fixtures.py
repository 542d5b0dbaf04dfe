"""Tiny random-weight models of the architectures saehooks supports, built offline.

Each model has 2 layers, ``d_model`` 64, 4 query heads of width 16 (2 key/value heads
where the architecture has grouped-query attention), a vocabulary of 512 and a
byte-level BPE tokenizer trained here on a few lines of fixed text, with BOS, EOS and
PAD set, so ``model.to_tokens("...")`` works. Models are written with
``save_pretrained`` (fp32 or bf16), seeds fixed, so every build gives the same weights.

Used by ``tests/test_architectures.py`` (session-scoped, built once per run),
``scripts/hook_names_table.py`` and ``benchmarks/architectures.py``:

    from arch_fixtures import ARCHITECTURES, build_model_dir
    folder = build_model_dir(tmp_root, "llama", torch.float32)
    model = sh.load_model(folder)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB = 512
"""Model vocabulary size (the tokenizer uses ids below it)."""
D_MODEL = 64
N_LAYERS = 2
N_HEADS = 4
D_HEAD = 16
N_CTX = 128
SEED = 0
BOS, PAD = "<|endoftext|>", "<pad>"
BOS_ID, PAD_ID = 0, 1

_CORPUS = """\
def forward(self, x):
    return self.norm(self.proj(x) + x)

class Tokenizer:
    def __init__(self, vocab_size=512):
        self.vocab_size = vocab_size

for i in range(10):
    print(i, i * i, "the quick brown fox jumps over the lazy dog")

The residual stream carries information between layers of a transformer.
Sparse autoencoders decompose activations into features that fire rarely.
import torch
import numpy as np
if __name__ == "__main__":
    main()
"""


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build its Hugging Face config and model."""

    name: str
    """Short name used in test ids, folder names and tables, e.g. ``"llama"``."""
    hf_architecture: str
    """The ``architectures`` entry of ``config.json``, e.g. ``LlamaForCausalLM``."""
    make: Callable[[], tuple]
    """Returns ``(config, model_class)``."""


def _common_rope(cfg_cls, **extra):
    return cfg_cls(
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=N_CTX,
        **extra,
    )


def _gpt2():
    import transformers as tf

    config = tf.GPT2Config(
        n_layer=N_LAYERS,
        n_embd=D_MODEL,
        n_head=N_HEADS,
        vocab_size=VOCAB,
        n_positions=N_CTX,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
    )
    return config, tf.GPT2LMHeadModel


def _neox():
    import transformers as tf

    return tf.GPTNeoXConfig(
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=256,
        vocab_size=VOCAB,
        max_position_embeddings=N_CTX,
        rotary_pct=0.25,
    ), tf.GPTNeoXForCausalLM


def _llama():
    import transformers as tf

    return _common_rope(tf.LlamaConfig), tf.LlamaForCausalLM


def _gemma2():
    import transformers as tf

    return _common_rope(tf.Gemma2Config, head_dim=D_HEAD, sliding_window=8), tf.Gemma2ForCausalLM


def _gemma3():
    import transformers as tf

    return _common_rope(
        tf.Gemma3TextConfig, head_dim=D_HEAD, sliding_window=8
    ), tf.Gemma3ForCausalLM


def _qwen3():
    import transformers as tf

    return _common_rope(tf.Qwen3Config, head_dim=D_HEAD), tf.Qwen3ForCausalLM


def _mistral():
    import transformers as tf

    return _common_rope(tf.MistralConfig, sliding_window=8), tf.MistralForCausalLM


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("gpt2", "GPT2LMHeadModel", _gpt2),
        ArchSpec("pythia", "GPTNeoXForCausalLM", _neox),
        ArchSpec("llama", "LlamaForCausalLM", _llama),
        ArchSpec("gemma2", "Gemma2ForCausalLM", _gemma2),
        ArchSpec("gemma3", "Gemma3ForCausalLM", _gemma3),
        ArchSpec("qwen3", "Qwen3ForCausalLM", _qwen3),
        ArchSpec("mistral", "MistralForCausalLM", _mistral),
    )
}
"""The fixture architectures by short name (GPT-NeoX is named ``pythia``)."""


def build_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` (at most :data:`VOCAB` ids) trained on
    a fixed text; BOS = EOS = ``<|endoftext|>`` (id 0), PAD = ``<pad>`` (id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer)
    assert tok.token_to_id(BOS) == BOS_ID and tok.token_to_id(PAD) == PAD_ID
    assert tok.get_vocab_size() <= VOCAB
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD
    )


def build_hf_model(arch: str, dtype: torch.dtype = torch.float32):
    """The random-weight Hugging Face model of ``arch`` (seeded), in eval mode."""
    config, cls = ARCHITECTURES[arch].make()
    config.bos_token_id, config.eos_token_id, config.pad_token_id = BOS_ID, BOS_ID, PAD_ID
    torch.manual_seed(SEED + list(ARCHITECTURES).index(arch))  # distinct weights per arch
    model = cls(config).eval()
    return model.to(dtype)


def build_model_dir(root: str | Path, arch: str, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``arch``'s tiny model and tokenizer into ``root/<arch>-<dtype>`` (once).

    Returns:
        The folder, ready for ``saehooks.load_model(folder)``.
    """
    folder = Path(root) / f"{arch}-{str(dtype).removeprefix('torch.')}"
    if (folder / "config.json").is_file():
        return folder
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        build_hf_model(arch, dtype).save_pretrained(folder)
        build_tokenizer().save_pretrained(folder)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return folder


def build_all(root: str | Path, dtypes=(torch.float32,)) -> dict[tuple[str, torch.dtype], Path]:
    """Every architecture in every dtype: ``{(arch, dtype): folder}``."""
    return {
        (arch, dtype): build_model_dir(root, arch, dtype)
        for arch in ARCHITECTURES
        for dtype in dtypes
    }
