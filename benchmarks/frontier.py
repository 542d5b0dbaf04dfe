"""The sparsity-fidelity frontier: every architecture at one token budget, measured alike.

On cached ``blocks.2.hook_resid_post`` activations of the reference LM, trains one SAE
per point at the same token budget, data order (one cache, one seed, one batch size)
and width, and evaluates each on the same held-out rows with :func:`saehooks.evaluate`
(FVU, ce_loss_increase, ce_loss_score, KL, dead fraction, L0):

- ``topk-k{8,16,32,64,128}`` (Gao et al. 2024); ``batchtopk-k*`` (Bussmann et al.
  2024) and ``matryoshka-k*`` (Bussmann et al. 2025) at the same mean L0s;
  ``jumprelu-l0_*`` (Rajamanoharan et al. 2024) steered to the same L0s by the
  target-L0 controller, thresholds at 30x the learning rate;
- ``l1-l0_{16,32,64}`` (Anthropic April 2024; λ steered to the target L0) and
  ``kl-l0_{16,32,64}`` (Ng 2011; ρ = L0 / (1.35 d_sae), its measured L0 ≈ 1.35 ρ d_sae);
- ``mlp-l0_32``: the seed's SAE with a hidden layer on each side (L1 on the latents);
- ``saelens-topk-k32``: SAELens' own trainer (TopK k 32, its defaults but lr and the
  budget) on the same cached batches, where ``sae_lens`` is importable (the TL3 env);
  skipped otherwise.

Run only when ``--only`` names them (``--only topk-k32 variant``), the investigation of
SAELens' TopK parametrisation in this trainer (:func:`rescaled_topk_objective`):
``variant-topk-k32-rescaled`` (free decoder rows from norm 0.1, top-k of
``pre · ‖W_dec[j]‖``), ``-rescaled-nofit`` (also without ``fit_encoder_scale``: SAELens'
``W_enc = W_decᵀ`` start), ``-rescaled-norm1`` (the parametrisation from unit rows) and
``variant-topk-k32-lr3e-3`` (the plain trainer at 3x the learning rate); and
``variant-jumprelu-l0_32-tlr{1,3,10}``, JumpReLU at other threshold learning-rate
factors than the frontier's :data:`JUMPRELU_THRESHOLD_LR_FACTOR`.

Beside them, the PCA baseline: the best rank-r affine reconstruction of the same
held-out activations, spliced into the model like an SAE (as an exact ReLU "SAE" with
latents ``±u_i``, so the same :func:`saehooks.evaluate` measures it), at ranks
4..128.

::

    python benchmarks/frontier.py --cache /work/sae_work/cache/blocks.2.hook_resid_post \\
        [--tokens 10M] [--d-sae 4096] [--eval-rows 256] [--threads 2] [--only topk-k32 l1]

Writes ``frontier.csv`` (one row per finished point, appended as each finishes),
``pca.csv``, ``frontier.md`` and ``frontier.png`` (FVU and ce_loss_increase against L0,
log x, PCA as a line) into ``--out`` (default ``benchmarks/frontier_results``).
Resumable: a rerun skips the points already in the CSV at the same tokens, width and
evaluation rows, and continues a point that was killed from its last checkpoint
(``--work``, default ``runs/frontier``). Without ``--cache`` (or with an empty
folder) the training split's activations are cached first with the library's cache
writer. ``--report-only`` redraws the table and plot from the CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HOOK = "blocks.2.hook_resid_post"
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "frontier_results"
L0S = (8, 16, 32, 64, 128)
SPARSITIES = (16, 32, 64)
PCA_RANKS = (4, 8, 16, 32, 64, 128)  # rank d_in (256) is exact: FVU 0, +0 nats
COLUMNS = (
    "point", "family", "architecture", "target_l0", "tokens", "d_sae", "eval_rows", "l0",
    "fvu", "ce_loss_increase", "ce_loss_score", "kl_div", "dead_fraction", "pca_fvu",
    "train_dead_fraction", "train_seconds", "tokens_per_s",
)  # fmt: skip
"""Columns of ``frontier.csv``; ``pca_fvu`` is PCA's at rank round(l0) on the same tokens;
``train_dead_fraction`` is the trainer's own count (no firing in its last window)."""
JUMPRELU_THRESHOLD_LR_FACTOR = 30.0
"""The thresholds' learning rate over ``lr`` for the ``jumprelu-*`` points. At 1M tokens
(244 steps) and target L0 32 (the ``variant-jumprelu-l0_32-tlr*`` points): factor 1
leaves L0 at 164, 3 at 88; 10 reaches 30.1 (FVU 0.183, 1.4% of latents unfired on the
held-out rows), 30 reaches 33.4 (FVU 0.168, 8.5% unfired)."""
KL_L0_PER_RHO = 1.35  # measured: L0 ≈ 1.35 ρ d_sae (TrainConfig.kl_rho's docstring)


