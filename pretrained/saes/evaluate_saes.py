"""Evaluate every shipped SAE on all held-out tokens; write index.json and README.md.

    python pretrained/saes/evaluate_saes.py [--only NAME ...] [--threads 2] [--report-only]

``--only`` re-evaluates those SAEs and keeps the other rows of ``index.json``.
``saehooks.list_pretrained_saes()`` reads ``index.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import saehooks as sh
from saehooks.evaluation import evaluate

HERE = Path(__file__).resolve().parent
COLUMNS = [
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_increase",
    "ce_loss_score",
    "ce_loss_score_mean_ablation",
    "kl_div",
    "fvu",
    "pca_fvu",
    "l0",
    "dead_fraction",
]


# the targets: issue #15's for the best SAE at L0 <= 32 (first three rows) and issue #4's
# for the TopK SAEs: metric -> (bound, "max" or "min")
TARGETS = {
    "l0": (32.0, "max"),
    "fvu": (0.05, "max"),
    "ce_loss_increase": (0.05, "max"),
    "ce_loss_score": (0.99, "min"),
    "ce_loss_score_mean_ablation": (0.98, "min"),
    "dead_fraction": (0.02, "max"),
}
HISTORY = """\
How the TopK numbers came about (same data, hook and size throughout): the first TopK
SAEs (batch 4096, lr 2e-3, 20-25M tokens, dead window 2M tokens, AuxK on ReLU'd
dead-latent values and not normalised) reached FVU 0.078 / 0.049 (blocks.2 / blocks.1),
+0.081 / +0.068 nats and held-out dead fractions 0.059 / 0.212. That AuxK reached only
latents silent for 2M tokens, and weakly: its un-normalised term shrinks with the main
error, and ReLU'd values pass no gradient to latents whose pre-activations stay below
zero. AuxK now decodes pre-ReLU values with a normalised loss, and a latent counts as
dead after 250k silent tokens, so AuxK also revives latents too rare to fire on the
held-out set: dead fractions fell to 0.0000 / 0.0002. `benchmarks/dead_latent_remedies.py`
(2M tokens, window 250k) separates the parts: held-out dead fraction 0.074 without AuxK,
0.042 with the first AuxK, 0.039 normalised, 0.033 normalised on pre-ReLU values.
Batch 1024 with lr 1e-3 (4x the optimizer steps) and 30M tokens took
FVU from 0.049 to 0.045 (blocks.1) and from 0.078 to 0.077 (blocks.2). At blocks.2,
4M-token trials spanned FVU 0.086-0.101 on 100k held-out tokens (lr 7e-4 to 2e-3, batch
512 to 4096; smaller batches and larger lr better) and both long runs levelled off near
0.077. Against the PCA baseline with as many components, blocks.2's SAE leaves 0.18 of
PCA's unexplained variance and blocks.1's 0.14: layer 2 is harder to code with 32 of
4096 latents. Its error is not positional (1% of it, measured on the first SAE) nor
carried by a few tokens (the worst 1% of tokens carry 3%).

Issue #15's best SAE at L0 <= 32 is `topk-k32-d16384-blocks.2.hook_resid_post`: 16384
latents, 10M tokens at lr 1e-3, FVU 0.0757 and +0.0747 nats at exactly 32 latents per
token, with 7% of latents unfired on the held-out tokens. The BatchTopK SAE of the same
width and budget (lr 2e-3) reconstructs a little better (0.0729, +0.0704) but fires 33.5
latents per held-out token and leaves 41% unfired. Both miss the target (FVU and CE
increase <= 0.05): four times the latents bought 0.001-0.004 FVU over the 4096-latent
TopK SAE trained on 30M tokens. The 1M- and 10M-token frontiers
(`benchmarks/README.md`) suggest that more tokens, not width, is what this CPU budget
lacks: TopK-64 at 10M tokens reaches FVU 0.053.

