"""evaluate() and loss_increase_per_token() on the reference model."""

import pytest
import torch
from conftest import random_sae
from test_hooks import identity_sae

import saehooks as sh
from saehooks import metrics
from saehooks.errors import InputError, InputTypeError
from saehooks.evaluation import evaluate, loss_increase_per_token

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tokens(eval_tokens):
    return eval_tokens[:6, :96].clone()


@pytest.fixture(scope="module")
def report(model, tokens):
    return evaluate(model, random_sae(k=16), tokens, batch_size=4, progress=False)


def test_perfect_sae_scores_one(model, tokens):
    r = evaluate(model, identity_sae(), tokens, batch_size=3, progress=False)
    assert r.ce_loss_spliced == r.ce_loss_clean
    assert r.ce_loss_score == 1.0 and r.ce_loss_score_mean_ablation == 1.0
    assert r.kl_div == 0.0 and r.fvu == 0.0 and r.mse == 0.0
    # d_sae == d_in: a shifted identity (x + C > 0 everywhere), exact up to rounding
    sae = sh.SAE(sh.SAEConfig(d_in=256, d_sae=256, architecture="relu", hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(256))
        sae.W_dec.copy_(torch.eye(256))
        sae.b_dec.fill_(-200.0)
    r = evaluate(model, sae, tokens, batch_size=3, progress=False)
    assert r.ce_loss_spliced == pytest.approx(r.ce_loss_clean, abs=1e-4)
    assert r.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    assert r.fvu < 1e-8


def test_clean_loss_matches_the_model_loss_when_bos_counts(model, tokens):
    r = evaluate(model, random_sae(), tokens, batch_size=6, exclude_bos=False, progress=False)
    with torch.no_grad():
        expected = model(tokens, return_type="loss").item()
    assert r.ce_loss_clean == pytest.approx(expected, rel=1e-5)
    assert r.n_tokens == tokens.numel()


def test_report_against_independent_computation(model, tokens, report):
    sae = random_sae(k=16)
    bos = model.tokenizer.bos_token_id
    mask = tokens != bos
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK]
        recon = sae(x)
        spliced = model.run_with_hooks(
            tokens, fwd_hooks=[(HOOK, lambda a, hook: torch.where(mask[..., None], recon, a))]
        )
    predict = mask[:, :-1]
    ce_clean = metrics.next_token_ce(clean, tokens)[predict].mean().item()
    ce_spliced = metrics.next_token_ce(spliced, tokens)[predict].mean().item()
    kl = metrics.kl_div(clean[:, :-1], spliced[:, :-1])[predict].mean().item()
    assert report.ce_loss_clean == pytest.approx(ce_clean, rel=1e-5)
    assert report.ce_loss_spliced == pytest.approx(ce_spliced, rel=1e-5)
    assert report.kl_div == pytest.approx(kl, rel=1e-4)
    assert report.fvu == pytest.approx(metrics.fvu(x[mask], recon[mask]), rel=1e-5)
    assert report.mse == pytest.approx(metrics.mse(x[mask], recon[mask]), rel=1e-5)
    assert report.l0 == 16.0
    assert report.n_tokens == int(mask.sum())
    assert report.pca_rank == 16
    assert report.pca_fvu == pytest.approx(metrics.pca_fvu(x[mask], 16), rel=1e-4)
    acts = sae.encode(x[mask])
    assert torch.allclose(report.feature_density, (acts != 0).float().mean(0))
    assert report.dead_fraction == pytest.approx((acts != 0).sum(0).eq(0).float().mean().item())
    assert report.ce_loss_score == pytest.approx(
        (report.ce_loss_zero_ablation - ce_spliced) / (report.ce_loss_zero_ablation - ce_clean),
        rel=1e-4,
    )


def _plain_ce(logits, tokens, predict):
    """Mean next-token CE over the predicting positions, with torch's own cross_entropy."""
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten(), reduction="none"
    )
    return float(ce.reshape(predict.shape)[predict].mean())


