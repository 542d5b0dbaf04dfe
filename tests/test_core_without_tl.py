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
    from saehooks import activation_fns as activations
    from saehooks import metrics
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
        with torch.no_grad():
            recons = back(x)
        # the metrics against plain formulas written here
        error = ((x.double() - recons.double()) ** 2).sum()
        variance = ((x.double() - x.double().mean(0)) ** 2).sum()
        assert abs(metrics.fvu(x, recons) - float(error / variance)) < 1e-9
        assert abs(metrics.mse(x, recons) - float(error / 64)) < 1e-9
        assert abs(float(losses.mse(x, recons)) - float(error / 64)) < 1e-4
        acts = back.encode(x)
        assert torch.equal(metrics.l0(acts), (acts != 0).sum(-1))
        if arch == "topk":
            # k = 4 winners per row, fewer where a winner's pre-activation is <= 0
            winners = back.encode_pre(x).topk(4, dim=-1).values
            assert torch.equal(metrics.l0(acts), (winners > 0).sum(-1))
            save_sae(back, tmp / "sparsify", format="sparsify")
            assert torch.equal(load_sae(tmp / "sparsify").encode(x), sae.encode(x))
        if arch == "relu":
            fold_W_dec_norm(back)  # unit decoder rows, the same reconstruction
            torch.testing.assert_close(back.W_dec.norm(dim=-1), torch.ones(32))
            with torch.no_grad():
                torch.testing.assert_close(back(x), recons, atol=1e-5, rtol=1e-5)
    top3 = torch.zeros_like(x)
    values, index = x.topk(3, dim=-1)
    top3.scatter_(-1, index, values.clamp_min(0))
    assert torch.equal(activations.topk(x, 3), top3)
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
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok without transformer_lens" in result.stdout
