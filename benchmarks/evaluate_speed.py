"""evaluate before and after resuming its spliced and ablated passes from the hook.

    python benchmarks/evaluate_speed.py [--threads 1] [--rows 64] [--repeats 1]

The shipped TopK SAE (``topk-k32-blocks.2.hook_resid_post``) on the reference model (TL 4
bridge, or TL 3 in its environment), ``--rows`` held-out rows of 256 tokens, batch 8.
"old" is ``evaluate`` as it was before (``old_evaluate`` below, a copy of that
implementation for one SAE): a pass stopped after block 2 for the mean, then four whole
passes per batch (clean, spliced, zero- and mean-ablated). "new" is ``sh.evaluate``: the
clean pass whole, the mean from its activations, the other three passes from block 3 on.
Both run once on 2 rows first (warm-up, and the one-time resume check), then alternate
``--repeats`` times; the medians, their ratio, the largest difference of every report
field, and ``uptime`` before and after (the machine's load) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch

import saehooks as sh
from saehooks import metrics, tl
from saehooks.data import capture, iter_batches, position_mask, replace_where
from saehooks.tl import resume as tl_resume

SAE_NAME = "topk-k32-blocks.2.hook_resid_post"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


@torch.no_grad()
def old_evaluate(model, sae, tokens, batch_size: int = 8) -> dict:
    """The report fields of one SAE as ``evaluate`` computed them before resuming
    (commit baccb66): every pass from the tokens, plus the mean pre-pass."""
    name = sae.cfg.hook_name
    total, count = None, 0
    for _, batch in iter_batches(tokens, batch_size, tl.model_device(model)):
        mask = position_mask(model, batch)
        _, act = capture(model, batch, [name], stop=True)
        part = act[name][mask].sum(0, dtype=torch.float64)
        total = part if total is None else total + part
        count += int(mask.sum())
    mean = (total / count).float().to(tl.model_device(model))
    losses = metrics.TokenSums("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl")
    recon = metrics.ReconstructionSums(sae.cfg.d_in, sae.cfg.d_sae)
    for _, batch in iter_batches(tokens, batch_size, tl.model_device(model)):
        mask = position_mask(model, batch)
        clean, store = capture(model, batch, [name])
        x = store[name]
        feats = sae.encode(x)
        x_hat = sae.decode(feats).to(x.dtype)
        spliced = model.run_with_hooks(batch, fwd_hooks=[(name, replace_where(mask, x_hat))])
        zero = model.run_with_hooks(batch, fwd_hooks=[(name, replace_where(mask, 0.0))])
        ablated = model.run_with_hooks(batch, fwd_hooks=[(name, replace_where(mask, mean))])
        predict = mask[:, :-1]
        losses.add(
            ce_clean=metrics.next_token_ce(clean, batch)[predict],
            ce_spliced=metrics.next_token_ce(spliced, batch)[predict],
            ce_zero=metrics.next_token_ce(zero, batch)[predict],
            ce_mean=metrics.next_token_ce(ablated, batch)[predict],
            kl=metrics.kl_div(clean[:, :-1], spliced[:, :-1])[predict],
        )
        recon.add(x[mask], x_hat[mask], feats[mask])
    ce = losses.means()
    return {
        "ce_loss_clean": ce["ce_clean"],
        "ce_loss_spliced": ce["ce_spliced"],
        "ce_loss_zero_ablation": ce["ce_zero"],
        "ce_loss_mean_ablation": ce["ce_mean"],
        "ce_loss_score": metrics.ce_loss_score(ce["ce_clean"], ce["ce_spliced"], ce["ce_zero"]),
        "ce_loss_score_mean_ablation": metrics.ce_loss_score(
            ce["ce_clean"], ce["ce_spliced"], ce["ce_mean"]
        ),
        "kl_div": ce["kl"],
        **recon.result(),
    }


def run(model, sae, tokens, new: bool, batch_size: int) -> tuple[float, dict]:
    start = time.perf_counter()
    if new:
        report = sh.evaluate(model, sae, tokens, batch_size=batch_size, progress=False)
        fields = {k: getattr(report, k) for k in report.to_dict() if hasattr(report, k)}
    else:
        fields = old_evaluate(model, sae, tokens, batch_size)
    return time.perf_counter() - start, fields


def differences(new: dict, old: dict) -> dict[str, float]:
    out = {
        k: abs(float(v) - float(new[k]))
        for k, v in old.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    out["feature_density"] = (new["feature_density"] - old["feature_density"]).abs().max().item()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=64, help="held-out rows of 256 tokens")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("before:", uptime())
    model = sh.load_model()
    sae = sh.load_sae(SAE_NAME)
    tokens = sh.load_eval_tokens(args.rows)
    print(
        f"{type(model).__name__} (TransformerLens {tl.tl_major_version()}), {SAE_NAME}, "
        f"{tokens.shape[0]} x {tokens.shape[1]} tokens, batch {args.batch_size}, "
        f"{args.threads} thread(s); resume point "
        f"{tl_resume.resume_point(model, sae.cfg.hook_name)}"
    )
    for resume in (False, True):  # warm-up, and the one-time resume check
        run(model, sae, tokens[:2], resume, args.batch_size)
    times: dict[bool, list[float]] = {False: [], True: []}
    reports: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for resume in (False, True):
            seconds, reports[resume] = run(model, sae, tokens, resume, args.batch_size)
            times[resume].append(seconds)
            print(f"  {'new' if resume else 'old'}: {seconds:.2f} s")
    old, new = statistics.median(times[False]), statistics.median(times[True])
    print(f"old (mean pre-pass, four whole passes): {old:.2f} s")
    print(f"new (resumed from the hook):              {new:.2f} s")
    print(f"speed-up: {old / new:.2f}x")
    diffs = differences(reports[True], reports[False])
    print("max |new - old| per field:")
    for key, value in diffs.items():
        print(f"  {key:28s} {value:.3g}")
    print(f"largest: {max(diffs.values()):.3g}")
    print("after:", uptime())


if __name__ == "__main__":
    main()