def points(d_sae: int) -> dict[str, dict[str, Any]]:
    """``{point name: TrainConfig overrides}`` of the frontier, in training order.

    ``_family`` and ``_target`` (the L0 aimed at) are labels for the table and plot, not
    config fields; ``_trainer: "saelens"`` marks the SAELens point.
    """
    out: dict[str, dict[str, Any]] = {}
    for k in L0S:
        out[f"topk-k{k}"] = {"architecture": "topk", "k": k, "_family": "topk", "_target": k}
    for k in L0S:
        out[f"batchtopk-k{k}"] = {
            "architecture": "batchtopk", "k": k, "_family": "batchtopk", "_target": k,
        }  # fmt: skip
    for k in L0S:
        out[f"matryoshka-k{k}"] = {
            "architecture": "matryoshka_batchtopk", "k": k, "_family": "matryoshka",
            "_target": k,
        }  # fmt: skip
    for k in L0S:
        out[f"jumprelu-l0_{k}"] = {
            "architecture": "jumprelu", "target_l0": float(k),
            "jumprelu_threshold_lr_factor": JUMPRELU_THRESHOLD_LR_FACTOR, "_family": "jumprelu",
            "_target": k,
        }  # fmt: skip
    for k in SPARSITIES:
        out[f"l1-l0_{k}"] = {
            "architecture": "l1", "target_l0": float(k), "_family": "l1", "_target": k,
        }  # fmt: skip
    for k in SPARSITIES:
        rho = min(0.5, k / (KL_L0_PER_RHO * d_sae))
        out[f"kl-l0_{k}"] = {"architecture": "kl", "kl_rho": rho, "_family": "kl", "_target": k}
    out["mlp-l0_32"] = {"architecture": "mlp", "target_l0": 32.0, "_family": "mlp", "_target": 32}
    out["saelens-topk-k32"] = {"_trainer": "saelens", "k": 32, "_family": "saelens", "_target": 32}
    # SAELens' TopK parametrisation in this trainer (run only when --only names them)
    variant = {"architecture": "topk", "k": 32, "_family": "topk-k32 variants", "_target": 32,
               "_extra": True}  # fmt: skip
    out["variant-topk-k32-rescaled"] = {**variant, "_rescaled": True, "decoder_init_norm": 0.1}
    out["variant-topk-k32-rescaled-nofit"] = {
        **variant, "_rescaled": True, "decoder_init_norm": 0.1, "fit_encoder_scale": False,
    }  # fmt: skip
    out["variant-topk-k32-rescaled-norm1"] = {**variant, "_rescaled": True}
    out["variant-topk-k32-lr3e-3"] = {**variant, "lr": 3e-3}
    # JumpReLU's threshold learning rate at short budgets (run only when --only names them)
    for factor in (1, 3, 10):
        out[f"variant-jumprelu-l0_32-tlr{factor}"] = {
            "architecture": "jumprelu", "target_l0": 32.0, "jumprelu_threshold_lr_factor":
            float(factor), "_family": "jumprelu-l0_32 variants", "_target": 32, "_extra": True,
        }  # fmt: skip
    return out


