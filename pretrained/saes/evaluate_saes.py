"""Evaluate every shipped SAE on all held-out tokens; write index.json and README.md.

    python pretrained/saes/evaluate_saes.py [--only NAME ...] [--threads 2]

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
COLUMNS = ["ce_loss_clean", "ce_loss_spliced", "ce_loss_increase", "ce_loss_score",
           "ce_loss_score_mean_ablation", "kl_div", "fvu", "pca_fvu", "l0", "dead_fraction"]


def sae_dirs() -> list[Path]:
    return sorted(p.parent for p in HERE.glob("*/cfg.json"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="SAE names to (re)evaluate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = sh.load_model()
    tokens = sh.load_eval_tokens()
    index = HERE / "index.json"
    kept = {r["name"]: r for r in json.loads(index.read_text())} \
        if args.only and index.is_file() else {}
    rows = []
    for path in sae_dirs():
        if args.only and path.name not in args.only and path.name in kept:
            rows.append(kept[path.name])
            continue
        sae = sh.load_sae(path)
        t0 = time.time()
        report = evaluate(model, sae, tokens, batch_size=16)
        training = sae.cfg.metadata.get("training", {})
        row = {"name": path.name, "architecture": sae.cfg.architecture, "k": sae.cfg.k,
               "hook_name": sae.cfg.hook_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
               **{k: v for k, v in report.to_dict().items() if k != "feature_density"},
               "eval_seconds": round(time.time() - t0, 1), "training": training}
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
    lines += ["", "## Training", ""]
    for r in rows:
        t = r["training"]
        lines.append(f"- **{r['name']}**: {r['architecture']}"
                     f"{' k=' + str(r['k']) if r['k'] else ''}, d_sae {r['d_sae']}, "
                     f"{t.get('tokens', '?'):,} tokens, {t.get('wall_seconds', '?')} s; "
                     f"config: `{json.dumps(t.get('config', {}))}`"
                     if isinstance(t.get("tokens"), int) else f"- **{r['name']}**: {t}")
    lines += ["", "## Full reports", ""]
    for r in rows:
        lines.append(f"### {r['name']}\n")
        lines.append("| metric | value |\n|---|---|")
        lines += [f"| {k} | {v} |" for k, v in r.items()
                  if k not in ("training", "name") and not isinstance(v, (dict, list))]
        lines.append("")
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