@pytest.mark.parametrize("ablate_bos", [False, True])
def test_ablation_baselines_against_plain_hooks(model, tokens, report, ablate_bos):
    """Zero- and mean-ablation CE recomputed with plain TransformerLens hooks: the
    activation replaced by 0 / by its mean over the non-BOS positions, at the non-BOS
    positions (every position with ablate_bos=True, SAELens' zero ablation)."""
    mask = tokens != model.tokenizer.bos_token_id
    where = torch.ones_like(mask) if ablate_bos else mask
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK]
        mean = x[mask].double().mean(0).float()
        zero_logits = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (HOOK, lambda a, hook: torch.where(where[..., None], torch.zeros_like(a), a))
            ],
        )
        mean_logits = model.run_with_hooks(
            tokens,
            fwd_hooks=[(HOOK, lambda a, hook: torch.where(where[..., None], mean.expand_as(a), a))],
        )
        clean_logits = model(tokens)
    predict = mask[:, :-1]
    ce_zero, ce_mean = (
        _plain_ce(zero_logits, tokens, predict),
        _plain_ce(mean_logits, tokens, predict),
    )
    ce_clean = _plain_ce(clean_logits, tokens, predict)
    assert ce_zero > ce_mean > ce_clean + 0.1  # the baselines really ablate
    r = (
        report
        if not ablate_bos
        else evaluate(
            model, random_sae(k=16), tokens, batch_size=4, progress=False, ablate_bos=True
        )
    )
    assert r.ablate_bos is ablate_bos
    assert r.ce_loss_zero_ablation == pytest.approx(ce_zero, rel=1e-5)
    assert r.ce_loss_mean_ablation == pytest.approx(ce_mean, rel=1e-5)
    assert r.ce_loss_score == pytest.approx(
        (ce_zero - r.ce_loss_spliced) / (ce_zero - ce_clean), rel=1e-4
    )
    assert r.ce_loss_score_mean_ablation == pytest.approx(
        (ce_mean - r.ce_loss_spliced) / (ce_mean - ce_clean), rel=1e-4
    )


def test_results_do_not_depend_on_batch_size(model, tokens, report):
    other = evaluate(model, random_sae(k=16), tokens, batch_size=5, progress=False)
    for key, value in report.to_dict().items():
        if isinstance(value, float):
            assert getattr(other, key) == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_report_tables(report):
    frame = report.to_frame()
    assert frame.loc["ce_loss_clean", "unit"] == "nats/token"
    assert frame.loc["fvu", "value"] == report.fvu
    d = report.to_dict()
    assert len(d["feature_density"]) == 512
    assert d["ce_loss_increase"] == report.ce_loss_spliced - report.ce_loss_clean
    assert "ce_loss_score" in str(report)


def test_loss_increase_per_token(model, tokens):
    sae = random_sae(k=16)
    table = loss_increase_per_token(model, sae, tokens[:2], progress=False)
    bos = model.tokenizer.bos_token_id
    assert len(table) == int((tokens[:2, :-1] != bos).sum())
    assert list(table.columns) == [
        "sequence",
        "position",
        "token",
        "loss_clean",
        "loss_spliced",
        "delta",
    ]
    row = table.iloc[10]
    assert row.token == model.to_string(tokens[row.sequence, row.position : row.position + 1])
    report = evaluate(model, sae, tokens[:2], progress=False)
    assert table.loss_spliced.mean() == pytest.approx(report.ce_loss_spliced, rel=1e-5)
    assert table.delta.mean() == pytest.approx(report.ce_loss_increase, rel=1e-4, abs=1e-6)


def test_bad_tokens(model):
    with pytest.raises(InputTypeError, match="integer tensor"):
        evaluate(model, random_sae(), torch.randn(2, 5), progress=False)
    with pytest.raises(InputError, match=r"pos >= 2\], got \(5, 1\)"):
        evaluate(model, random_sae(), torch.zeros(5, 1, dtype=torch.long), progress=False)
    with pytest.raises(InputError, match="shape"):
        evaluate(model, random_sae(), torch.zeros(1, 2, 3, dtype=torch.long), progress=False)
    with pytest.raises(InputTypeError, match="to_tokens"):
        evaluate(model, random_sae(), "def f(): pass", progress=False)
    with pytest.raises(
        InputError,
        match=r"ids \[4096\] outside the model's vocabulary "
        r"0 … 4095; tokenize with this model's tokenizer",
    ):
        evaluate(model, random_sae(), torch.tensor([[0, 4096]]), progress=False)
    # longer than the context window: a named error, not the embedding's IndexError
    with pytest.raises(InputError, match=r"n_ctx=256; cut them, e.g. tokens\[:, :256\]"):
        evaluate(model, random_sae(), torch.ones(1, 257, dtype=torch.long), progress=False)


def test_feature_tools_share_the_token_checker(model):
    sae = random_sae()
    with pytest.raises(InputTypeError, match="integer tensor"):
        sh.feature_ablation_effects(model, sae, torch.zeros(1, 4), [0])
    one_row = sh.load_eval_tokens(1)[0, :16]
    assert torch.equal(sh.checks.check_tokens(one_row), one_row[None])
