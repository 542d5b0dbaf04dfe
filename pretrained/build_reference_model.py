"""Train the shipped reference language model from scratch, deterministically.

Corpus: the CPython standard library's own ``.py`` files of the interpreter that
runs this script (test packages and site-packages excluded), split by file into
train / held-out by a stable hash of each file's relative path.

Tokenizer: byte-level BPE (``tokenizers``) trained on the train split, with one
special token ``<|endoftext|>`` used as BOS, EOS and document separator.

Model: ``transformers.GPT2LMHeadModel`` (GPT-2 architecture), trained with AdamW,
linear warm-up and cosine decay, bf16 autocast on CPU (fp32 master weights).

Writes into ``--out`` (default: ``pretrained/reference-lm``): the model
(``model.safetensors`` + ``config.json``), tokenizer files, ``eval_tokens.safetensors``
(held-out tokens ``[n_seq, n_ctx]``, BOS at position 0), ``model_card.json`` and
``MODEL_CARD.md``. Usage::

    python pretrained/build_reference_model.py --tokens 12e6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch

EOT = "<|endoftext|>"
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def corpus_files(stdlib: Path) -> list[Path]:
    """Relative paths of the stdlib ``.py`` files, sorted, test packages excluded."""
    files = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def is_held_out(rel: Path, percent: int) -> bool:
    """Stable split: sha256 of the relative POSIX path, modulo 100."""
    digest = hashlib.sha256(rel.as_posix().encode()).hexdigest()
    return int(digest, 16) % 100 < percent


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_stream(tok, texts: list[str]) -> torch.Tensor:
    """Documents joined as ``EOT doc EOT doc ...`` into one LongTensor."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.append(eot)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def chunk_with_bos(stream: torch.Tensor, n_ctx: int, bos: int) -> torch.Tensor:
    """Cut a stream into rows ``[BOS, t_0 .. t_{n_ctx-2}]`` (drops the ragged tail)."""
    body = n_ctx - 1
    n = stream.numel() // body
    rows = stream[: n * body].view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)


@torch.no_grad()
def held_out_loss(model, rows: torch.Tensor, batch_size: int = 32) -> tuple[float, torch.Tensor]:
    """Mean next-token CE (nats/token) over all rows, and the per-token losses."""
    model.eval()
    losses = []
    for i in range(0, rows.shape[0], batch_size):
        batch = rows[i : i + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch).logits
        logp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
        losses.append(-logp.gather(-1, batch[:, 1:, None]).squeeze(-1))
    model.train()
    per_token = torch.cat(losses)
    return per_token.mean().item(), per_token