def select(names: list[str], only: list[str] | None, extra: tuple[str, ...] = ()) -> list[str]:
    """The point names that start with one of ``only``, in order; if ``only`` is empty,
    all but the ``extra`` ones (the investigation variants, run when named).

    Raises:
        InputError: a prefix that matches no point.
    """
    from saehooks.errors import InputError

    if not only:
        return [n for n in names if n not in extra]
    unknown = [o for o in only if not any(n.startswith(o) for n in names)]
    if unknown:
        raise InputError(
            f"--only {' '.join(unknown)} matches no point; pass prefixes of: {', '.join(names)}"
        )
    return [n for n in names if n.startswith(tuple(only))]


# ---- results file -------------------------------------------------------------------
def read_results(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty if there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def finished(rows: list[dict[str, str]], name: str, tokens: int, d_sae: int, eval_rows: int):
    """Whether ``rows`` hold point ``name`` at this budget, width and evaluation set."""
    key = (name, str(tokens), str(d_sae), str(eval_rows))
    return any((r["point"], r["tokens"], r["d_sae"], r["eval_rows"]) == key for r in rows)


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one row (header first if the file is new); flushed at once."""
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({c: row.get(c, "") for c in COLUMNS})


# ---- data ---------------------------------------------------------------------------
def open_cache(model, cache_dir: Path | None, work: Path, batch_size: int, seed: int):
    """The cached activation store of the training split at :data:`HOOK`.

    A finished cache in ``cache_dir`` (the hook's folder, or a ``saehooks cache`` root
    holding one) is used as it is, after checking its hook and model; it is never
    rewritten here (other runs may be reading it). With none, in an empty or new
    folder, one pass over the training split is cached there (or in ``work/cache``) by
    :func:`~saehooks.training.activation_cache.cache_activations`.

    Raises:
        InputError: the cache holds another hook's or model's activations, or the
            folder holds files but no finished cache (a writer may still be at work).
    """
    from saehooks.errors import InputError
    from saehooks.reference import load_train_tokens
    from saehooks.training.activation_cache import (
        cache_activations,
        model_fingerprint,
        read_cache_info,
    )
    from saehooks.training.stores import CachedActivationStore

    folder = Path(cache_dir) if cache_dir else work / "cache"
    if read_cache_info(folder) is None and read_cache_info(folder / HOOK) is not None:
        folder = folder / HOOK
    info = read_cache_info(folder)
    if info is None and folder.is_dir() and any(folder.iterdir()):
        raise InputError(
            f"{folder} holds files but no finished cache ({folder / 'cache.json'} missing): "
            "another job may still be writing it; wait for it, or pass an empty folder"
        )
    if info is None:
        cache_activations(model, load_train_tokens(), HOOK, folder, folder_per_hook=False)
        info = read_cache_info(folder)
    from saehooks import tl

    # the fingerprint sums the parameters of the model object, which differ between
    # backends (a TL3 HookedTransformer, a TL4 TransformerBridge) of the same weights
    backend = tl.model_processing(model).get("backend")
    same_backend = (info.get("model_processing") or {}).get("backend") == backend
    same_model = (
        info.get("model_fingerprint") == model_fingerprint(model)
        if same_backend
        else info.get("model_name") == tl.model_name(model)
    )
    if info["hook_name"] != HOOK or not same_model:
        raise InputError(
            f"{folder} caches {info['hook_name']} of model {info.get('model_name')!r} "
            f"(fingerprint {info.get('model_fingerprint')}), not {HOOK} of the reference "
            "model; pass --cache with a cache of the reference model, or an empty folder"
        )
    return CachedActivationStore(folder, batch_size, seed)


def heldout_activations(model, tokens: torch.Tensor) -> torch.Tensor:
    """Raw activations ``[n, d_in]`` at :data:`HOOK` of ``tokens``, BOS positions
    dropped (the positions :func:`saehooks.evaluate` averages over)."""
    from saehooks import tl

    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=HOOK, stop_at_layer=tl.block_index(HOOK) + 1
        )
    return cache[HOOK][tokens != model.tokenizer.bos_token_id].float()


# ---- PCA baseline -------------------------------------------------------------------
def pca_sae(acts: torch.Tensor, rank: int):
    """The rank-``rank`` PCA reconstruction of ``acts [n, d_in]`` as an exact ReLU SAE.

    With the mean ``m`` and the top principal directions ``U [d_in, r]``:
    ``W_enc = [U, −U]``, ``W_dec = W_encᵀ``, ``b_dec = m``, ``b_enc = 0``, so
    ``relu(p) − relu(−p) = p`` for ``p = (x − m) U`` and ``x̂ = m + p Uᵀ``: the best
    rank-r affine reconstruction (Eckart–Young). ``2 rank`` latents, of which ``rank``
    fire on a token (fewer only where a projection is exactly 0).
    """
    from saehooks import SAE, SAEConfig

    x = acts.double()
    mean = x.mean(0)
    _, vectors = torch.linalg.eigh((x - mean).T @ (x - mean))
    u = vectors.flip(1)[:, :rank]
    sae = SAE(SAEConfig(d_in=acts.shape[1], d_sae=2 * rank, architecture="relu", hook_name=HOOK))
    with torch.no_grad():
        w = torch.cat([u, -u], 1).float()
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.float())
    return sae.eval()


def pca_baseline(model, tokens, acts, ranks, batch_size: int = 8) -> list[dict[str, float]]:
    """FVU and ce_loss_increase of the PCA baseline at each rank (``rank`` ≤ d_in)."""
    import saehooks as sh

    out = []
    for r in ranks:
        if r > acts.shape[1]:
            continue
        report = sh.evaluate(model, pca_sae(acts, r), tokens, batch_size, progress=False)
        out.append(
            {"rank": r, "fvu": report.fvu, "ce_loss_increase": report.ce_loss_increase,
             "ce_loss_score": report.ce_loss_score}
        )  # fmt: skip
    return out


# ---- training -----------------------------------------------------------------------
def train_config(name: str, overrides: dict[str, Any], args, work: Path):
    """The point's :class:`~saehooks.TrainConfig`: the shared settings and its overrides."""
    from saehooks import TrainConfig

    fields = {"lr": args.lr, **{k: v for k, v in overrides.items() if not k.startswith("_")}}
    return TrainConfig(
        hook_name=HOOK,
        d_sae=args.d_sae,
        total_tokens=args.tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every_tokens=args.checkpoint_every,
        progress_bar=args.progress,
        out_dir=str(work / name),
        **fields,
    )


def rescaled_topk_objective():
    """:class:`~saehooks.training.objectives.TopKObjective` with SAELens' TopK
    parametrisation (``TopKTrainingSAE``, ``rescale_acts_by_decoder_norm=True``).

    SAELens keeps decoder rows free (starting at norm ``decoder_init_norm``, 0.1 there),
    selects the top k of ``pre_j · ‖W_dec[j]‖`` and decodes ``relu(pre_j ‖W_dec[j]‖) ·
    W_dec[j] / ‖W_dec[j]‖``, which is ``relu(pre_j) W_dec[j]`` for ``‖W_dec[j]‖ > 0``:
    so the reconstruction and its gradients are the plain TopK ones; only the selection
    (by contribution ``pre_j ‖W_dec[j]‖``) and the unconstrained rows (no projection,
    no renormalisation: Adam's step then moves a 0.1-norm row's direction 10x as far)
    differ. Saved as a ``topk`` SAE with ``rescale_acts_by_decoder_norm=True`` (exact:
    the input normalisation scales every row's norm alike). AuxK still picks dead
    latents by ``pre``.
    """
    from saehooks.training import sparse
    from saehooks.training.objectives import TopKObjective

    class RescaledTopKObjective(TopKObjective):
        unit_norm_decoder = False

        def sparse_forward(self, sae, x, dead):
            x_c = x - sae.b_dec
            pre = self.encoder_pre(sae, x_c)
            norms = sae.W_dec.detach().norm(dim=-1)
            _, idx = (pre * norms).topk(self.cfg.k, dim=-1, sorted=False)
            code = sparse.code_from_topk(pre.gather(1, idx), idx)
            return self.code_step(sae, x, x_c, pre, code, dead)

        def dense_forward(self, sae, x, dead):
            return self.sparse_forward(sae, x, dead)

        def inference_config(self):
            return {**super().inference_config(), "rescale_acts_by_decoder_norm": True}

    return RescaledTopKObjective


@contextlib.contextmanager
def objective_for_topk(cls):
    """Train ``architecture="topk"`` with ``cls`` inside the block (None: unchanged)."""
    from saehooks.training import objectives

    saved = objectives.OBJECTIVES["topk"]
    if cls is not None:
        objectives.OBJECTIVES["topk"] = cls
    try:
        yield
    finally:
        objectives.OBJECTIVES["topk"] = saved


def train_point(model, store, cfg, rescaled: bool = False) -> tuple[Any, float, float]:
    """Train one SAE on ``store`` (continuing a killed run in ``cfg.out_dir``);
    ``(SAE, train seconds, trainer's final dead fraction)``. ``rescaled``: with
    :func:`rescaled_topk_objective` (``cfg.architecture`` must be ``topk``)."""
    from saehooks.errors import SAENotFoundError
    from saehooks.training import checkpoint
    from saehooks.training.trainer import Trainer

    out = Path(cfg.out_dir)
    resume = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resume = checkpoint.find_checkpoint(out)
    except (SAENotFoundError, FileNotFoundError):
        shutil.rmtree(out, ignore_errors=True)  # nothing to continue: start clean
    with objective_for_topk(rescaled_topk_objective() if rescaled else None):
        trainer = Trainer(model, store, cfg, resume_from=resume)
        sae = trainer.run()
    shutil.rmtree(checkpoint.checkpoint_root(out), ignore_errors=True)  # keep sae/, metrics
    final = sae.cfg.metadata["training"]
    return sae, float(final["wall_seconds"]), float(final["final_metrics"]["dead_fraction"])


def train_saelens_topk(store, d_in: int, d_sae: int, k: int, tokens: int, batch_size: int,
                       lr: float, device: str = "cpu"):  # fmt: skip
    """SAELens' own trainer (``SAETrainer`` + ``TopKTrainingSAE``, k ``k``) on the same
    cached batches; returns a :class:`saehooks.SAE` (SAELens' decoder norms folded in).

    SAELens' TopK defaults are kept (decoder rows start at norm 0.1, pre-activations
    are rescaled by the decoder norms, AuxK coefficient 1, ``b_dec`` zeros, no input
    normalisation), except the learning rate (``lr``) and the budget; no warm-up or
    decay (its constant schedule).

    Raises:
        ImportError: ``sae_lens`` is not installed (the TL3 environment has it).
    """
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saehooks import SAE, SAEConfig

    sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device)
    lens_sae = TopKTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=tokens,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device=device,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )

    class Batches:
        def __iter__(self):
            return self

        def __next__(self):
            return store.next_batch().to(device)

    SAETrainer(cfg=trainer_cfg, sae=lens_sae, data_provider=Batches()).fit()
    norms = lens_sae.W_dec.detach().norm(dim=-1)
    out = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, hook_name=HOOK))
    with torch.no_grad():  # fold ‖W_dec[j]‖ into the encoder: the same top-k, exactly
        out.W_enc.copy_(lens_sae.W_enc.detach() * norms)
        out.b_enc.copy_(lens_sae.b_enc.detach() * norms)
        out.W_dec.copy_(lens_sae.W_dec.detach() / norms[:, None])
        out.b_dec.copy_(lens_sae.b_dec.detach())
    return out.eval()


