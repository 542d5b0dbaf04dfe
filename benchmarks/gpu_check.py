"""End-to-end check on a GPU: the used-by flows with timings, then the ``cuda`` tests.

    python benchmarks/gpu_check.py               # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu  # the same flows on the CPU (a dry run)

Each flow runs on the device and prints its time; the checks are exact where the math
is (the error-term splice equals the clean model, cached greedy generation equals
uncached, ablation with the error term changes only the ablated feature's part), and
the script exits 1 on any failure. Then it runs ``pytest -m cuda`` (the device versions
of the flow tests, compared with the CPU) unless ``--no-tests``. Record the output in
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import saehooks as sh

ROOT = Path(__file__).resolve().parents[1]


class Check:
    def __init__(self, device: torch.device) -> None:
        self.device, self.rows, self.failed = device, [], 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, label: str, fn):
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        self.rows.append((label, 1000 * (time.perf_counter() - start), ""))
        return out

    def expect(self, label: str, ok: bool, detail: str) -> None:
        self.failed += not ok
        self.rows.append((label, None, ("ok  " if ok else "FAIL ") + detail))

    def report(self) -> None:
        print(f"\n{'flow':52} {'ms':>9}  check")
        for label, ms, note in self.rows:
            print(f"{label:52} {'' if ms is None else f'{ms:9.1f}':>9}  {note}")


def flows(device: torch.device, train_steps: int) -> Check:
    c = Check(device)
    model = c.timed("load_model", lambda: sh.load_model(device=device))
    sae = sh.load_sae("topk-k32-blocks.2.hook_resid_post", device=device)
    tokens = sh.load_eval_tokens(16).to(device)
    with torch.no_grad():
        model(tokens[:2])  # warm-up
        clean = c.timed("clean forward [16, 256]", lambda: model(tokens))
        with sh.attach(model, sae):
            c.timed("spliced forward [16, 256]", lambda: model(tokens))
        with sh.attach(model, sae, use_error_term=True):
            same = c.timed("error-term splice forward", lambda: model(tokens))
            _, cache = model.run_with_cache(tokens[:2])
    diff = (same - clean).abs().max().item()
    c.expect("error-term splice == clean logits", diff < 1e-3, f"max |diff| {diff:.2e}")
    acts = cache["blocks.2.hook_resid_post.hook_sae_acts_post"]
    c.expect(
        "cached SAE latents on the device, L0 = k",
        acts.device.type == device.type and bool(((acts > 0).sum(-1) <= sae.cfg.k).all()),
        f"{tuple(acts.shape)}",
    )

    report = c.timed("evaluate (16 rows)", lambda: sh.evaluate(model, sae, tokens))
    c.expect(
        "evaluate finite",
        all(v == v for v in (report.ce_loss_score, report.fvu)),
        f"ce_loss_score {report.ce_loss_score:.4f}, fvu {report.fvu:.4f}",
    )
    table = c.timed(
        "loss_increase_per_token (2 rows)",
        lambda: sh.loss_increase_per_token(model, sae, tokens[:2], progress=False),
    )
    c.expect("per-token table", len(table) > 0, f"{len(table)} rows")

    feature = int(acts[0, 1:].sum(0).argmax())
    with torch.no_grad():
        with sh.ablate_features(model, sae, [feature]):
            ablated = c.timed("ablate_features forward", lambda: model(tokens[:2]))
    c.expect(
        "ablation moves the logits",
        bool((ablated - clean[:2]).abs().max() > 0),
        f"feature {feature}",
    )

    prompt = model.to_tokens("def check(value):\n    if value < 0:\n        raise ValueError(")
    kw = {"max_new_tokens": 20, "do_sample": False, "stop_at_eos": False, "verbose": False}
    with sh.steer(model, sae, feature=3955, coefficient=12.0):
        cached = c.timed(
            "steer + generate (cached)",
            lambda: model.generate(prompt, use_past_kv_cache=True, **kw),
        )
        uncached = c.timed(
            "steer + generate (uncached)",
            lambda: model.generate(prompt, use_past_kv_cache=False, **kw),
        )
    c.expect(
        "cached greedy == uncached greedy",
        torch.equal(cached, uncached),
        repr(model.to_string(cached[0, prompt.shape[1] :]))[:40],
    )

    with tempfile.TemporaryDirectory() as out:
        cfg = sh.TrainConfig(
            hook_name="blocks.2.hook_resid_post",
            architecture="topk",
            k=32,
            d_sae=4096,
            batch_size=1024,
            total_tokens=train_steps * 1024,
            out_dir=out,
            device=str(device),
            progress_bar=False,
            log_every_steps=10,
            checkpoint_every_tokens=0,
        )
        rows = sh.load_eval_tokens()[:512]  # 131k tokens: the default buffer fills once
        trained = c.timed(
            f"train_sae topk {train_steps} steps x 1024 tokens",
            lambda: sh.train_sae(model, rows, cfg),
        )
    summary = trained.cfg.metadata["training"]
    c.expect(
        "trained SAE on the device",
        trained.device.type == device.type,
        f"fvu {summary['final_metrics'].get('fvu', float('nan')):.3f}, matmul "
        f"{summary.get('matmul_dtype_resolved', cfg.matmul_dtype)}",
    )
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--no-tests", action="store_true", help="skip pytest -m cuda")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (use --device cpu for a dry run)")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"saehooks {sh.__version__}, torch {torch.__version__}, device {device} ({name})")
    check = flows(device, args.train_steps)
    check.report()
    status = 1 if check.failed else 0
    if not args.no_tests and device.type == "cuda":
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
        print("\n$ " + " ".join(cmd[2:]), flush=True)
        status |= subprocess.call(cmd, cwd=ROOT)
    print(f"\n{check.failed} failed check(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
