"""SAELens itself reads saehooks files as the same SAE, and saehooks reads SAELens'.

Runs only where ``sae_lens`` is importable (it needs TransformerLens < 4, so e.g. in
the TL3 environment after ``pip install sae-lens``); skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch
from test_io import D_IN, inputs, rich_sae

import saehooks as sh

sae_lens = pytest.importorskip("sae_lens")

CASES = [
    ("relu", {}),
    ("topk", {}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("gated", {}),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("architecture", "kw"), CASES)
def test_saelens_loads_our_files_as_the_same_sae(tmp_path, architecture, kw, dtype):
    ours = rich_sae(architecture, dtype, **kw)
    ours.save(tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"))
    assert theirs.cfg.architecture() == {"relu": "standard"}.get(architecture, architecture)
    assert theirs.cfg.metadata.hook_name == ours.cfg.hook_name
    assert theirs.dtype == ours.dtype
    x = inputs().to(ours.dtype)
    acts = ours.encode(x)
    assert torch.equal(theirs.encode(x) > 0, acts > 0)
    tol = 1e-5 if dtype == "float32" else 5e-2
    assert torch.allclose(theirs.encode(x).float(), acts.float(), rtol=tol, atol=tol)
    assert torch.allclose(
        theirs.decode(acts).float(), ours.decode(acts).float(), rtol=tol, atol=tol
    )
    theirs.save_model(str(tmp_path / "theirs"))
    back = sh.load_sae(tmp_path / "theirs")
    assert torch.equal(back.encode(x), acts)
    assert back.cfg.d_in == D_IN
