"""Looking at features: streaming top examples, logit effects, density plot, HTML, CLI."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import random_sae

from saehooks import cli
from saehooks.analysis import logits, stats
from saehooks.analysis.html import feature_html
from saehooks.data import sae_acts
from saehooks.errors import InputError
from saehooks.tl import hook_state


@pytest.fixture(scope="module")
def sae():
    return random_sae(hook_name="blocks.2.hook_resid_post", seed=4)


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    return eval_tokens[:5, :48].clone()


def _brute_force(model, sae, tokens, feature, k):
    acts = sae_acts(model, sae, tokens)[..., feature]
    acts = torch.where(tokens != model.tokenizer.bos_token_id, acts, torch.zeros_like(acts))
    flat = acts.flatten()
    order = torch.sort(-flat, stable=True).indices[:k]
    order = order[flat[order] > 0]
    return [(float(flat[i]), int(i) // tokens.shape[1], int(i) % tokens.shape[1]) for i in order]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_streaming_top_examples_equal_a_brute_force_pass(model, sae, tokens, batch_size):
    acts = sae_acts(model, sae, tokens)
    freq = (acts > 0).float().mean((0, 1))
    for feature in (int(freq.argmax()), int(((freq > 0) & (freq < 0.2)).nonzero()[0])):
        got = stats.top_activating_examples(
            model, sae, tokens, feature, k=7, context=4, batch_size=batch_size
        )
        want = _brute_force(model, sae, tokens, feature, 7)
        assert list(zip(got["sequence"], got["position"])) == [(s, p) for _, s, p in want]
        torch.testing.assert_close(
            torch.tensor(got["activation"].tolist()), torch.tensor([a for a, _, _ in want])
        )
        n = int((tokens != 0).sum())
        fired = int(((acts[..., feature] > 0) & (tokens != 0)).sum())
        assert got.attrs["frequency"] == pytest.approx(fired / n)
        assert got.attrs["n_tokens"] == n


def test_one_scan_serves_several_features_and_all_densities(model, sae, tokens):
    acts = sae_acts(model, sae, tokens)
    keep = tokens != model.tokenizer.bos_token_id
    freq = (acts[keep] > 0).float().mean(0)
    chosen = [int(f) for f in freq.topk(3).indices]
    scan = stats.scan_features(model, sae, tokens, chosen, k=4, context=2, batch_size=2)
    assert sorted(scan.examples) == sorted(chosen) and scan.n_tokens == int(keep.sum())
    torch.testing.assert_close(scan.density, freq)
    for f in chosen:
        want = _brute_force(model, sae, tokens, f, 4)
        got = scan.examples[f]
        assert list(zip(got["sequence"], got["position"])) == [(s, p) for _, s, p in want]


def test_example_rows_carry_context_and_per_token_activations(model, sae, tokens):
    feature = int((sae_acts(model, sae, tokens) > 0).float().mean((0, 1)).argmax())
    ex = stats.top_activating_examples(model, sae, tokens, feature, k=3, context=4)
    for row in ex.itertuples():
        at = row.position - row.context_start
        assert len(row.context_tokens) == len(row.context_acts) <= 9
        assert row.context_acts[at] == pytest.approx(row.activation)
        assert row.token == model.tokenizer.decode([int(tokens[row.sequence, row.position])])
        assert row.token_id == int(tokens[row.sequence, row.position])
        marked = re.search("«(.*)»", row.context, re.S).group(1)
        assert marked == row.token.replace("\n", stats.NEWLINE_MARK)
        assert "\n" not in row.context


def test_a_feature_that_never_fires_has_no_examples(model, sae, tokens):
    freq = (sae_acts(model, sae, tokens) > 0).float().mean((0, 1))
    dead = int((freq == 0).nonzero()[0])
    ex = stats.top_activating_examples(model, sae, tokens, dead, k=5)
    assert ex.empty and "activation" in ex.columns
    assert ex.attrs["frequency"] == 0 and ex.attrs["max_activation"] == 0


def test_logit_effects_are_the_decoder_row_through_the_unembedding(model, sae):
    table = logits.feature_logit_effects(model, sae, 9, k=5)
    row = sae.W_dec[9].detach()
    effects = (row - row.mean()) @ model.W_U
    torch.testing.assert_close(
        torch.tensor(table["promoted_effect"].tolist()), effects.topk(5).values
    )
    assert table["promoted_id"].tolist() == effects.topk(5).indices.tolist()
    assert table["suppressed_id"].tolist() == (-effects).topk(5).indices.tolist()
    assert table["promoted_effect"].is_monotonic_decreasing
    assert (table["suppressed_effect"] < 0).all()
    assert table.index.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(
        InputError,
        match=r"feature=-1 is out of range: this SAE has d_sae=512 "
        r"latents \(ids 0 … 511\)",
    ):
        logits.feature_logit_effects(model, sae, -1)


def test_density_histogram_png(tmp_path):
    density = torch.tensor([0.0, 0.0, 1e-4, 1e-3, 1e-2, 0.5])
    path = stats.feature_density_histogram(density, tmp_path / "sub" / "d.png", highlight=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feature_density_matches_activations(model, sae, tokens):
    density = stats.feature_density(model, sae, tokens, batch_size=2)
    acts = sae_acts(model, sae, tokens)[tokens != 0]
    torch.testing.assert_close(density, (acts > 0).float().mean(0))


def test_feature_html_is_self_contained(model, sae, tokens, tmp_path):
    before = hook_state(model)
    density = stats.feature_density(model, sae, tokens)
    feature = int(density.argmax())
    path = feature_html(
        model, sae, tokens, feature, tmp_path / "f.html", k=4, context=3, density=density
    )
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('class="tok hit"') == 4
    assert "data:image/png;base64," in page and "Logit effects" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    assert hook_state(model) == before


def test_cli_commands(model, sae, tmp_path, capsys):
    folder = tmp_path / "sae"
    sae.save(str(folder))
    parser = cli.build_parser()
    common = ["--sae", str(folder), "--n-seq", "2"]
    args = parser.parse_args(
        ["inspect", "--feature", "5", "--k", "3", "--html", str(tmp_path / "p.html"), *common]
    )
    assert cli.run(args, model=model) == 0
    out = capsys.readouterr().out
    assert "feature 5" in out and "logit effects" in out and (tmp_path / "p.html").is_file()
    args = parser.parse_args(["ablate", "--feature", "5", "6", *common])
    assert cli.run(args, model=model) == 0
    out = capsys.readouterr().out
    assert "loss_change" in out and "kl" in out
    args = parser.parse_args(
        [
            "steer",
            "--feature",
            "5",
            "--coefficient",
            "50",
            "--prompt",
            "def f(",
            "--max-new-tokens",
            "3",
            *common,
        ]
    )
    assert cli.run(args, model=model) == 0
    out = capsys.readouterr().out
    assert "clean continuation" in out and "steered continuation" in out
    assert parser.parse_args(["ablate", "--feature", "1"]).sae == cli.DEFAULT_SAE
