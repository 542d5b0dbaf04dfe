"""Train the shipped SAEs of the reference model, one after another.

1. Rebuild the reference model's *training* split (the same files, tokenizer and
   ``[BOS, …]`` rows as ``pretrained/build_reference_model.py``; the held-out files of
   the evaluation tokens are excluded by the same hash rule).
2. Cache its activations at each hook once (safetensors shards, outside the repo).
3. Train each SAE from the cache (epochs over it), then save it in SAELens format to
   ``pretrained/saes/<name>/`` and its metrics log to
   ``pretrained/saes/training_log_<name>.csv``.

An SAE already saved is skipped; a run killed midway resumes from its checkpoint::

    nohup python pretrained/saes/build_saes.py > saes.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

COMMON = dict(
    d_sae=4096,
    batch_size=4096,
    total_tokens=20_000_000,
    dead_window_tokens=2_000_000,
    checkpoint_every_tokens=2_000_000,
    log_every_steps=25,
    seed=0,
    matmul_dtype="bfloat16",
    progress_bar=False,
)
# TopK: smaller batches (more steps) and a short dead window, so that AuxK also
# revives latents that fire too rarely to show up on the held-out tokens
TOPK = dict(
    architecture="topk",
    k=32,
    lr=1e-3,
    batch_size=1024,
    dead_window_tokens=250_000,
    total_tokens=30_000_000,
)
SAES = {
    "topk-k32-blocks.2.hook_resid_post": dict(hook_name="blocks.2.hook_resid_post", **TOPK),
    "topk-k32-blocks.1.hook_resid_post": dict(hook_name="blocks.1.hook_resid_post", **TOPK),
    "l1-blocks.2.hook_resid_post": dict(
        hook_name="blocks.2.hook_resid_post",
        architecture="l1",
        lr=1e-3,
        l1_coefficient=5.0,
        decoder_init_norm=1.0,
        target_l0=36.0,
    ),
    "kl-blocks.2.hook_resid_post": dict(
        hook_name="blocks.2.hook_resid_post",
        architecture="kl",
        lr=1e-3,
        kl_rho=0.006,
        kl_scale=0.05,
        kl_beta=3.0,
    ),
}


def cache_activations(
    model,
    rows: torch.Tensor,
    hook_names: list[str],
    work: Path,
    shard_tokens: int = 65536,
    model_batch_rows: int = 32,
    autocast_bf16: bool = True,
    seed: int = 0,
) -> None:
    """Write one activation cache per hook in a single pass over ``rows``.

    One forward pass (stopped after the deepest hook's block) serves every hook; BOS
    positions are dropped; each shard is a random draw from a pool of two shards'
    worth of tokens (the same permutation for every hook). With ``autocast_bf16`` the
    forward runs under bf16 autocast (2-3x faster on this CPU; the activations differ
    from an fp32 forward by ~1% of their standard deviation, i.e. ~1e-4 of FVU).
    Caches already finished for this model are kept.
    """
    from saehooks import tl
    from saehooks.io.common import atomic_write_text, write_safetensors
    from saehooks.training.activation_cache import CACHE_INFO, model_fingerprint, read_cache_info

    fingerprint = model_fingerprint(model)
    todo = [
        h
        for h in hook_names
        if (read_cache_info(work / "cache" / h) or {}).get("model_fingerprint") != fingerprint
    ]
    if not todo:
        return
    bos = model.tokenizer.bos_token_id
    stop = max(tl.block_index(h) for h in todo) + 1
    gen = torch.Generator().manual_seed(seed)
    pools = {h: [] for h in todo}
    n_pool, n_shards, written = 0, 0, 0
    for h in todo:
        (work / "cache" / h).mkdir(parents=True, exist_ok=True)
        (work / "cache" / h / CACHE_INFO).unlink(missing_ok=True)
    start = time.time()

    def flush(n: int) -> None:
        nonlocal n_pool, n_shards, written
        perm = None
        for h in todo:
            pool = torch.cat(pools[h])
            perm = torch.randperm(pool.shape[0], generator=gen) if perm is None else perm
            pool = pool[perm]
            write_safetensors(
                work / "cache" / h / f"shard_{n_shards:05d}.safetensors", {"acts": pool[:n]}
            )
            pools[h] = [pool[n:]]
        n_pool -= n
        n_shards += 1
        written += n

    for i in range(0, rows.shape[0], model_batch_rows):
        batch = rows[i : i + model_batch_rows]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            _, cache = model.run_with_cache(
                batch, names_filter=lambda n: n in todo, stop_at_layer=stop
            )
        keep = batch != bos
        for h in todo:
            pools[h].append(cache[h].float()[keep])
        n_pool += int(keep.sum())
        if n_pool >= 2 * shard_tokens:
            flush(shard_tokens)
            print(
                f"cache: {written:,} tokens, {written / (time.time() - start):,.0f} tok/s",
                flush=True,
            )
    while n_pool > 0:
        flush(min(shard_tokens, n_pool))
    for h in todo:
        info = {
            "hook_name": h,
            "d_in": int(pools[h][0].shape[-1]),
            "n_tokens": written,
            "n_shards": n_shards,
            "shard_tokens": shard_tokens,
            "model_name": tl.model_name(model),
            "model_fingerprint": fingerprint,
            "model_processing": tl.model_processing(model),
            "drop_bos": True,
            "rows_read": int(rows.shape[0]),
            "context_size": int(rows.shape[1]),
            "forward_autocast": "bfloat16" if autocast_bf16 else "none",
        }
        atomic_write_text(work / "cache" / h / CACHE_INFO, json.dumps(info, indent=2) + "\n")
    print(f"cached {written:,} tokens at {todo} in {time.time() - start:.0f}s", flush=True)


def data_summary(cache_dir: Path, rows: torch.Tensor) -> dict:
    """What an SAE was trained on, for its metadata."""
    from saehooks.training.activation_cache import read_cache_info

    info = read_cache_info(cache_dir) or {}
    return {
        "corpus": "reference-lm training split (held-out files excluded)",
        "token_rows": list(rows.shape),
        "activation_tokens_cached": info.get("n_tokens"),
        "bos_positions": "dropped",
        "forward_for_cache": info.get("forward_autocast", "none") + " autocast",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "saehooks_sae_runs"),
        help="activation caches and run folders (checkpoints)",
    )
    ap.add_argument("--only", nargs="*", default=None, help="names to build (default: all)")
    ap.add_argument("--tokens", type=float, default=None, help="override total tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=None, help="smoke tests: fewer rows")
    args = ap.parse_args(argv)

    import saehooks as sh
    from saehooks import tl
    from saehooks.reference import load_train_tokens
    from saehooks.training import TrainConfig, train_sae

    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    model = sh.load_model()
    rows = load_train_tokens(args.max_rows, strict=True)
    eval_rows = sh.load_eval_tokens()
    print(f"train rows {tuple(rows.shape)}; eval rows {tuple(eval_rows.shape)}", flush=True)
    names = [n for n in SAES if not args.only or n in args.only]
    cache_activations(model, rows, sorted({SAES[n]["hook_name"] for n in names}), work)
    for name, extra in SAES.items():
        if args.only and name not in args.only:
            continue
        target = out / name
        hook = extra["hook_name"]
        data = data_summary(work / "cache" / hook, rows)
        if (target / "cfg.json").is_file():
            sae = sh.load_sae(target)  # refresh provenance written by older versions
            meta = sae.cfg.metadata
            if meta["training"].get("data") != data or meta.get("model_name") != tl.model_name(
                model
            ):
                meta["training"]["data"] = data
                meta["model_name"] = tl.model_name(model)
                sae.save(str(target))
            print(f"{name}: already built, skipping", flush=True)
            continue
        run_dir = work / "runs" / name
        cfg = TrainConfig(
            **{**COMMON, **extra}, out_dir=str(run_dir), cache_dir=str(work / "cache" / hook)
        )
        if args.tokens:
            cfg = dataclasses.replace(cfg, total_tokens=int(args.tokens))
        resume = run_dir if (run_dir / "checkpoints" / "LATEST").is_file() else None
        print(f"{name}: training ({'resuming' if resume else 'new run'}) {cfg}", flush=True)
        start = time.time()
        sae = train_sae(model, rows, cfg, resume_from=resume)
        sae.cfg.metadata["training"]["source"] = "pretrained/saes/build_saes.py"
        sae.cfg.metadata["training"]["data"] = data
        sae.save(str(target))
        shutil.copyfile(run_dir / "metrics.csv", out / f"training_log_{name}.csv")
        final = sae.cfg.metadata["training"]["final_metrics"]
        print(
            f"{name}: done in {time.time() - start:.0f}s; final train metrics {final}", flush=True
        )


if __name__ == "__main__":
    main()