def result_row(name, overrides, report, args, seconds, train_dead) -> dict[str, Any]:
    """One CSV row from an :class:`~saehooks.EvalReport`."""
    return {
        "point": name,
        "family": overrides["_family"],
        "architecture": overrides.get("architecture", "topk (SAELens)"),
        "target_l0": overrides["_target"],
        "tokens": args.tokens,
        "d_sae": args.d_sae,
        "eval_rows": args.eval_rows,
        "l0": round(report.l0, 3),
        "fvu": round(report.fvu, 5),
        "ce_loss_increase": round(report.ce_loss_increase, 5),
        "ce_loss_score": round(report.ce_loss_score, 5),
        "kl_div": round(report.kl_div, 5),
        "dead_fraction": round(report.dead_fraction, 4),
        "pca_fvu": round(report.pca_fvu, 5),
        "train_dead_fraction": "" if train_dead is None else round(train_dead, 4),
        "train_seconds": round(seconds, 1),
        "tokens_per_s": round(args.tokens / max(seconds, 1e-9)),
    }


# ---- report -------------------------------------------------------------------------
def families(rows: list[dict[str, str]]) -> list[str]:
    """The families present in ``rows``: in :func:`points`' order, unknown ones after."""
    known = [o["_family"] for o in points(4096).values()]
    present = {r["family"] for r in rows}
    return [f for f in dict.fromkeys(known + sorted(present)) if f in present]


