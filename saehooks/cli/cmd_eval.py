"""``saehooks eval``: print an SAE's EvalReport (or JSON).

Under ``torchrun`` the ranks share the rows and rank 0 prints::

    torchrun --nproc_per_node 2 -m saehooks eval --n-tokens 16384 --threads 1
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from saehooks.cli.common import ModelOptions, held_out_rows, load, set_threads
from saehooks.errors import InputError

NAME = "eval"
HELP = "print an SAE's EvalReport"


@dataclass(kw_only=True)
class Options(ModelOptions):
    n_tokens: int | None = None
    """tokens to evaluate, rounded up to whole rows spread over the held-out set
    (default: all held-out tokens; about 8 minutes at 1 thread on 2 busy cores)"""
    n_ctx: int = 256
    """row length"""
    text_file: str | None = None
    """evaluate on this text (tokenized by the model) instead of the held-out rows"""
    include_bos: bool = False
    """splice and count BOS positions too"""
    ablate_bos: bool = False
    """zero/mean-ablate BOS positions too in the ablation baselines (SAELens' ce_loss_score)"""
    json: bool = False
    """print JSON"""
    density: bool = False
    """with --json: the per-latent firing frequency too"""


def _tokens(model, options: Options) -> torch.Tensor:
    from saehooks.checks import check_positive_int
    from saehooks.errors import SAENotFoundError

    if options.n_tokens is not None:
        check_positive_int(options.n_tokens, "--n-tokens")
    n_ctx = min(int(model.cfg.n_ctx), check_positive_int(options.n_ctx, "--n-ctx"))
    if options.text_file and not Path(options.text_file).is_file():
        raise SAENotFoundError(
            f"--text-file {options.text_file!r} is not a file; pass a text file to evaluate on"
        )
    if options.text_file:
        ids = model.to_tokens(Path(options.text_file).read_text(), prepend_bos=False)[0]
        body = n_ctx - 1
        n = ids.numel() // body
        if n == 0:
            raise InputError(
                f"{options.text_file}: fewer than {body} tokens; give a longer "
                "text or a smaller --n-ctx"
            )
        bos = torch.full((n, 1), model.tokenizer.bos_token_id, dtype=torch.long)
        tokens = torch.cat([bos, ids[: n * body].view(n, body).cpu()], dim=1)
        n_rows = -(-options.n_tokens // n_ctx) if options.n_tokens else n
        return tokens[:n_rows]
    n_rows = -(-options.n_tokens // n_ctx) if options.n_tokens else None
    return held_out_rows(n_rows)[:, :n_ctx]


def run(options: Options, model=None) -> int:
    """Evaluate and print; under ``torchrun`` every rank evaluates its share of the rows
    (:func:`saehooks.evaluate` adds the sums over ranks) and rank 0 prints."""
    import saehooks as sh
    from saehooks import distributed

    set_threads(options.threads)
    model, sae = load(options, model)
    if distributed.launched_by_torchrun():
        distributed.init_from_env(device=next(model.parameters()).device)
    tokens = _tokens(model, options)
    report = sh.evaluate(
        model,
        sae,
        tokens,
        batch_size=options.batch_size,
        exclude_bos=not options.include_bos,
        ablate_bos=options.ablate_bos,
    )
    if not distributed.is_main():
        return 0
    if options.json:
        out = report.to_dict()
        if not options.density:
            out.pop("feature_density")
        print(json.dumps(out, indent=2))
    else:
        print(
            f"SAE {options.sae} ({sae.cfg.architecture}, d_sae {sae.cfg.d_sae}) on "
            f"{tokens.shape[0]} x {tokens.shape[1]} tokens"
        )
        print(report)
    return 0
