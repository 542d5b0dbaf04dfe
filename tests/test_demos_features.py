"""The feature demos run end to end against the shipped model and SAEs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from saehooks.reference import pretrained_sae_dir

ROOT = Path(__file__).resolve().parent.parent
SAE_NAME = "topk-k32-blocks.2.hook_resid_post"

needs_sae = pytest.mark.skipif(
    not (pretrained_sae_dir() / SAE_NAME).is_dir(),
    reason=f"shipped SAE {SAE_NAME!r} not in {pretrained_sae_dir()} yet (trained by issue 4)",
)


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "demos" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # a subprocess over the shipped model: .ci/run runs it
@needs_sae
def test_ablate_feature_demo():
    out = _run("ablate_feature.py")
    assert "loss change" in out and "Spearman" in out and "KL" in out


@pytest.mark.slow  # a subprocess over the shipped model: .ci/run runs it
@needs_sae
def test_steer_feature_demo():
    out = _run("steer_feature.py")
    clean = out.split("--- clean continuation ---")[1].split("--- steered")[0]
    steered = out.split("---\n", 2)[-1].split("\nsweep")[0]
    assert clean.strip() != steered.strip()  # steering visibly changes the generated code
    assert "feature_act" in out


@pytest.mark.slow  # a subprocess over the shipped model: .ci/run runs it
@needs_sae
def test_inspect_feature_demo(tmp_path):
    out = _run("inspect_feature.py", "--html-dir", str(tmp_path))
    assert out.count("=== feature") >= 3 and "logit effects" in out and "«" in out
    assert len(list(tmp_path.glob("feature_*.html"))) >= 3
    assert (tmp_path / "density.png").is_file()


def _find_features():
    path = ROOT / "pretrained" / "saes" / "find_features.py"
    spec = importlib.util.spec_from_file_location("find_features", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("find_features", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_find_features_lexer_labels():
    ff = _find_features()
    text = (
        "import os\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        if x:\n"
        "            if y:\n"
        "                s = 'msg'  # note\n"
        '        """doc"""\n'
    )
    doc = ff.lex(text)
    assert doc.complete

    def labelled(name: str) -> str:
        return "".join(ch for ch, on in zip(text, doc.char_labels[name]) if on)

    assert labelled("import_line") == "import os"
    assert labelled("in_comment") == "# note"
    assert labelled("in_string") == "'msg'"
    assert labelled("in_triple_string") == labelled("docstring") == '"""doc"""'
    assert labelled("block_colon") == "::::"
    assert labelled("block_colon_indent12") == ":"
    assert labelled("def_line") == "def __init__(self):"
    assert labelled("dunder_start") == "_"  # the first character of __init__
    assert "msg" not in labelled("indent>=12") and "s =" in labelled("indent>=12")
    assert ff._anchor(b"\n    ") == 4 and ff._anchor(b" foo") == 1

    class ByteLevelPieces:  # what a GPT-2-style tokenizer returns for ' x' and '\n  '
        def convert_ids_to_tokens(self, ids):
            return ["\u0120x", "\u010a\u0120\u0120"][: len(ids)]

    assert ff.token_bytes(ByteLevelPieces(), [0, 1]) == [b" x", b"\n  "]
