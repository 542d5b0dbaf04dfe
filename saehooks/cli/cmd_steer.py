"""``saehooks steer``: clean and steered greedy continuations of a prompt."""

from __future__ import annotations

from dataclasses import dataclass

from saehooks.cli.common import ModelOptions, held_out_rows, load, set_threads

NAME = "steer"
HELP = "generate with and without steering along a feature"


@dataclass(kw_only=True)
class Options(ModelOptions):
    feature: int
    """feature index"""
    coefficient: float
    """norm of the added vector (or a multiple of the feature's maximum activation with
    --relative)"""
    prompt: str
    """text to continue"""
    relative: bool = False
    """coefficient relative to the feature's maximum activation on held-out rows"""
    max_new_tokens: int = 40
    """tokens to generate"""
    n_seq: int = 16
    """held-out rows used to find the feature's maximum activation (--relative)"""


def run(options: Options, model=None) -> int:
    import saehooks as sh

    set_threads(options.threads)
    model, sae = load(options, model)
    tokens = held_out_rows(options.n_seq) if options.relative else None
    from saehooks.checks import check_int

    prompt = model.to_tokens(options.prompt)
    room = int(model.cfg.n_ctx) - prompt.shape[1]
    check_int(options.max_new_tokens, "--max-new-tokens", minimum=1, maximum=max(1, room))
    kwargs = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": False,
        "stop_at_eos": False,
        "verbose": False,
        "use_past_kv_cache": False,
    }
    n = prompt.shape[1]
    clean = model.generate(prompt, **kwargs)
    mode = "relative" if options.relative else "absolute"
    with sh.steer(
        model, sae, options.feature, options.coefficient, coefficient_mode=mode, tokens=tokens
    ):
        steered = model.generate(prompt, **kwargs)
    print(
        f"SAE {options.sae} at {sae.cfg.hook_name}; feature {options.feature}, coefficient "
        f"{options.coefficient} ({mode})"
    )
    print("prompt:\n" + options.prompt)
    print("--- clean continuation ---\n" + model.tokenizer.decode(clean[0, n:]))
    print("--- steered continuation ---\n" + model.tokenizer.decode(steered[0, n:]))
    return 0
