"""benchmarks/frontier.py's pieces on tiny random activations (no model, ~2 s)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from saehooks import metrics
from saehooks.errors import InputError
from saehooks.io.common import write_safetensors

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"
_spec = importlib.util.spec_from_file_location("frontier_benchmark", _PATH)
frontier = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = frontier
_spec.loader.exec_module(frontier)


def _acts(n: int = 600, d: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, d)  # a clear spectrum
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    return (torch.randn(n, d, generator=gen) * scales) @ basis.T + 0.5


def test_points_cover_the_issue_list():
    pts = frontier.points(4096)
    names = list(pts)
    for k in (8, 16, 32, 64, 128):
        assert pts[f"topk-k{k}"]["k"] == k and pts[f"topk-k{k}"]["architecture"] == "topk"
        assert pts[f"batchtopk-k{k}"]["architecture"] == "batchtopk"
        assert pts[f"matryoshka-k{k}"]["architecture"] == "matryoshka_batchtopk"
        assert pts[f"jumprelu-l0_{k}"]["target_l0"] == float(k)
    for k in (16, 32, 64):
        assert pts[f"l1-l0_{k}"]["target_l0"] == float(k)
        # L0 ≈ 1.35 ρ d_sae, so ρ = L0 / (1.35 · 4096)
        assert pts[f"kl-l0_{k}"]["kl_rho"] == pytest.approx(k / (1.35 * 4096))
    assert pts["mlp-l0_32"]["architecture"] == "mlp"
    assert pts["saelens-topk-k32"]["_trainer"] == "saelens"
    main = [n for n in names if not pts[n].get("_extra")]
    assert len(main) == 5 * 4 + 3 + 3 + 1 + 1 and main[-1] == "saelens-topk-k32"
    extra = tuple(n for n in names if pts[n].get("_extra"))
    assert sum(n.startswith("variant-topk-k32") for n in extra) == 4
    tlr = [n for n in extra if n.startswith("variant-jumprelu-l0_32-tlr")]
    assert len(tlr) == 3 and len(extra) == 7
    assert [pts[n]["jumprelu_threshold_lr_factor"] for n in tlr] == [1.0, 3.0, 10.0]
    assert pts["jumprelu-l0_32"]["jumprelu_threshold_lr_factor"] == 30.0
    # the investigation variants run only when named
    assert frontier.select(names, None, extra) == main
    assert frontier.select(names, ["variant"], extra) == list(extra)


def test_select_by_prefix_keeps_order_and_refuses_unknown():
    names = ["topk-k8", "topk-k16", "l1-l0_16", "kl-l0_16"]
    assert frontier.select(names, None) == names
    assert frontier.select(names, ["kl", "topk-k8"]) == ["topk-k8", "kl-l0_16"]
    with pytest.raises(InputError, match="nope"):
        frontier.select(names, ["nope"])


def test_pca_sae_is_the_exact_pca_reconstruction():
    x = _acts()
    for rank in (1, 3, 12):
        sae = frontier.pca_sae(x, rank)
        assert sae.cfg.d_sae == 2 * rank
        with torch.no_grad():
            acts = sae.encode(x)
            x_hat = sae.decode(acts)
        # plain reference: project the centred data on its top right singular vectors
        mean = x.double().mean(0)
        _, _, vh = torch.linalg.svd(x.double() - mean, full_matrices=False)
        ref = mean + (x.double() - mean) @ vh[:rank].T @ vh[:rank]
        torch.testing.assert_close(x_hat.double(), ref, rtol=0, atol=1e-4)
        assert metrics.fvu(x, x_hat) == pytest.approx(metrics.pca_fvu(x, rank), abs=1e-5)
        # exactly `rank` latents fire per token (one sign of each projection)
        assert torch.equal((acts > 0).sum(1), torch.full((x.shape[0],), rank))


def test_results_append_skip_and_report(tmp_path):
    path = tmp_path / "frontier.csv"
    assert frontier.read_results(path) == []
    base = {"tokens": 1000, "d_sae": 64, "eval_rows": 4, "family": "topk", "l0": 8.0,
            "fvu": 0.25, "ce_loss_increase": 0.1, "ce_loss_score": 0.9, "dead_fraction": 0.0,
            "pca_fvu": 0.5, "train_seconds": 1.0}  # fmt: skip
    frontier.append_result(path, {"point": "topk-k8", **base})
    frontier.append_result(path, {"point": "topk-k16", **base, "l0": 16.0, "fvu": 0.125})
    rows = frontier.read_results(path)
    assert [r["point"] for r in rows] == ["topk-k8", "topk-k16"]
    assert path.read_text().count("point,family") == 1  # one header
    assert frontier.finished(rows, "topk-k8", 1000, 64, 4)
    assert not frontier.finished(rows, "topk-k8", 2000, 64, 4)  # another budget: redo
    assert not frontier.finished(rows, "topk-k8", 1000, 64, 8)  # another eval set: redo
    assert not frontier.finished(rows, "topk-k32", 1000, 64, 4)
    pca = [{"rank": "8", "fvu": "0.5", "ce_loss_increase": "0.3", "ce_loss_score": "0.7"}]
    table = frontier.markdown_table(rows, pca)
    lines = table.strip().split("\n")
    assert lines[0].startswith("| point | l0 | fvu |")
    assert lines[2].startswith("| topk-k8 | 8.0 | 0.25 |")
    assert lines[3].startswith("| topk-k16 | 16.0 | 0.125 |")
    assert lines[4].startswith("| PCA rank 8 | 8 | 0.50000 | 0.30000 |")
    pytest.importorskip("matplotlib")
    args = argparse.Namespace(tokens=1000, d_sae=64, eval_rows=4)
    (tmp_path / "pca.csv").write_text("rank,fvu,ce_loss_increase,ce_loss_score\n8,0.5,0.3,0.7\n")
    assert frontier.write_report(tmp_path, args) == table
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_parse_tokens():
    assert frontier.parse_tokens("10M") == 10_000_000
    assert frontier.parse_tokens("300k") == 300_000
    assert frontier.parse_tokens("1.5e6") == 1_500_000
    assert frontier.parse_tokens("4096") == 4096


def _tiny_cache(folder: Path, x: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    half = x.shape[0] // 2
    for i, part in enumerate((x[:half], x[half:])):
        write_safetensors(folder / f"shard_{i:05d}.safetensors", {"acts": part.contiguous()})
    info = {"hook_name": frontier.HOOK, "d_in": x.shape[1], "n_tokens": x.shape[0],
            "n_shards": 2, "shard_tokens": half}  # fmt: skip
    (folder / "cache.json").write_text(json.dumps(info))
    return folder


def test_train_point_resumes_a_killed_run_to_the_same_weights(tmp_path):
    from saehooks.training.stores import CachedActivationStore
    from saehooks.training.trainer import Trainer

    cache = _tiny_cache(tmp_path / "cache", _acts(n=2048, d=8).float())
    args = argparse.Namespace(d_sae=16, tokens=2048, batch_size=128, lr=1e-3, seed=0,
                              checkpoint_every=512, progress=False)  # fmt: skip
    over = {"architecture": "topk", "k": 2, "_family": "topk", "_target": 2}

    def store():
        return CachedActivationStore(cache, 128, 0)

    cfg = frontier.train_config("topk-k2", over, args, tmp_path / "a")
    assert (cfg.k, cfg.d_sae, cfg.total_tokens, cfg.batch_size) == (2, 16, 2048, 128)
    whole, _, dead = frontier.train_point(None, store(), cfg)
    assert 0.0 <= dead <= 1.0
    assert not (tmp_path / "a" / "topk-k2" / "checkpoints").exists()  # cleaned up
    # a run killed after 7 of 16 steps (checkpoint at step 4), then continued
    cfg_b = frontier.train_config("topk-k2", over, args, tmp_path / "b")
    assert Trainer(None, store(), cfg_b).run(max_steps=7) is None
    resumed, _, _ = frontier.train_point(None, store(), cfg_b)
    for name, p in whole.named_parameters():
        torch.testing.assert_close(dict(resumed.named_parameters())[name], p, rtol=0, atol=0)


def test_rescaled_topk_objective_is_saelens_parametrisation(tmp_path):
    """SAELens' TopK (rescale_acts_by_decoder_norm) in this trainer: free decoder rows
    starting at norm 0.1, selection by pre · ‖W_dec[j]‖, saved exactly."""
    from saehooks.training.trainer import Trainer

    cache = _tiny_cache(tmp_path / "cache", _acts(n=2048, d=8).float())
    args = argparse.Namespace(d_sae=16, tokens=1024, batch_size=128, lr=1e-2, seed=0,
                              checkpoint_every=0, progress=False)  # fmt: skip
    over = frontier.points(16)["variant-topk-k32-rescaled"] | {"k": 3}
    cfg = frontier.train_config("rescaled", over, args, tmp_path)
    from saehooks.training.stores import CachedActivationStore

    with frontier.objective_for_topk(frontier.rescaled_topk_objective()):
        trainer = Trainer(None, CachedActivationStore(cache, 128, 0), cfg)
        norms = trainer.sae.W_dec.detach().norm(dim=-1)
        torch.testing.assert_close(norms, torch.full((16,), 0.1))
        sae = trainer.run()
    from saehooks.training import objectives
    from saehooks.training.objectives import TopKObjective

    assert objectives.OBJECTIVES["topk"] is TopKObjective  # restored after the block
    assert sae.cfg.rescale_acts_by_decoder_norm and sae.cfg.k == 3
    t = trainer.sae
    norms = t.W_dec.detach().norm(dim=-1)
    assert (norms - 1).abs().max() > 1e-3  # rows are free, not renormalised
    # plain reference in training space: top 3 of pre·‖W_dec[j]‖, x̂ = Σ relu(pre_j) W_dec[j]
    x = _acts(n=64, d=8, seed=5).float()
    with torch.no_grad():
        xs = x * trainer.scale
        pre = (xs - t.b_dec) @ t.W_enc + t.b_enc
        idx = (pre * norms).topk(3, dim=-1).indices
        acts = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
        ref = (acts @ t.W_dec + t.b_dec) / trainer.scale
        torch.testing.assert_close(sae.decode(sae.encode(x)), ref, rtol=1e-4, atol=1e-5)


def test_open_cache_never_overwrites_an_unfinished_cache(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    shard = folder / "shard_00000.safetensors"
    write_safetensors(shard, {"acts": torch.ones(4, 3)})
    before = shard.read_bytes()
    with pytest.raises(InputError, match="no finished cache"):
        frontier.open_cache(None, folder, tmp_path / "work", 4, 0)
    assert shard.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [shard.name]
