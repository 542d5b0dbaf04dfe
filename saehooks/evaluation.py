"""What splicing SAEs into a model costs: ``evaluate`` and per-token loss tables.

Every metric is a sum over tokens accumulated batch by batch in float64 on the CPU
(:class:`saehooks.metrics.TokenSums`, :class:`saehooks.metrics.ReconstructionSums`),
so results do not depend on the batch size, memory stays flat as the token count grows
(one batch of logits at a time), and the model may sit on any device. By default,
positions holding the BOS token keep their clean activation and are left out of every
average (SAEs are trained without them; BOS activations are outliers; see
:func:`saehooks.data.position_mask`) -- ``exclude_bos=False`` turns that off.
``evaluate(..., ablate_bos=True)`` zero-ablates BOS positions as well, as SAELens does
(see :class:`EvalReport.ce_loss_score`).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saehooks import checks, distributed, hooks, metrics, tl
from saehooks.data import (
    broadcast_mask,
    capture,
    check_sae,
    iter_batches,
    position_mask,
    replace_where,
)
from saehooks.errors import InputError
from saehooks.metrics import ReconstructionSums, TokenSums
from saehooks.sae import SAE
from saehooks.tl import model_device
from saehooks.tl import resume as tl_resume

UNITS = {
    "ce_loss_clean": "nats/token",
    "ce_loss_spliced": "nats/token",
    "ce_loss_zero_ablation": "nats/token",
    "ce_loss_mean_ablation": "nats/token",
    "ce_loss_increase": "nats/token",
    "ce_loss_score": "fraction",
    "ce_loss_score_mean_ablation": "fraction",
    "kl_div": "nats/token",
    "fvu": "fraction",
    "explained_variance": "fraction",
    "mse": "squared units/token",
    "l0": "latents/token",
    "l1": "activation/token",
    "dead_fraction": "fraction",
    "pca_rank": "components",
    "pca_fvu": "fraction",
    "n_tokens": "tokens",
}
_NOT_METRICS = ("hook_name", "feature_density", "spliced_hooks", "ablate_bos")


@dataclass
class EvalReport:
    """Reconstruction and downstream metrics of one SAE on one token set.

    Cross-entropies are next-token losses in nats/token averaged over predicted
    positions; activation metrics average over hook positions (BOS excluded by default).
    When several SAEs were evaluated together (``evaluate(model, [sae_a, sae_b], ...)``)
    the CE and KL fields are those of the model with all of them spliced in at once
    (``spliced_hooks``), and the reconstruction fields are this SAE's own, on the
    clean activations.
    """

    hook_name: str
    """Where the SAE was spliced."""
    ce_loss_clean: float
    """Loss of the unmodified model (nats/token)."""
    ce_loss_spliced: float
    """Loss with the activation replaced by the SAE reconstruction (nats/token)."""
    ce_loss_zero_ablation: float
    """Loss with the activation replaced by zeros (nats/token). BOS positions keep their
    clean activation unless ``ablate_bos``."""
    ce_loss_mean_ablation: float
    """Loss with the activation replaced by its mean over the token set (nats/token);
    BOS positions as in the zero ablation."""
    ce_loss_score: float
    """``(ce_zero − ce_spliced) / (ce_zero − ce_clean)`` (fraction; SAELens' "CE loss
    score"). By default the zero-ablation run keeps BOS positions clean, while SAELens
    zeroes every position, BOS included, which raises its baseline loss and so its score
    (shipped TopK SAE at blocks.2, load_eval_tokens(48): 0.9942 here, 0.9951 SAELens-style).
    Pass ``evaluate(..., ablate_bos=True)`` for SAELens' definition, to compare with
    published SAELens numbers."""
    ce_loss_score_mean_ablation: float
    """The same with the mean-ablation baseline (stricter; fraction)."""
    kl_div: float
    """Mean over positions of ``KL(p_clean ‖ p_spliced)`` (nats/token)."""
    fvu: float
    """``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` (fraction of variance unexplained)."""
    explained_variance: float
    """``1 − fvu``."""
    mse: float
    """Mean over tokens of ``‖x − x̂‖²`` (summed over d_in)."""
    l0: float
    """Mean number of active latents per token."""
    l1: float
    """Mean sum of latent activations per token."""
    dead_fraction: float
    """Fraction of latents that never fired on this token set."""
    pca_rank: int
    """``round(l0)``: components of the dense baseline."""
    pca_fvu: float
    """FVU of the best rank-``pca_rank`` PCA reconstruction of the same activations."""
    n_tokens: int
    """Hook positions evaluated (the CE averages use the predicting positions among them)."""
    feature_density: Tensor = field(repr=False)
    """``[d_sae]`` float32 on the CPU: fraction of counted positions (not BOS by default,
    last positions included) where the latent's activation is ``> 0`` -- the firing
    frequency of :func:`saehooks.feature_density` on the same tokens."""
    spliced_hooks: tuple[str, ...] = ()
    """The hooks spliced together for the CE and KL numbers (this SAE's alone, or all
    the SAEs passed to one :func:`evaluate` call)."""
    ablate_bos: bool = False
    """Whether the zero- and mean-ablation runs replaced BOS positions too (SAELens'
    zero ablation) rather than keeping them clean."""

    @property
    def ce_loss_increase(self) -> float:
        """``ce_loss_spliced − ce_loss_clean`` (nats/token)."""
        return self.ce_loss_spliced - self.ce_loss_clean

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict (``feature_density`` and ``spliced_hooks``
        as lists), plus ``ce_loss_increase``."""
        out = dataclasses.asdict(self)
        out["feature_density"] = self.feature_density.tolist()
        out["spliced_hooks"] = list(self.spliced_hooks)
        out["ce_loss_increase"] = self.ce_loss_increase
        return out

    def to_frame(self) -> pd.DataFrame:
        """The scalar metrics as a table: one row per metric, with its unit."""
        rows = [
            (k, v, UNITS.get(k, "")) for k, v in self.to_dict().items() if k not in _NOT_METRICS
        ]
        return pd.DataFrame(rows, columns=["metric", "value", "unit"]).set_index("metric")

    def __str__(self) -> str:
        table = self.to_frame().to_string(float_format=lambda v: f"{v:.4f}")
        others = [h for h in self.spliced_hooks if h != self.hook_name]
        lines = [f"EvalReport at {self.hook_name}"]
        if others:
            lines.append(f"(CE and KL with {', '.join(others)} spliced in too)")
        lines.append(
            "ablation baselines replace BOS positions too (SAELens' definition)"
            if self.ablate_bos
            else "ablation baselines keep BOS positions clean "
            "(SAELens zeroes them: evaluate(..., ablate_bos=True))"
        )
        return "\n".join(lines) + "\n" + table


# ---- runs -------------------------------------------------------------------------------
def _check_saes(model: nn.Module, sae: Any) -> list[SAE]:
    """One SAE or a non-empty list of SAEs at distinct hooks, each checked against the
    model (:func:`saehooks.hooks.check_compatible`).

    Raises:
        InputTypeError: not an SAE or a list of SAEs.
        InputError: an empty list, or two SAEs at one hook.
    """
    if isinstance(sae, (list, tuple)):
        if not sae:
            raise InputError("no SAEs given; pass an SAE or a non-empty list of SAEs")
        saes = [check_sae(s, "each SAE in the list") for s in sae]
        names = [s.cfg.hook_name for s in saes]
        repeated = sorted({h for h in names if names.count(h) > 1})
        if repeated:
            raise InputError(
                f"several SAEs at hook {repeated}: SAEs evaluated together are "
                "spliced in at once, one per hook; evaluate SAEs that share a "
                "hook in separate calls"
            )
    else:
        saes = [check_sae(sae)]
    for s in saes:
        hooks.check_compatible(model, s)
    return saes


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        checks.check_bool(value, name)


HookList = list[tuple[str, Callable]]

_RESUME_FROM_HOOK = True
"""Run the spliced and ablated passes from the hook (:func:`_resume_plan`); False runs
every pass from the tokens (the reference path the tests and
``benchmarks/evaluate_speed.py`` compare against)."""

_RESUME_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: ``{layer: bool}``, whether resuming at that block reproduced the clean
logits (checked once, on the first batch that resumes there)."""


class _BatchResult(NamedTuple):
    """One batch of a spliced run (tensors on the model's device)."""

    tokens: Tensor
    """``[batch, pos]`` token ids."""
    mask: Tensor
    """``[batch, pos]`` True where the SAEs are spliced and the position counts."""
    activations: dict[str, Tensor]
    """Per hook: the clean activation ``[batch, pos, d_in]``."""
    feature_acts: dict[str, Tensor]
    """Per hook: the SAE latents of the clean activation ``[batch, pos, d_sae]``."""
    reconstructions: dict[str, Tensor]
    """Per hook: the SAE output of the clean activation (stream dtype)."""
    logits_clean: Tensor
    """``[batch, pos, d_vocab]``."""
    logits_spliced: Tensor
    """``[batch, pos, d_vocab]``, all the SAEs spliced in at once."""
    run: Callable[[HookList], Tensor]
    """``run(fwd_hooks) -> logits``: a forward pass of this batch with hooks at the SAEs'
    hooks only, resumed from the clean pass where possible (:func:`_resume_plan`)."""
    plan: _Plan | None
    """How :attr:`run` resumes (None: whole passes)."""


class _Plan(NamedTuple):
    """How the passes that change the SAEs' hooks resume from the clean pass."""

    layer: int
    """The first block they run."""
    carrier: str | None
    """The SAE hook whose (changed) activation is the residual entering ``layer``
    (``blocks.{layer-1}.hook_resid_post``), or None."""
    clean_input: str | None
    """Without a carrier: the hook read in the clean pass whose activation enters
    ``layer`` (the hooks then run inside the resumed blocks)."""


def _resume_plan(model: nn.Module, names: Sequence[str]) -> _Plan | None:
    """Where passes that change only the activations at ``names`` may start: the
    lowest :func:`saehooks.tl.resume.resume_point` of the hooks. None (run whole passes) when
    resuming is off, the model cannot resume, or a hook cannot (embeddings, ``ln_final``,
    attention internals, per-head hooks), or two names carry the one residual."""
    if not _RESUME_FROM_HOOK:
        return None
    points = {name: tl_resume.resume_point(model, name) for name in names}
    if any(p is None for p in points.values()):
        return None
    layer = min(p.layer for p in points.values())
    carriers = [n for n, p in points.items() if p.layer == layer and p.carries_activation]
    if len(carriers) > 1:  # aliases of one hook point: both hooks would have to run
        return None
    if carriers:
        return _Plan(layer, carriers[0], None)
    return _Plan(layer, None, tl_resume.block_input_hook(model, layer))


def _runner(
    model: nn.Module, plan: _Plan | None, tokens: Tensor, store: dict[str, Tensor]
) -> Callable[[HookList], Tensor]:
    """``run(fwd_hooks) -> logits`` for one batch: the whole model on ``tokens``
    (no plan), or the blocks from ``plan.layer`` on, entered by the clean pass's
    residual there (``store``) -- changed first by the carrier hook's functions when the
    plan has one, exactly as that hook would have changed it."""

    def run(fwd_hooks: HookList) -> Tensor:
        if plan is None:
            return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        if plan.carrier is None:
            return tl_resume.run_from_layer(model, plan.layer, store[plan.clean_input], fwd_hooks)
        residual = store[plan.carrier]
        for name, fn in fwd_hooks:
            if name == plan.carrier:
                changed = fn(residual, None)
                residual = residual if changed is None else changed
        rest = [(name, fn) for name, fn in fwd_hooks if name != plan.carrier]
        return tl_resume.run_from_layer(model, plan.layer, residual, rest)

    return run


def _check_resume(
    model: nn.Module, plan: _Plan, store: dict[str, Tensor], logits_clean: Tensor
) -> bool:
    """Whether resuming at ``plan.layer`` from the clean residual gives the clean
    logits on this batch; checked once per model and block, so an architecture whose
    blocks need more than the residual (state the Hugging Face loop carries between
    blocks) falls back to whole passes instead of giving wrong numbers."""
    checked = _RESUME_CHECKED.setdefault(model, {})
    if plan.layer not in checked:
        residual = store[plan.carrier or plan.clean_input]
        try:
            resumed = tl_resume.run_from_layer(model, plan.layer, residual)
            ok = resumed.shape == logits_clean.shape and bool(
                torch.allclose(resumed, logits_clean, rtol=1e-4, atol=1e-4)
            )
        except Exception:  # any failure of the resumed pass: use whole passes
            ok = False
        checked[plan.layer] = ok
    return checked[plan.layer]


def _splice_hooks(saes: Sequence[SAE], mask: Tensor, recons: dict[str, Tensor]) -> HookList:
    """Hooks that replace each SAE's activation by its reconstruction where ``mask``.

    The first SAE hook that runs in a forward pass sees the clean activation, so it
    uses the reconstruction already computed; later ones encode what reaches them
    (the stream already changed by the SAEs before them).
    """
    state = {"first": True}

    def make(sae: SAE) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if state["first"]:
                state["first"] = False
                recon = recons[sae.cfg.hook_name]
            else:
                recon = sae.decode(sae.encode(act)).to(act.dtype)
            return torch.where(broadcast_mask(mask, act), recon, act)

        return hook

    return [(s.cfg.hook_name, make(s)) for s in saes]


def _spliced_batches(
    model: nn.Module,
    sae: SAE | Sequence[SAE],
    tokens: Tensor,
    batch_size: int = 8,
    exclude_bos: bool = True,
    progress: bool = True,
    desc: str = "evaluating",
) -> Iterator[_BatchResult]:
    """Run clean and spliced forward passes batch by batch (no gradients).

    Args:
        sae: one SAE or several at distinct hooks (spliced in together).
        tokens: ``[n_seq, pos]`` token ids, on any device (each batch moves to the model's).

    Yields:
        :class:`_BatchResult` per batch of ``batch_size`` rows.
    """
    saes = _check_saes(model, sae)
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    batch_size = checks.check_batch_size(batch_size)
    yield from _batches(model, saes, tokens, batch_size, exclude_bos, progress, desc)


def _batches(
    model: nn.Module,
    saes: Sequence[SAE],
    tokens: Tensor,
    batch_size: int,
    exclude_bos: bool,
    progress: bool,
    desc: str = "evaluating",
) -> Iterator[_BatchResult]:
    """:func:`_spliced_batches` on checked arguments (``tokens`` may have no rows).

    The clean pass reads the SAEs' hooks (and the residual entering the resume block);
    the SAEs encode those activations, and the spliced pass (and the caller's ablated
    passes, through :attr:`_BatchResult.run`) resume from the clean pass where
    :func:`_resume_plan` allows, checked once against the clean logits.
    """
    names = [s.cfg.hook_name for s in saes]
    plan = _resume_plan(model, names)
    device = model_device(model)
    n_batches = -(-tokens.shape[0] // batch_size)
    for _, batch in tqdm(
        iter_batches(tokens, batch_size, device),
        total=n_batches,
        desc=desc,
        disable=not progress,
        unit="batch",
    ):
        mask = position_mask(model, batch, exclude_bos)
        with torch.no_grad():
            read = (
                names + [plan.clean_input]
                if plan and plan.clean_input not in (None, *names)
                else names
            )
            logits_clean, store = capture(model, batch, read)
            if plan is not None and not _check_resume(model, plan, store, logits_clean):
                plan = None
            feats = {s.cfg.hook_name: s.encode(store[s.cfg.hook_name]) for s in saes}
            recons = {
                s.cfg.hook_name: s.decode(feats[s.cfg.hook_name]).to(store[s.cfg.hook_name].dtype)
                for s in saes
            }
            run = _runner(model, plan, batch, store)
            logits_spliced = run(_splice_hooks(saes, mask, recons))
        yield _BatchResult(
            batch, mask, store, feats, recons, logits_clean, logits_spliced, run, plan
        )


def _reduced_means(
    model: nn.Module, names: Sequence[str], totals: dict[str, Tensor], count: int
) -> dict[str, Tensor]:
    """The mean-ablation values from float64 sums of clean activations over ``count``
    counted positions: ``{hook_name: [d] (or [n_heads, d_head])}`` float32 on
    the model's device. Under ``torchrun`` the sums and counts of all ranks are added
    first, so every rank gets the mean of all rows.

    Raises:
        InputError: no position counts (every position holds BOS).
    """
    device = model_device(model)
    if distributed.is_distributed():
        shapes = tl.hook_shapes(model)  # a rank without rows has seen no activation
        for name in names:
            if name not in totals:
                totals[name] = torch.zeros(shapes[name], dtype=torch.float64)
        packed = torch.cat([totals[n].reshape(-1) for n in names])
        packed = torch.cat([packed, torch.tensor([float(count)], dtype=torch.float64)])
        distributed.all_reduce_(packed)
        count = int(packed[-1].item())
        offset = 0
        for name in names:
            size = totals[name].numel()
            totals[name] = packed[offset : offset + size].reshape(totals[name].shape)
            offset += size
    if count == 0:
        raise InputError(
            "every position holds the BOS token, so there is no activation to "
            "average; pass real text tokens or exclude_bos=False"
        )
    return {name: (total / count).float().to(device) for name, total in totals.items()}


class _Kept(NamedTuple):
    """What the mean-ablation pass of one batch needs from the first pass."""

    tokens: Tensor
    mask: Tensor
    ablated: Tensor
    """``[batch, pos]`` True where the ablations replace the activation."""
    plan: _Plan | None
    carried: Tensor | None
    """With a carrier plan: the carrier's clean activation where not ``ablated``
    (``[n, d]``), all the ablated pass needs of it."""
    shape: tuple[int, ...]
    """The carrier's activation shape (``()`` without a carrier)."""


def _mean_ablated_logits(model: nn.Module, kept: _Kept, fwd_hooks: HookList) -> Tensor:
    """Logits of the mean-ablated pass of one batch: resumed from the carrier's clean
    activation where it is not replaced (rebuilt from :attr:`_Kept.carried`), from the
    residual entering the resume block (recomputed by a pass stopped there), or whole."""
    plan = kept.plan
    store: dict[str, Tensor] = {}
    if plan is not None and plan.carrier is not None:
        act = kept.carried.new_zeros(kept.shape)
        act[~kept.ablated.to(act.device)] = kept.carried
        store[plan.carrier] = act  # the hook replaces every other position
    elif plan is not None:
        store[plan.clean_input] = tl_resume.residual_entering(model, kept.tokens, plan.layer)
    return _runner(model, plan, kept.tokens, store)(fwd_hooks)


def _rank_rows(n_rows: int, batch_size: int) -> range:
    """The token rows this rank evaluates: a contiguous block of whole batches
    (:func:`saehooks.distributed.shard_range` over the ``ceil(n_rows / batch_size)``
    batches), so each forward pass sees the very rows it sees in one process and the
    summed results differ from the one-process ones only by float64 rounding. All rows
    in a single process."""
    n_batches = -(-n_rows // batch_size)
    mine = distributed.shard_range(n_batches)
    return range(min(mine.start * batch_size, n_rows), min(mine.stop * batch_size, n_rows))


def _all_reduce_sums(token_sums: Iterable[TokenSums], recon: Iterable[ReconstructionSums]) -> None:
    """Add the running sums of every rank in place, so each rank holds those of all
    rows (a no-op in a single process); three collectives in all.

    Each :class:`~saehooks.metrics.TokenSums`: sums and count added. Per
    :class:`~saehooks.metrics.ReconstructionSums`: token count, ``Σ‖x − x̂‖²``, ``Σ l0``,
    ``Σ l1`` and the :class:`~saehooks.metrics.FeatureCounts` totals and firing counts
    added, peaks maximised; the mean and centred co-moment merged exactly as Chan et
    al.'s pairwise update does: ``x̄ = Σ_r n_r x̄_r / N`` and
    ``C = Σ_r [C_r + n_r (x̄_r − x̄)(x̄_r − x̄)ᵀ]``.
    """
    if not distributed.is_distributed():
        return
    token_sums, recon = list(token_sums), list(recon)
    f64 = torch.float64
    parts = [
        torch.stack([*t.sums.values(), torch.tensor(float(t.count), dtype=f64)]) for t in token_sums
    ]
    for r in recon:
        scalars = torch.tensor([float(r.n), float(r.counts.n_tokens)], dtype=f64)
        parts += [scalars, torch.stack([r.sse, r.l0, r.l1])]
        parts += [r.mean * r.n, r.counts.total, r.counts.fired]
    packed = distributed.all_reduce_(torch.cat([p.to(f64).reshape(-1) for p in parts]))
    peaks = [r.counts.peak for r in recon]
    if peaks:
        peak = distributed.all_reduce_(torch.cat(peaks), op="max")
    values = iter(packed.split([p.numel() for p in parts]))
    for t in token_sums:
        reduced = next(values)
        t.sums = {k: reduced[i].clone() for i, k in enumerate(t.sums)}
        t.count = int(reduced[-1].item())
    offset = 0
    for r in recon:
        scalars, sums, weighted, total, fired = (next(values) for _ in range(5))
        n_all = int(scalars[0].item())
        mean = weighted / n_all if n_all else torch.zeros_like(r.mean)
        delta = r.mean - mean
        r.comoment = r.comoment + torch.outer(delta, delta) * r.n
        r.mean, r.n = mean, n_all
        r.sse, r.l0, r.l1 = sums[0].clone(), sums[1].clone(), sums[2].clone()
        r.counts.n_tokens = int(scalars[1].item())
        r.counts.total, r.counts.fired = total.clone(), fired.clone()
        d_sae = r.counts.peak.numel()
        r.counts.peak = peak[offset : offset + d_sae].clone()
        offset += d_sae
    if recon:
        comoments = distributed.all_reduce_(torch.stack([r.comoment for r in recon]))
        for r, c in zip(recon, comoments, strict=True):
            r.comoment = c.clone()


@hooks.uses_model
def evaluate(
    model: nn.Module,
    sae: SAE | Sequence[SAE],
    tokens: Tensor,
    batch_size: int = 8,
    exclude_bos: bool = True,
    progress: bool = True,
    ablate_bos: bool = False,
) -> EvalReport | dict[str, EvalReport]:
    """Measure what splicing ``sae`` (or several SAEs at once) into ``model`` costs.

    Four forward passes per batch: clean, spliced and zero-ablated in a first pass
    over the batches, whose clean activations give the mean, then mean-ablated. The
    spliced and ablated passes resume from the clean pass at the SAEs' lowest hook
    where :func:`saehooks.tl.resume.resume_point` allows (residual-stream, attention-output,
    MLP-output and MLP hooks; checked once per model against the clean logits): the
    blocks below it, identical to the clean pass's, are not run again (for a hook
    inside a block, the mean-ablated pass recomputes that block's input with a pass
    stopped there). Definitions as in SAELens /
    DESIGN.md; the PCA baseline follows the dense-baseline comparisons of
    Bricken et al. 2023. All sums are float64 on the CPU; the model and the SAEs may
    be on any device (the same one), ``tokens`` anywhere.

    The one difference from SAELens' ``ce_loss_score``: by default the zero- and
    mean-ablation runs keep BOS positions clean, as the spliced run does, so all three
    change the same positions; SAELens zeroes every position in its ablation run.
    ``ablate_bos=True`` gives SAELens' definition.

    Under ``torchrun`` (an initialised process group, see
    :func:`saehooks.distributed.init_from_env`) each rank evaluates a contiguous block of
    whole batches of ``tokens`` (which must be the same on every rank), the float64
    sums and the mean-ablation mean are added over ranks, and every rank returns the
    report of all the rows: the one-process report up to float64 rounding.

    Args:
        model: a hooked TransformerLens model.
        sae: an SAE (attaches at ``sae.cfg.hook_name``), or a list of SAEs at distinct
            hooks: they are spliced in (and ablated) together for the CE and KL numbers,
            and each gets its own reconstruction metrics on the clean activations.
        tokens: ``[n_seq, pos]`` token ids, ``pos >= 2`` and at most the model's
            ``n_ctx`` (e.g. :func:`saehooks.load_eval_tokens`).
        batch_size: rows per forward pass; results do not depend on it.
        exclude_bos: keep BOS positions clean and out of the averages.
        progress: show a tqdm progress bar (rank 0 only under ``torchrun``).
        ablate_bos: replace BOS positions too in the zero- and mean-ablation runs
            (SAELens' zero ablation); only matters with ``exclude_bos``.

    Returns:
        An :class:`EvalReport` for one SAE; for a list, ``{hook_name: EvalReport}`` in
        the list's order, sharing the joint CE and KL numbers.

    Raises:
        InputTypeError: ``sae`` is not an SAE or list of SAEs; malformed ``tokens`` or
            flags.
        InputError: an empty list or two SAEs at one hook; ``tokens`` of the wrong
            shape, too long for the model or outside its vocabulary; ``batch_size < 1``;
            no position to evaluate.
        HookNameError, DeviceError: see :func:`saehooks.hooks.check_compatible`.
    """
    _check_flags(exclude_bos=exclude_bos, progress=progress, ablate_bos=ablate_bos)
    saes = _check_saes(model, sae)
    tokens = checks.check_model_tokens(model, tokens, min_positions=2)
    batch_size = checks.check_batch_size(batch_size)
    names = [s.cfg.hook_name for s in saes]
    rows = _rank_rows(tokens.shape[0], batch_size)
    tokens = tokens[rows.start : rows.stop]
    losses = TokenSums("ce_clean", "ce_spliced", "ce_zero", "kl")
    mean_losses = TokenSums("ce_mean")
    recon = {s.cfg.hook_name: ReconstructionSums(s.cfg.d_in, s.cfg.d_sae) for s in saes}
    totals: dict[str, Tensor] = {}
    count = 0
    kept: list[_Kept] = []
    progress = progress and distributed.is_main()
    # first pass: clean, spliced and zero-ablated; the clean activations' sums give the
    # mean the second pass ablates with
    for r in _batches(model, saes, tokens, batch_size, exclude_bos, progress):
        ablated = torch.ones_like(r.mask) if ablate_bos else r.mask
        with torch.no_grad():
            logits_zero = r.run([(n, replace_where(ablated, 0.0)) for n in names])
        predict = r.mask[:, :-1]
        losses.add(
            ce_clean=metrics.next_token_ce(r.logits_clean, r.tokens)[predict],
            ce_spliced=metrics.next_token_ce(r.logits_spliced, r.tokens)[predict],
            ce_zero=metrics.next_token_ce(logits_zero, r.tokens)[predict],
            kl=metrics.kl_div(r.logits_clean[:, :-1], r.logits_spliced[:, :-1])[predict],
        )
        for s in saes:
            name, d_in = s.cfg.hook_name, s.cfg.d_in
            recon[name].add(
                r.activations[name][r.mask].reshape(-1, d_in),
                r.reconstructions[name][r.mask].reshape(-1, d_in),
                r.feature_acts[name][r.mask].reshape(-1, s.cfg.d_sae),
            )
        for name in names:
            part = r.activations[name][r.mask].sum(0, dtype=torch.float64).cpu()
            totals[name] = part if name not in totals else totals[name] + part
        count += int(r.mask.sum())
        carrier = r.plan.carrier if r.plan is not None else None
        act = r.activations[carrier] if carrier is not None else None
        kept.append(
            _Kept(
                r.tokens,
                r.mask,
                ablated,
                r.plan,
                None if act is None else act[~ablated.to(act.device)],
                () if act is None else tuple(act.shape),
            )
        )
    means = _reduced_means(model, names, totals, count)
    # second pass: mean-ablated
    for k in tqdm(kept, desc="mean ablation", disable=not progress, unit="batch"):
        with torch.no_grad():
            logits_mean = _mean_ablated_logits(
                model, k, [(n, replace_where(k.ablated, means[n])) for n in names]
            )
        mean_losses.add(ce_mean=metrics.next_token_ce(logits_mean, k.tokens)[k.mask[:, :-1]])
    _all_reduce_sums([losses, mean_losses], recon.values())
    if losses.count == 0:
        raise InputError(
            "no position predicts a token (every position but the last holds "
            "BOS); pass longer sequences of real text, or exclude_bos=False"
        )
    ce = losses.means() | mean_losses.means()
    joint = {
        "ce_loss_clean": ce["ce_clean"],
        "ce_loss_spliced": ce["ce_spliced"],
        "ce_loss_zero_ablation": ce["ce_zero"],
        "ce_loss_mean_ablation": ce["ce_mean"],
        "ce_loss_score": metrics.ce_loss_score(ce["ce_clean"], ce["ce_spliced"], ce["ce_zero"]),
        "ce_loss_score_mean_ablation": metrics.ce_loss_score(
            ce["ce_clean"], ce["ce_spliced"], ce["ce_mean"]
        ),
        "kl_div": ce["kl"],
    }
    reports = {
        name: EvalReport(
            hook_name=name,
            **joint,
            **recon[name].result(),
            spliced_hooks=tuple(names),
            ablate_bos=ablate_bos,
        )
        for name in names
    }
    return reports[names[0]] if isinstance(sae, SAE) else reports


@hooks.uses_model
def loss_increase_per_token(
    model: nn.Module,
    sae: SAE | Sequence[SAE],
    tokens: Tensor,
    batch_size: int = 8,
    exclude_bos: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Per predicted token: clean and spliced loss, and their difference.

    Args:
        model: a hooked TransformerLens model (any device).
        sae: an SAE, or a list of SAEs at distinct hooks spliced in together.
        tokens: ``[n_seq, pos]`` token ids, ``pos >= 2``.
        batch_size: rows per forward pass.
        exclude_bos: keep BOS positions clean and leave out the predictions made there.
        progress: show a tqdm progress bar.

    Returns:
        DataFrame with columns ``sequence``, ``position`` (of the predicted token),
        ``token`` (its string), ``loss_clean``, ``loss_spliced``, ``delta``
        (nats), one row per predicted token whose predicting position counts.

    Raises:
        As :func:`evaluate`.
    """
    _check_flags(exclude_bos=exclude_bos, progress=progress)
    frames = []
    offset = 0
    for r in _spliced_batches(
        model, sae, tokens, batch_size, exclude_bos, progress, desc="per-token losses"
    ):
        clean = metrics.next_token_ce(r.logits_clean, r.tokens)
        spliced = metrics.next_token_ce(r.logits_spliced, r.tokens)
        seq, pos = r.mask[:, :-1].nonzero(as_tuple=True)
        offset += r.tokens.shape[0]
        if seq.numel() == 0:  # every predicting position of this batch holds BOS
            continue
        predicted = r.tokens[seq, pos + 1]
        frames.append(
            pd.DataFrame(
                {
                    "sequence": (seq + offset - r.tokens.shape[0]).cpu().numpy(),
                    "position": (pos + 1).cpu().numpy(),
                    "token": model.to_str_tokens(predicted.cpu()),
                    "loss_clean": clean[seq, pos].cpu().numpy(),
                    "loss_spliced": spliced[seq, pos].cpu().numpy(),
                }
            )
        )
    if not frames:
        raise InputError(
            "no position predicts a token (every position but the last holds "
            "BOS); pass longer sequences of real text, or exclude_bos=False"
        )
    table = pd.concat(frames, ignore_index=True)
    table["delta"] = table["loss_spliced"] - table["loss_clean"]
    return table
