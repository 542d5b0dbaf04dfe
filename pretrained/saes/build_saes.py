"""Train the shipped SAEs of the reference model, one after another.

1. Rebuild the reference model's *training* split (the same files, tokenizer and
   ``[BOS, …]`` rows as ``pretrained/build_reference_model.py``; the held-out files of
   the evaluation tokens are excluded by the same hash rule).
2. Cache its activations at each hook once (safetensors shards, outside the repo).
3. Train each SAE from the cache (epochs over it), then save it in SAELens format to
   ``pretrained/saes/<name>/`` and its metrics log to
   ``pretrained/saes/training_log_<name>.csv``.

An SAE already saved is skipped; a run killed midway resumes from its checkpoint::

    nohup python pretrained/saes/build_saes.py > /tmp/logs/saes.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shutil
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

COMMON = dict(d_sae=4096, batch_size=4096, total_tokens=20_000_000, dead_window_tokens=2_000_000,
              checkpoint_every_tokens=2_000_000, log_every_steps=25, seed=0,
              matmul_dtype="bfloat16", progress_bar=False)
SAES = {
    "topk-k32-blocks.2.hook_resid_post": dict(
        hook_name="blocks.2.hook_resid_post", architecture="topk", k=32, lr=6e-4),
    "topk-k32-blocks.1.hook_resid_post": dict(
        hook_name="blocks.1.hook_resid_post", architecture="topk", k=32, lr=6e-4),
    "l1-blocks.2.hook_resid_post": dict(
        hook_name="blocks.2.hook_resid_post", architecture="l1", lr=8e-4, l1_coefficient=3.0,
        target_l0=36.0),
    "kl-blocks.2.hook_resid_post": dict(
        hook_name="blocks.2.hook_resid_post", architecture="kl", lr=8e-4, kl_rho=0.008,
        kl_scale=0.25, kl_beta=1.0, target_l0=36.0),
}


def _build_module():
    spec = importlib.util.spec_from_file_location("build_reference_model",
                                                  REPO / "pretrained/build_reference_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_rows(model_dir: Path) -> torch.Tensor:
    """Token rows ``[n, n_ctx]`` of the reference model's training split (BOS first)."""
    from tokenizers import Tokenizer

    brm = _build_module()
    card = json.loads((model_dir / "model_card.json").read_text())
    percent = int(re.search(r"<\s*(\d+)", card["corpus"]["split"]).group(1))
    n_ctx = int(card["architecture"]["n_ctx"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in brm.corpus_files(stdlib) if not brm.is_held_out(f, percent)]
    if len(files) != card["corpus"]["files_train"]:
        raise RuntimeError(f"found {len(files)} training files, the card says "
                           f"{card['corpus']['files_train']}: another Python's stdlib?")
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    stream = brm.encode_stream(tok, [brm.read_text(stdlib / f) for f in files])
    return brm.chunk_with_bos(stream, n_ctx, tok.token_to_id(brm.EOT))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--work", default="/tmp/saehooks_sae_runs",
                    help="activation caches and run folders (checkpoints)")
    ap.add_argument("--only", nargs="*", default=None, help="names to build (default: all)")
    ap.add_argument("--tokens", type=float, default=None, help="override total tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=None, help="smoke tests: fewer rows")
    args = ap.parse_args(argv)

    import saehooks as sh
    from saehooks.reference import reference_model_dir
    from saehooks.training import TrainConfig, train_sae

    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    model_dir = reference_model_dir()
    model = sh.load_model()
    rows = train_rows(model_dir)[: args.max_rows]
    eval_rows = sh.load_eval_tokens()
    print(f"train rows {tuple(rows.shape)}; eval rows {tuple(eval_rows.shape)}", flush=True)
    for name, extra in SAES.items():
        if args.only and name not in args.only:
            continue
        target = out / name
        if (target / "cfg.json").is_file():
            print(f"{name}: already built, skipping", flush=True)
            continue
        hook = extra["hook_name"]
        run_dir = work / "runs" / name
        cfg = TrainConfig(**{**COMMON, **extra}, out_dir=str(run_dir),
                          cache_dir=str(work / "cache" / hook))
        if args.tokens:
            cfg = dataclasses.replace(cfg, total_tokens=int(args.tokens))
        resume = run_dir if (run_dir / "checkpoints" / "LATEST").is_file() else None
        print(f"{name}: training ({'resuming' if resume else 'new run'}) {cfg}", flush=True)
        start = time.time()
        sae = train_sae(model, rows, cfg, resume_from=resume)
        sae.cfg.metadata["training"]["source"] = "pretrained/saes/build_saes.py"
        sae.save(str(target))
        shutil.copyfile(run_dir / "metrics.csv", out / f"training_log_{name}.csv")
        final = sae.cfg.metadata["training"]["final_metrics"]
        print(f"{name}: done in {time.time() - start:.0f}s; final train metrics {final}",
              flush=True)


if __name__ == "__main__":
    main()
