"""The shipped reference model: offline loading, quality vs its card, tokenizer."""

import json

import pytest
import torch

import saehooks as sh
from saehooks.metrics import next_token_ce
from saehooks.reference import model_card, reference_model_dir


def test_eval_tokens_shape_and_bos():
    tokens = sh.load_eval_tokens()
    card = model_card()
    assert tuple(tokens.shape) == tuple(card["eval"]["eval_tokens_shape"])
    assert tokens.numel() >= 200_000 and tokens.dtype == torch.long
    assert (tokens[:, 0] == card["tokenizer"]["bos_id"]).all()
    assert sh.load_eval_tokens(3).shape == (3, tokens.shape[1])


def test_held_out_loss_matches_the_card(model):
    tokens = sh.load_eval_tokens()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(tokens), 64):
            ce = next_token_ce(model(tokens[i:i + 64]), tokens[i:i + 64])
            total += ce.double().sum().item()
            count += ce.numel()
    card = model_card()["eval"]
    assert total / count == pytest.approx(card["held_out_ce_nats_per_token"], abs=0.01)
    assert card["held_out_ce_nats_per_token"] <= 3.3
    assert card["held_out_ce_nats_per_token"] < card["unigram_baseline_nats_per_token"] - 2


def test_tokenizer_round_trips_python_source(model):
    source = 'def f(self, x):\n    """Doc."""\n    return {"a": [x ** 2, \'é\\t\']}  # done\n'
    tokens = model.to_tokens(source)
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == source


def test_model_is_hookable_in_compatibility_mode(model):
    assert "blocks.3.hook_resid_post" in model.hook_dict
    assert sh.models.model_processing(model)["fold_ln"] is True
    assert model.cfg.n_layers == 4 and model.cfg.d_model == 256


def test_load_model_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        sh.load_model(str(missing))
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"notamodel.*config.json"):
        sh.load_model(str(tmp_path / "notamodel"))


def test_card_records_the_training(tmp_path):
    card = json.loads((reference_model_dir() / "model_card.json").read_text())
    assert card["training"]["tokens_seen"] >= 8_000_000
    assert card["corpus"]["files_held_out"] > 0
    assert (reference_model_dir().parent / "LICENSE-PSF.txt").is_file()


def test_train_tokens_rebuild_the_card_split_without_eval_rows():
    from saehooks.reference import load_train_tokens

    card = model_card()
    rows = load_train_tokens(strict=True)
    n_ctx = card["architecture"]["n_ctx"]
    # the card's training stream, cut into rows of BOS + (n_ctx - 1) tokens
    assert rows.shape == (card["corpus"]["tokens_train"] // (n_ctx - 1), n_ctx)
    assert (rows[:, 0] == rows[0, 0]).all() and rows[0, 0].item() == 0  # <|endoftext|> = 0
    eval_rows = {tuple(r.tolist()) for r in sh.load_eval_tokens()}
    assert not any(tuple(r.tolist()) in eval_rows for r in rows[:2000])
    assert torch.equal(load_train_tokens(max_rows=5), rows[:5])
