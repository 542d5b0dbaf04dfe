"""The command line: eval prints a report; --json is machine-readable."""

import json

from conftest import random_sae

import saehooks as sh
from saehooks.cli import main


def test_eval_json(tmp_path, capsys):
    random_sae(k=16).save(tmp_path / "sae")
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--n-tokens", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["l0"] == 16.0
    rows = sh.load_eval_tokens(2)  # 512 tokens: two rows of 256; BOS tokens excluded
    assert out["n_tokens"] == int((rows != rows[0, 0]).sum())
    assert 0 < out["ce_loss_clean"] < out["ce_loss_zero_ablation"]
    assert "feature_density" not in out


def test_eval_table_on_a_text_file(tmp_path, capsys):
    random_sae(k=16).save(tmp_path / "sae")
    source = (tmp_path / "code.py")
    source.write_text("def add(a, b):\n    return a + b\n\n" * 60)
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--text-file", str(source),
                 "--n-ctx", "64"]) == 0
    out = capsys.readouterr().out
    assert "ce_loss_score" in out and "nats/token" in out
