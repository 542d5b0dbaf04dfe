"""The feature demos run end to end against the shipped model and SAEs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saehooks.reference import pretrained_sae_dir

ROOT = Path(__file__).resolve().parent.parent
SAE_NAME = "topk-k32-blocks.2.hook_resid_post"

pytestmark = pytest.mark.skipif(
    not (pretrained_sae_dir() / SAE_NAME).is_dir(),
    reason=f"shipped SAE {SAE_NAME!r} not in {pretrained_sae_dir()} yet (trained by issue 4)")


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "demos" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_ablate_feature_demo():
    out = _run("ablate_feature.py")
    assert "loss change" in out and "Spearman" in out and "KL" in out


def test_steer_feature_demo():
    out = _run("steer_feature.py")
    clean = out.split("--- clean continuation ---")[1].split("--- steered")[0]
    steered = out.split("---\n", 2)[-1].split("\nsweep")[0]
    assert clean.strip() != steered.strip()  # steering visibly changes the generated code
    assert "feature_act" in out


def test_inspect_feature_demo(tmp_path):
    out = _run("inspect_feature.py", "--html-dir", str(tmp_path))
    assert out.count("=== feature") >= 3 and "logit effects" in out and "«" in out
    assert len(list(tmp_path.glob("feature_*.html"))) >= 3
    assert (tmp_path / "density.png").is_file()