The `kl` SAE maps activations to firing probabilities by ``1 - exp(-a / 0.05)`` per
token (normalised units) before averaging; with a larger scale (2.5) faint firings
barely counted and L0 stalled near 310.
"""


def target_lines(rows: list[dict]) -> list[str]:
    """A met/missed table of :data:`TARGETS` for every SAE."""
    lines = [
        "## Targets",
        "",
        "Issue #15 asks for an SAE at L0 <= 32 with FVU <= 0.05 and ce_loss_increase <= 0.05 "
        "nats/token at `blocks.2.hook_resid_post` (first three rows); the other rows are "
        "issue #4's for the TopK SAEs (whose FVU target was 0.04).",
        "",
        "| target | " + " | ".join(r["name"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for metric, (bound, kind) in TARGETS.items():
        cells = []
        for r in rows:
            ok = r[metric] <= bound if kind == "max" else r[metric] >= bound
            cells.append(f"{r[metric]:.4f} {'met' if ok else '**missed**'}")
        sign = "<=" if kind == "max" else ">="
        lines.append(f"| {metric} {sign} {bound:g} | " + " | ".join(cells) + " |")
    return lines + ["", HISTORY]


def sae_dirs() -> list[Path]:
    return sorted(p.parent for p in HERE.glob("*/cfg.json"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="SAE names to (re)evaluate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite README.md from index.json only"
    )
    args = ap.parse_args(argv)
    if args.report_only:
        write_readme(json.loads((HERE / "index.json").read_text()), sh.load_eval_tokens().shape)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = sh.load_model()
    tokens = sh.load_eval_tokens()
    index = HERE / "index.json"
    kept = (
        {r["name"]: r for r in json.loads(index.read_text())}
        if args.only and index.is_file()
        else {}
    )
    rows = []
    for path in sae_dirs():
        if args.only and path.name not in args.only and path.name in kept:
            rows.append(kept[path.name])
            continue
        sae = sh.load_sae(path)
        t0 = time.time()
        report = evaluate(model, sae, tokens, batch_size=16)
        training = sae.cfg.metadata.get("training", {})
        row = {
            "name": path.name,
            "architecture": sae.cfg.architecture,
            "k": sae.cfg.k,
            "hook_name": sae.cfg.hook_name,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            **{k: v for k, v in report.to_dict().items() if k != "feature_density"},
            "eval_seconds": round(time.time() - t0, 1),
            "training": training,
        }
        rows.append(row)
        print(path.name, {k: round(row[k], 4) for k in COLUMNS}, flush=True)
    index.write_text(json.dumps(rows, indent=2) + "\n")
    write_readme(rows, tokens.shape)


def write_readme(rows: list[dict], shape) -> None:
    lines = [
        "# Shipped SAEs of the reference model",
        "",
        f"Evaluated by `evaluate_saes.py` on all held-out tokens ({shape[0]} x {shape[1]}, "
        "BOS positions excluded); losses in nats/token, fvu/scores as fractions. Each folder "
        "is an SAELens v6 SAE (`cfg.json` + `sae_weights.safetensors`); its `cfg.json` "
        "metadata holds the full training config. `saehooks.list_pretrained_saes()` returns "
        "this table. Features with a clear meaning, with evidence: `FEATURES.md`.",
        "",
        "| name | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[c]:.4f}" for c in COLUMNS) + " |")
    lines += ["", *target_lines(rows), "## Training", ""]
    for r in rows:
        t = r["training"]
        lines.append(
            f"- **{r['name']}**: {r['architecture']}"
            f"{' k=' + str(r['k']) if r['k'] else ''}, d_sae {r['d_sae']}, "
            f"{t.get('tokens', '?'):,} tokens, {t.get('wall_seconds', '?')} s; "
            f"config: `{json.dumps(t.get('config', {}))}`"
            if isinstance(t.get("tokens"), int)
            else f"- **{r['name']}**: {t}"
        )
    lines += ["", "## Full reports", ""]
    for r in rows:
        lines.append(f"### {r['name']}\n")
        lines.append("| metric | value |\n|---|---|")
        lines += [
            f"| {k} | {v} |"
            for k, v in r.items()
            if k not in ("training", "name") and not isinstance(v, (dict, list))
        ]
        lines.append("")
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