def unigram_ce(train_stream: torch.Tensor, rows: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats/token) of an add-one unigram model of the train split."""
    counts = torch.bincount(train_stream, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return -logp[rows[:, 1:]].mean().item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "reference-lm"))
    ap.add_argument("--tokens", type=float, default=12e6, help="training tokens")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--held-out-percent", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = corpus_files(stdlib)
    held = [f for f in files if is_held_out(f, args.held_out_percent)]
    train = [f for f in files if not is_held_out(f, args.held_out_percent)]
    train_texts = [read_text(stdlib / f) for f in train]
    held_texts = [read_text(stdlib / f) for f in held]
    print(f"corpus: {len(files)} files ({len(train)} train, {len(held)} held out)", flush=True)

    tok = train_tokenizer(train_texts, args.vocab_size)
    eot = tok.token_to_id(EOT)
    train_stream = encode_stream(tok, train_texts)
    held_stream = encode_stream(tok, held_texts)
    eval_rows = chunk_with_bos(held_stream, args.n_ctx, eot)
    print(
        f"tokens: {train_stream.numel():,} train, {held_stream.numel():,} held out; "
        f"eval rows {tuple(eval_rows.shape)}",
        flush=True,
    )

    vocab = tok.get_vocab_size()
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=args.n_ctx,
        n_embd=args.d_model,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    tokens_per_step = args.batch_size * (args.n_ctx - 1)
    total_steps = math.ceil(args.tokens / tokens_per_step)

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        frac = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    body = args.n_ctx - 1
    bos_col = torch.full((args.batch_size, 1), eot, dtype=torch.long)
    arange = torch.arange(body)
    curve = []
    train_ema = None
    model.train()
    t_train = time.time()
    for step in range(total_steps):
        starts = torch.randint(0, train_stream.numel() - body, (args.batch_size,), generator=gen)
        batch = torch.cat([bos_col, train_stream[starts[:, None] + arange]], dim=1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float()[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_ema = loss.item() if train_ema is None else 0.98 * train_ema + 0.02 * loss.item()
        last = step == total_steps - 1
        if (step + 1) % args.eval_every == 0 or last:
            held_loss, _ = held_out_loss(model, eval_rows[:256])
            elapsed = time.time() - t_train
            seen = (step + 1) * tokens_per_step
            curve.append(
                {
                    "step": step + 1,
                    "tokens": seen,
                    "train_loss_ema": round(train_ema, 4),
                    "held_out_loss_subset": round(held_loss, 4),
                    "seconds": round(elapsed, 1),
                }
            )
            print(
                f"step {step + 1}/{total_steps} tokens {seen:,} train {train_ema:.3f} "
                f"held {held_loss:.3f} lr {lr_at(step):.2e} {seen / elapsed:,.0f} tok/s",
                flush=True,
            )
    train_seconds = time.time() - t_train

    held_loss, per_token = held_out_loss(model, eval_rows)
    token_bytes = torch.tensor([len(tok.id_to_token(i)) if i != eot else 0 for i in range(vocab)])
    n_bytes = token_bytes[eval_rows[:, 1:]].sum().item()
    bits_per_byte = per_token.sum().item() / math.log(2) / n_bytes
    unigram = unigram_ce(train_stream, eval_rows, vocab)
    print(
        f"held-out CE {held_loss:.4f} nats/token, {bits_per_byte:.4f} bits/byte; "
        f"unigram {unigram:.4f}",
        flush=True,
    )

    model.save_pretrained(out, safe_serialization=True)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    fast.model_max_length = args.n_ctx
    fast.save_pretrained(out)
    from safetensors.torch import save_file

    save_file({"tokens": eval_rows.contiguous()}, str(out / "eval_tokens.safetensors"))

    card = {
        "name": "saehooks reference LM",
        "architecture": {
            "class": "GPT2LMHeadModel",
            "n_layer": args.n_layer,
            "d_model": args.d_model,
            "n_head": args.n_head,
            "n_ctx": args.n_ctx,
            "d_vocab": vocab,
            "n_params": n_params,
            "tied_embeddings": True,
        },
        "corpus": {
            "source": "CPython standard library .py files (test packages, site-packages excluded)",
            "python_version": platform.python_version(),
            "files_total": len(files),
            "files_train": len(train),
            "files_held_out": len(held),
            "split": f"sha256(relative posix path) % 100 < {args.held_out_percent} -> held out",
            "tokens_train": train_stream.numel(),
            "tokens_held_out": held_stream.numel(),
            "bytes_train": sum(len(t.encode()) for t in train_texts),
            "bytes_held_out": sum(len(t.encode()) for t in held_texts),
        },
        "tokenizer": {
            "type": "byte-level BPE (tokenizers)",
            "vocab_size": vocab,
            "special": EOT,
            "bos_id": eot,
        },
        "training": {
            "seed": args.seed,
            "steps": total_steps,
            "batch_size": args.batch_size,
            "tokens_per_step": tokens_per_step,
            "tokens_seen": total_steps * tokens_per_step,
            "epochs": round(total_steps * tokens_per_step / train_stream.numel(), 2),
            "optimizer": "AdamW(betas=(0.9,0.95), weight_decay=0.1)",
            "lr": args.lr,
            "schedule": f"linear warm-up {args.warmup_steps} steps, cosine to 5%",
            "precision": "bf16 autocast, fp32 weights",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.time() - t_start, 1),
            "final_train_loss_ema": round(train_ema, 4),
        },
        "eval": {
            "eval_tokens_shape": list(eval_rows.shape),
            "held_out_ce_nats_per_token": round(held_loss, 4),
            "held_out_bits_per_byte": round(bits_per_byte, 4),
            "unigram_baseline_nats_per_token": round(unigram, 4),
            "predicted_tokens": per_token.numel(),
            "predicted_bytes": n_bytes,
        },
        "curve": curve,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_card(card))
    shown = os.path.relpath(out)  # relative: logs are shipped and must not name this machine
    print(f"saved to {shown} in {time.time() - t_start:.0f}s", flush=True)


def render_card(card: dict) -> str:
    a, c, t, e = card["architecture"], card["corpus"], card["training"], card["eval"]
    lines = [
        "# saehooks reference LM",
        "",
        f"A {a['n_layer']}-layer GPT-2-architecture causal LM (d_model {a['d_model']}, "
        f"{a['n_head']} heads, n_ctx {a['n_ctx']}, vocab {a['d_vocab']}, "
        f"{a['n_params']:,} parameters), trained from scratch by "
        "`pretrained/build_reference_model.py` on the CPython "
        f"{c['python_version']} standard library's own source files.",
        "",
        "| metric (held-out) | value |",
        "|---|---|",
        f"| cross-entropy | {e['held_out_ce_nats_per_token']} nats/token |",
        f"| bits per byte | {e['held_out_bits_per_byte']} |",
        f"| unigram baseline | {e['unigram_baseline_nats_per_token']} nats/token |",
        f"| eval tokens | {e['eval_tokens_shape'][0]} x {e['eval_tokens_shape'][1]} (BOS first) |",
        "",
        f"Corpus: {c['files_total']} files, {c['files_train']} train / {c['files_held_out']} "
        f"held out ({c['split']}); {c['tokens_train']:,} train tokens, "
        f"{c['tokens_held_out']:,} held-out tokens.",
        "",
        f"Training: seed {t['seed']}, {t['steps']} steps of {t['tokens_per_step']} tokens "
        f"({t['tokens_seen']:,} tokens, {t['epochs']} epochs), {t['optimizer']}, lr {t['lr']}, "
        f"{t['schedule']}, {t['precision']}; {t['train_seconds']:.0f} s on {t['threads']} CPU "
        f"threads (torch {t['torch']}).",
        "",
        "| step | tokens | train loss (EMA) | held-out loss (256 rows) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['step']} | {r['tokens']:,} | {r['train_loss_ema']} | {r['held_out_loss_subset']} |"
        for r in card["curve"]
    ]
    lines += [
        "",
        "Corpus-derived files (tokenizer, eval tokens, weights) derive from "
        "CPython source; see `LICENSE-PSF.txt`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
