"""The command line: eval prints a report; --json is machine-readable."""

import json

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks.cli import main
from saehooks.cli.common import held_out_rows


def test_eval_json(tmp_path, capsys):
    random_sae(k=16).save(tmp_path / "sae")
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--n-tokens", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["l0"] == 16.0
    rows = held_out_rows(2)  # 512 tokens: two rows of 256 (the CLI's row rule); BOS excluded
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


def test_every_command_takes_threads_and_one_default_sae():
    from saehooks import cli

    parser = cli.build_parser()
    required = {"inspect": ["--feature", "1"], "ablate": ["--feature", "1"],
                "steer": ["--feature", "1", "--coefficient", "2", "--prompt", "x"]}
    for command in cli.COMMANDS:
        args = parser.parse_args([command.NAME, "--threads", "1",
                                  *required.get(command.NAME, [])])
        assert args.threads == 1
        if command.NAME != "train":
            assert args.sae == cli.DEFAULT_SAE


def test_the_row_rule_spreads_rows_over_the_held_out_set():
    rows = sh.load_eval_tokens()
    three = held_out_rows(3)
    assert torch.equal(three[0], rows[0]) and torch.equal(three[-1], rows[-1])
    middle = [i for i in range(len(rows)) if torch.equal(rows[i], three[1])]
    assert middle and abs(middle[0] - (len(rows) - 1) / 2) <= 1
    assert torch.equal(held_out_rows(None), rows)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    assert main(["eval", "--sae", "no-such-sae"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("saehooks eval: error: ") and err.count("\n") == 1

    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(sh, "load_sae", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["eval"])
