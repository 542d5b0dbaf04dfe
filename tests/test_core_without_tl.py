"""The core works with TransformerLens absent: imports, SAE math, metrics, losses, io.

A neighbouring library broke entirely when TransformerLens 4 removed a class; here a
fresh interpreter makes every ``transformer_lens`` import fail, then exercises the core.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc
    import sys
    import tempfile
    from pathlib import Path


    class NoTransformerLens(importlib.abc.MetaPathFinder):
        """Behave as if transformer_lens were not installed."""

        def find_spec(self, name, path=None, target=None):
            if name == "transformer_lens" or name.startswith("transformer_lens."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NoTransformerLens())

    import torch

    import saehooks as sh
    from saehooks import activations, metrics
    from saehooks.io import fold_W_dec_norm, load_sae, save_sae
    from saehooks.training import losses

    torch.manual_seed(0)
    x = torch.randn(64, 16)
    tmp = Path(tempfile.mkdtemp())
    for arch in ("relu", "topk", "jumprelu", "gated"):
        cfg = sh.SAEConfig(d_in=16, d_sae=32, architecture=arch,
                           k=4 if arch == "topk" else None, hook_name="blocks.0.hook_resid_post")
        sae = sh.SAE(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(0, 0.3)
        sae.save(tmp / arch)
        back = load_sae(tmp / arch)
        assert torch.equal(back.encode(x), sae.encode(x)), arch
        recons = back(x)
        assert 0 < metrics.fvu(x, recons) < 10
        assert losses.mse(x, recons) > 0
        if arch == "topk":
            assert torch.all(metrics.l0(back.encode(x)) <= 4)
            save_sae(back, tmp / "sparsify", format="sparsify")
            assert torch.equal(load_sae(tmp / "sparsify").encode(x), sae.encode(x))
        if arch == "relu":
            fold_W_dec_norm(back)
    assert activations.topk(x, 3).count_nonzero() <= 64 * 3
    assert not any(m == "transformer_lens" or m.startswith("transformer_lens.")
                   for m in sys.modules), "the core imported transformer_lens"
    try:
        sh.load_model()
    except ImportError:
        pass
    else:
        raise AssertionError("load_model worked without TransformerLens")
    print("core ok without transformer_lens")
''')


def test_core_imports_and_works_without_transformer_lens():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok without transformer_lens" in result.stdout