def markdown_table(rows: list[dict[str, str]], pca: list[dict[str, str]]) -> str:
    """The results as a Markdown table sorted by family (in :func:`points`' order) then
    L0, PCA rows last."""
    head = ("point", "l0", "fvu", "ce_loss_increase", "ce_loss_score", "dead_fraction",
            "pca_fvu", "train_seconds")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    order = {f: i for i, f in enumerate(families(rows))}
    for r in sorted(rows, key=lambda r: (order[r["family"]], float(r["l0"]))):
        lines.append("| " + " | ".join(str(r[h]) for h in head) + " |")
    for p in pca:
        cells = (f"PCA rank {p['rank']}", p["rank"], f"{float(p['fvu']):.5f}",
                 f"{float(p['ce_loss_increase']):.5f}", f"{float(p['ce_loss_score']):.5f}",
                 "", "", "")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, str]], pca: list[dict[str, str]], path: Path, title: str) -> None:
    """FVU and ce_loss_increase against L0 (log x): one line per family in
    :func:`points`' order, PCA dashed, the investigation variants as unjoined hollow
    markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric in zip(axes, ("fvu", "ce_loss_increase")):
        for fam in families(rows):
            pts = sorted((float(r["l0"]), float(r[metric])) for r in rows if r["family"] == fam)
            if fam.endswith("variants"):
                ax.plot(*zip(*pts), "o", mfc="none", label=fam)
            else:
                ax.plot(*zip(*pts), marker="o", label=fam)
        line = [(float(p["rank"]), float(p[metric])) for p in pca if float(p[metric]) > 0]
        if line:  # (log y: an exact reconstruction has nothing to draw)
            ax.plot(*zip(*line), "k--", label="PCA (rank = L0)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("L0 (active latents per token; PCA: components)")
        ax.set_ylabel(metric + (" (nats/token)" if metric != "fvu" else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, args) -> str:
    """Rewrite ``frontier.md`` and ``frontier.png`` from the CSVs; the table's text."""
    rows = [
        r
        for r in read_results(out / "frontier.csv")
        if (r["tokens"], r["d_sae"], r["eval_rows"])
        == (str(args.tokens), str(args.d_sae), str(args.eval_rows))
    ]
    pca = read_results(out / "pca.csv")
    title = (
        f"{HOOK}, d_sae {args.d_sae}, {args.tokens:,} training tokens, "
        f"{args.eval_rows} held-out rows"
    )
    table = markdown_table(rows, pca)
    (out / "frontier.md").write_text(f"{title}\n\n{table}")
    if rows:
        try:
            plot(rows, pca, out / "frontier.png", title)
        except ImportError:
            print("matplotlib is not installed (pip install saehooks[plots]): no frontier.png")
    return table


