"""The command line: eval prints a report; --json is machine-readable."""

import json
import re

import pytest
import torch
from conftest import random_sae

import saehooks as sh
from saehooks.cli import main
from saehooks.cli.common import held_out_rows


def test_eval_json(model, tmp_path, capsys):
    random_sae(k=16).save(tmp_path / "sae")
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--n-tokens", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["l0"] == 16.0
    rows = held_out_rows(2)  # 512 tokens: two rows of 256 (the CLI's row rule); BOS excluded
    assert out["n_tokens"] == int((rows != rows[0, 0]).sum())
    assert "feature_density" not in out
    # the numbers of sh.evaluate on those rows
    report = sh.evaluate(model, random_sae(k=16), rows, progress=False)
    for key in (
        "ce_loss_clean",
        "ce_loss_spliced",
        "ce_loss_zero_ablation",
        "ce_loss_mean_ablation",
        "kl_div",
        "fvu",
        "mse",
    ):
        assert out[key] == pytest.approx(getattr(report, key), rel=1e-6), key


def test_eval_table_on_a_text_file(model, tmp_path, capsys):
    random_sae(k=16).save(tmp_path / "sae")
    source = tmp_path / "code.py"
    text = "def add(a, b):\n    return a + b\n\n" * 60
    source.write_text(text)
    assert (
        main(["eval", "--sae", str(tmp_path / "sae"), "--text-file", str(source), "--n-ctx", "64"])
        == 0
    )
    out = capsys.readouterr().out
    n_rows = model.to_tokens(text, prepend_bos=False).shape[1] // 63  # BOS + 63 tokens a row
    assert n_rows >= 2 and f"on {n_rows} x 64 tokens" in out
    assert re.search(r"^ce_loss_score\s+\S+\s+fraction$", out, re.M)
    assert re.search(r"^l0\s+16\.0000\s+latents/token$", out, re.M)
    assert re.search(rf"^n_tokens\s+{n_rows * 63}\.0000\s+tokens$", out, re.M)


def test_every_command_takes_threads_and_one_default_sae():
    from saehooks import cli

    parser = cli.build_parser()
    required = {
        "inspect": ["--feature", "1"],
        "ablate": ["--feature", "1"],
        "steer": ["--feature", "1", "--coefficient", "2", "--prompt", "x"],
        "cache": ["--hooks", "blocks.2.hook_resid_post", "--out", "cache"],
    }
    for command in cli.COMMANDS:
        args = parser.parse_args([command.NAME, "--threads", "1", *required.get(command.NAME, [])])
        assert args.threads == 1
        if command.NAME not in ("train", "cache"):  # these two make SAEs' inputs, not use them
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--n-tokens", "0"], "--n-tokens must be >= 1"),
        (["eval", "--threads", "-1", "--n-tokens", "256"], "--threads must be >= 0"),
        (["eval", "--text-file", "/nonexistent.txt"], "is not a file"),
        (
            [
                "steer",
                "--feature",
                "1",
                "--coefficient",
                "2",
                "--prompt",
                "x",
                "--max-new-tokens",
                "0",
            ],
            "--max-new-tokens must be >= 1",
        ),
        (
            [
                "steer",
                "--feature",
                "1",
                "--coefficient",
                "2",
                "--prompt",
                "x",
                "--max-new-tokens",
                "100000",
            ],
            "--max-new-tokens must be <=",
        ),
    ],
)
def test_command_line_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
