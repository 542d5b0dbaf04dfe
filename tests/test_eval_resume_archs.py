"""evaluate resumes from the hook on every fixture architecture, with the same report.

Tiny random-weight GPT-2, GPT-NeoX, Llama, Gemma 2, Gemma 3, Qwen3 and Mistral models
(tests/arch_fixtures.py; rotary embeddings, gated MLPs, sliding-window layers, logit
soft-capping): the resumed passes must reproduce the whole-pass reference
(``evaluation._RESUME_FROM_HOOK = False``) and must really resume (the once-per-model
check passed), for a carrier hook (``blocks.0.hook_resid_post``) and a hook inside a
block (``blocks.1.hook_mlp_out``) together and alone, and ``blocks.0.hook_attn_out``.
"""

from __future__ import annotations

import pytest
import torch
from arch_fixtures import ARCHITECTURES, BOS_ID, build_model_dir

import saehooks as sh
from saehooks import evaluation, tl
from saehooks.tl import resume as tl_resume

TL3_CANNOT_LOAD = {"gemma2", "gemma3"}


@pytest.fixture(scope="module")
def arch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("resume_archs")


def _sae(d_in: int, hook_name: str, seed: int) -> sh.SAE:
    sae = sh.SAE(sh.SAEConfig(d_in=d_in, d_sae=96, architecture="topk", k=6, hook_name=hook_name))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(96, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_resumed_evaluate_equals_whole_passes(arch, arch_root, monkeypatch):
    if tl.tl_major_version() == 3 and arch in TL3_CANNOT_LOAD:
        pytest.skip(f"TransformerLens 3 cannot load {arch} from a folder")
    model = sh.load_model(build_model_dir(arch_root, arch))
    toks = torch.randint(2, 300, (3, 16), generator=torch.Generator().manual_seed(2))
    toks[:, 0] = BOS_ID
    d = model.cfg.d_model
    saes = [_sae(d, "blocks.0.hook_resid_post", 1), _sae(d, "blocks.1.hook_mlp_out", 2)]
    assert tl_resume.can_resume(model)
    attn = [_sae(d, "blocks.0.hook_attn_out", 3)]  # resumes at block 0
    for chosen in (saes, saes[:1], saes[1:], attn):
        with monkeypatch.context() as m:
            m.setattr(evaluation, "_RESUME_FROM_HOOK", False)
            old = sh.evaluate(model, chosen, toks, batch_size=2, progress=False)
        new = sh.evaluate(model, chosen, toks, batch_size=2, progress=False)
        new, old = (r if isinstance(r, dict) else {r.hook_name: r} for r in (new, old))
        for name, report in new.items():
            a, b = report.to_dict(), old[name].to_dict()
            for key, value in a.items():
                if isinstance(value, float):
                    assert value == pytest.approx(b[key], abs=1e-6, rel=0), (arch, key)
            assert report.ce_loss_spliced != report.ce_loss_clean
    # both resume points were checked against the clean logits and passed
    assert evaluation._RESUME_CHECKED[model] == {0: True, 1: True}