def parse_tokens(text: str) -> int:
    """``10M``, ``300k``, ``1.5e6`` -> int."""
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def main(argv: list[str] | None = None) -> None:
    names = list(points(4096))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="activation cache folder")
    ap.add_argument("--tokens", type=parse_tokens, default=10_000_000, help="per point")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-rows", type=int, default=256, help="held-out rows (x255 tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--only", nargs="*", default=None, help="point name prefixes: " + " ".join(names)
    )
    ap.add_argument("--checkpoint-every", type=parse_tokens, default=2_000_000)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work", type=Path, default=Path("runs/frontier"), help="runs, checkpoints")
    ap.add_argument("--no-pca", action="store_true", help="skip the PCA baseline")
    ap.add_argument("--progress", action="store_true", help="training progress bars")
    ap.add_argument("--report-only", action="store_true", help="redraw table and plot only")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(write_report(args.out, args))
        return

    import saehooks as sh

    torch.set_num_threads(args.threads)
    model = sh.load_model()
    tokens = sh.load_eval_tokens(args.eval_rows)
    open_cache(model, args.cache, args.work, args.batch_size, args.seed)  # fail early
    work = args.work / f"d{args.d_sae}_t{args.tokens}"
    every = points(args.d_sae)
    todo = select(list(every), args.only, tuple(n for n, o in every.items() if o.get("_extra")))
    pca_path = args.out / "pca.csv"
    if not args.no_pca and not any(
        r.get("eval_rows") == str(args.eval_rows) for r in read_results(pca_path)
    ):
        acts = heldout_activations(model, tokens)
        pca_path.unlink(missing_ok=True)
        for p in pca_baseline(model, tokens, acts, PCA_RANKS):
            with pca_path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=("rank", "fvu", "ce_loss_increase",
                                                  "ce_loss_score", "eval_rows"))  # fmt: skip
                if f.tell() == 0:
                    w.writeheader()
                w.writerow({**p, "eval_rows": args.eval_rows})
        print(f"PCA baseline written to {pca_path}", flush=True)
    results = args.out / "frontier.csv"
    for name in todo:
        overrides = points(args.d_sae)[name]
        if finished(read_results(results), name, args.tokens, args.d_sae, args.eval_rows):
            print(f"{name}: done before, skipped", flush=True)
            continue
        store = open_cache(model, args.cache, args.work, args.batch_size, args.seed)
        if overrides.get("_trainer") == "saelens":
            try:
                import sae_lens  # noqa: F401
            except ImportError:
                print(f"{name}: sae_lens is not installed here (the TL3 env has it); skipped")
                continue
            torch.manual_seed(args.seed)  # SAELens' initialisation draws from torch's RNG
            start = time.perf_counter()
            sae = train_saelens_topk(store, store.d_in, args.d_sae, overrides["k"],
                                     args.tokens, args.batch_size, args.lr)  # fmt: skip
            seconds, train_dead = time.perf_counter() - start, None
        else:
            cfg = train_config(name, overrides, args, work)
            sae, seconds, train_dead = train_point(model, store, cfg, overrides.get("_rescaled"))
        report = sh.evaluate(model, sae, tokens, progress=False)
        row = result_row(name, overrides, report, args, seconds, train_dead)
        append_result(results, row)
        print(f"{name}: " + ", ".join(f"{k} {row[k]}" for k in COLUMNS[7:]), flush=True)
        write_report(args.out, args)
    print(write_report(args.out, args))
    print(f"wrote {results}, {args.out / 'frontier.md'}, {args.out / 'frontier.png'}")


if __name__ == "__main__":
    main()
