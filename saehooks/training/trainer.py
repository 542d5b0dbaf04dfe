"""The training loop: batches, Adam, decoder normalisation, logging, checkpoints.

What differs between objectives (the forward pass, their per-step state, the saved
architecture) is in :mod:`saehooks.training.objectives`; the loop calls it.
:func:`~saehooks.training.launch.train_sae` starts a run and hands it to
:class:`Trainer`, which exposes the steps for tests and notebooks
(``Trainer(...).run(max_steps=...)`` stops like a killed run).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saehooks import distributed, metrics, tl
from saehooks.checks import check_int
from saehooks.errors import InputError, InputTypeError, TrainingDivergedError
from saehooks.io import save_sae
from saehooks.sae import SAE, SAEConfig
from saehooks.training import checkpoint, device, init, resample
from saehooks.training.activation_store import RankSlice
from saehooks.training.config import TrainConfig
from saehooks.training.objectives import (
    ForwardOutput,
    LoopHandles,
    Objective,
    StepState,
    make_objective,
)
from saehooks.training.stores import Store

METRICS_FILE = "metrics.csv"
# fmt: off
METRIC_COLUMNS = ("step", "tokens", "lr", "coefficient", "loss", "mse", "fvu", "l0", "aux",
                  "dead_fraction", "tokens_per_s", "wall_seconds")
"""Columns of ``metrics.csv``: one row after step 1, then every ``log_every_steps``."""
LOOP_FIELDS = frozenset({
    "hook_name", "architecture", "d_sae", "total_tokens", "batch_size", "lr", "adam_betas",
    "lr_warmup_fraction", "lr_decay_fraction", "grad_clip", "dead_window_tokens",
    "init_encoder_as_decoder_transpose", "fit_encoder_scale", "decoder_init_norm",
    "b_dec_init", "init_tokens", "normalize_activations", "matmul_dtype", "seed", "device",
    "checkpoint_every_tokens", "log_every_steps", "out_dir", "context_size",
    "model_batch_rows", "buffer_tokens", "drop_bos", "cache_dir", "cache_tokens",
    "shard_tokens", "wandb", "wandb_project", "progress_bar"})
"""``TrainConfig`` fields the loop reads (here, in :func:`~.stores.make_store` and in
:func:`~.device.training_device`); each objective declares its own
(``Objective.fields``). A test checks both against the code."""
RESUME_FREE = frozenset({"progress_bar", "wandb", "wandb_project", "out_dir",
                         "checkpoint_every_tokens", "log_every_steps", "cache_dir", "device"})
"""Loop fields a resumed run may change: where and how often it logs and saves, and the
device. A resumed run must agree on every other loop field and on its objective's."""
# fmt: on
# machine-specific fields left out of the config recorded in a saved SAE's metadata
_NOT_IN_METADATA = ("out_dir", "cache_dir", "device")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up, constant, linear decay to 0."""
    total = cfg.total_steps
    warm = max(1, round(cfg.lr_warmup_fraction * total))
    decay = round(cfg.lr_decay_fraction * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if decay and step >= total - decay:
        return cfg.lr * (total - step) / decay
    return cfg.lr


def resume_checked_fields(objective: Objective) -> frozenset[str]:
    """The fields a resumed run must share with the run it continues: the loop's (but
    :data:`RESUME_FREE`) and those its objective reads."""
    return (LOOP_FIELDS - RESUME_FREE) | objective.fields


def unread_fields(cfg: TrainConfig, objective: Objective) -> dict[str, Any]:
    """``{field: value}`` of the fields set away from their defaults that neither the
    loop nor ``objective`` reads (e.g. ``k`` for ``jumprelu``, whose L0 comes from
    ``l0_coefficient``/``target_l0``): settings a run would silently ignore."""
    read = LOOP_FIELDS | objective.fields
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in read
        and f.default is not dataclasses.MISSING
        and getattr(cfg, f.name) != f.default
    }


class Trainer:
    """Trains one SAE on a store's activations, in one process or data-parallel.

    Data parallelism (under ``torchrun``, :mod:`saehooks.distributed`): every rank
    holds the whole SAE and its Adam state and computes on its own
    ``cfg.batch_size / world`` rows of each step's batch (a store that serves global
    batches is wrapped in :class:`~.activation_store.RankSlice`); after the backward
    pass the gradients are averaged with ONE flattened all-reduce, so every rank takes
    the same Adam step and the decoder renormalisation, deterministic given identical
    weights, keeps them identical. This is done by hand rather than with
    ``torch.nn.parallel.DistributedDataParallel``: the objectives compute the loss
    straight from the SAE's parameters through the sparse kernels (custom autograd
    Functions in :mod:`~saehooks.training.sparse`), not through one ``module(x)``
    call, and DDP arms its gradient reducer in its wrapper's ``forward``; one
    all-reduce of the whole gradient (an SAE is a few tensors) gives the same average
    without that constraint, and costs what DDP's buckets would on such few tensors.
    The objective's per-step statistics are reduced with
    :meth:`~saehooks.training.objectives.base.Objective.sync` (a latent fired if it
    fired on any rank; θ's sample and the KL firing rate are means), the
    initialisation (normalisation scale, ``b_dec``, encoder) is computed on every rank
    from the union of the ranks' init batches (all-gathered, in the order one process
    would have read them), and a step in which latents were resampled ends with rank
    0's weights, Adam moments, tracker and generator broadcast. Rank 0 alone writes
    (``metrics.csv``, checkpoints, the final SAE); every rank resumes from the same
    checkpoint.

    The SAE, its Adam state, the dead-latent counters and each batch live on
    :attr:`device` (``cfg.device``, else the model's, else the CPU); the running
    metrics are Python floats. The encoder matmul dtype is ``cfg.matmul_dtype``, with
    ``"auto"`` resolved by :func:`~saehooks.training.device.resolve_matmul_dtype`
    (:attr:`matmul`). :attr:`objective` is the ``cfg.architecture`` objective.

    Args:
        model: the TransformerLens model (for the SAE's metadata; None omits it).
        store: an activation store (:class:`~saehooks.training.stores.Store`).
        cfg: the training configuration.
        resume_from: a run folder / checkpoint to continue from, or None.
        data_parallel: train data-parallel over the process group (None: when one of
            several processes is active, :func:`saehooks.distributed.is_distributed`);
            False trains this rank's SAE alone (one SAE per rank).

    Raises:
        InputTypeError: ``cfg`` is not a :class:`TrainConfig`.
        DeviceError: ``cfg.device`` is not on this machine.
        SAENotFoundError: ``resume_from`` holds no checkpoint.
        SAEFileError: every checkpoint there is damaged.
        InputError: a resume with a different config (or, for a store sharded by
            rank, another number of ranks); data-parallel with a ``batch_size`` not
            divisible by the number of ranks.
    """

    def __init__(
        self,
        model: nn.Module | None,
        store: Store,
        cfg: TrainConfig,
        resume_from: str | Path | None = None,
        data_parallel: bool | None = None,
    ) -> None:
        if not isinstance(cfg, TrainConfig):
            raise InputTypeError(
                f"cfg must be a TrainConfig, got {type(cfg).__name__}; pass "
                "saehooks.TrainConfig(...)"
            )
        self.data_parallel = (
            distributed.is_distributed() if data_parallel is None else bool(data_parallel)
        )
        self.ranks = distributed.world_size() if self.data_parallel else 1
        """Data-parallel ranks (1 in a single process or one SAE per rank)."""
        self.writes = not self.data_parallel or distributed.is_main()
        """Whether this process writes the run's files (rank 0 of a data-parallel run)."""
        check_batch_divisible(cfg.batch_size, self.ranks)
        if self.ranks > 1 and not getattr(store, "rank_batches", False):
            store = RankSlice(store, distributed.rank(), self.ranks)
        self.cfg, self.store, self.out_dir = cfg, store, Path(cfg.out_dir)
        self.device = device.training_device(model, cfg)
        self.matmul = device.resolve_matmul_dtype(cfg.matmul_dtype, self.device)
        if self.ranks > 1:  # each rank timed its own probe: all take rank 0's choice
            bf16 = torch.tensor([float(self.matmul.dtype == "bfloat16")])
            chosen = "bfloat16" if float(distributed.broadcast_(bf16)) else "float32"
            if chosen != self.matmul.dtype:
                self.matmul = device.MatmulChoice(chosen, "rank 0", None, None)
        self.objective = make_objective(cfg, self.matmul.dtype)
        ignored = unread_fields(cfg, self.objective)
        if ignored and self.writes:
            said = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
            warnings.warn(
                f"the {cfg.architecture!r} objective does not read {said}: the run ignores "
                f"it; it reads {', '.join(sorted(self.objective.fields))} (and the loop's "
                "fields). Drop the setting or pick an architecture that uses it.",
                stacklevel=2,
            )
        context = getattr(store, "context", None) or (cfg.context_size, None)
        self.meta = (
            {}
            if model is None
            else {
                "model_name": tl.model_name(model),
                "model_processing": tl.model_processing(model),
                "context_size": context[0],
                "prepend_bos": context[1],
            }
        )
        # the SAE records the hook's classic name, whichever alias the config used
        self.hook_name = (
            cfg.hook_name if model is None else tl.classic_hook_name(model, cfg.hook_name)
        )
        self.sae = SAE(
            SAEConfig(
                d_in=store.d_in,
                d_sae=cfg.d_sae,
                hook_name=self.hook_name,
                device=str(self.device),
                **self.objective.training_config(store.d_in),
            )
        )
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.tracker = resample.DeadLatentTracker(cfg.d_sae, cfg.dead_window_tokens, self.device)
        self.step_count, self.tokens, self.scale = 0, 0, 1.0
        self.wall_seconds, self.acc = 0.0, self._empty_acc()
        self.last_row: dict[str, float] = {}
        self._lr = self._coefficient = 0.0
        if self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_leftovers(self.out_dir)
        if self.data_parallel:
            distributed.barrier()
        if resume_from is not None:
            self._resume(resume_from)
        else:
            self._initialise()
            if self.writes:
                (self.out_dir / METRICS_FILE).write_text(",".join(METRIC_COLUMNS) + "\n")

    # ---- setup ---------------------------------------------------------------
    @staticmethod
    def _empty_acc() -> dict[str, float]:
        return {"n": 0, "loss": 0.0, "mse": 0.0, "fvu": 0.0, "l0": 0.0, "aux": 0.0}

    def _next_batch(self) -> Tensor:
        """The store's next batch on the training device (one transfer per batch, through
        pinned memory from a CPU store to a GPU)."""
        return device.to_training_device(self.store.next_batch(), self.device)

    def _initialise(self) -> None:
        cfg = self.cfg
        n_batches = max(1, math.ceil(cfg.init_tokens / cfg.batch_size))
        x = torch.cat([self._next_batch() for _ in range(n_batches)])
        if self.ranks > 1:  # the union of the ranks' rows, in one process's order
            b, parts = cfg.batch_size // self.ranks, distributed.all_gather(x)
            x = torch.cat([p[i * b : (i + 1) * b] for i in range(n_batches) for p in parts])
        self.scale = init.normalisation_scale(x) if cfg.normalize_activations else 1.0
        norm = 1.0 if self.objective.unit_norm_decoder else cfg.decoder_init_norm
        self.objective.initialise(
            self.sae,
            x * self.scale,
            b_dec_init=cfg.b_dec_init,
            decoder_norm=norm,
            encoder_as_decoder_transpose=cfg.init_encoder_as_decoder_transpose,
            fit_encoder_scale=cfg.fit_encoder_scale,
            generator=self.generator,
        )

    def _check_resumed_config(self, path: str | Path, saved_config: dict[str, Any]) -> None:
        raw = {k: v for k, v in saved_config.items() if k != "device"}
        saved = TrainConfig.from_dict(raw).to_dict()
        checked = resume_checked_fields(self.objective)
        diffs = [k for k, v in self.cfg.to_dict().items() if k in checked and saved.get(k) != v]
        if diffs:
            said = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(self.cfg, k)!r})" for k in diffs)
            raise InputError(
                f"cannot resume {str(path)!r} with a different config: the run "
                f"had {said}; pass the run's own TrainConfig (on the command line, the "
                "run's own flags), or start a new out_dir"
            )

    def _resume(self, path: str | Path) -> None:
        tensors, values = checkpoint.load_checkpoint(path)
        # to the training device, except RNG states and Adam's step counts (CPU scalars)
        tensors = {
            k: v if k.endswith(("generator", ".step")) else v.to(self.device)
            for k, v in tensors.items()
        }
        self._check_resumed_config(path, values["config"])
        resolved = values.get("matmul_dtype_resolved")
        if (
            self.cfg.matmul_dtype == "auto"
            and resolved in ("float32", "bfloat16")
            and resolved != self.matmul.dtype
        ):
            # keep the run's own choice: an exact resumption needs the same arithmetic
            self.matmul = device.MatmulChoice(resolved, "resumed", None, None)
            self.objective.matmul_dtype = resolved
        with torch.no_grad():
            for name, p in self.sae.named_parameters():
                p.copy_(tensors[f"param.{name}"])
        for name, p in self.sae.named_parameters():
            if f"adam.{name}.step" in tensors:
                self.optimizer.state[p] = {
                    "step": tensors[f"adam.{name}.step"].clone(),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].clone(),
                }
        saved_type = values.get("device_type", "cpu")
        if saved_type == self.device.type:
            self.generator.set_state(tensors["generator"].clone())
        else:  # a CPU generator state does not fit a CUDA generator, and vice versa
            warnings.warn(
                f"resuming a run checkpointed on {saved_type!r} on "
                f"{self.device.type!r}: its random generator starts afresh, so "
                "resampling differs from an uninterrupted run",
                stacklevel=3,
            )
        self.tracker.load(tensors["since_fired"])
        self.objective.load_state_dict(*_objective_state(tensors, values))
        store_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("store.")}
        self.store.load_state_dict(*self._own_store_state(path, store_tensors, values["store"]))
        self.step_count, self.tokens = int(values["step"]), int(values["tokens"])
        self.scale = float(values["scale"])
        self.wall_seconds, self.acc = float(values["wall_seconds"]), dict(values["acc"])
        self._truncate_metrics()

    def _own_store_state(
        self, path: str | Path, tensors: dict[str, Tensor], values: dict[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """This rank's part of a checkpoint's store state (a store sharded by rank keeps
        one per rank, ``rank<r>.``-prefixed, see :meth:`state`)."""
        per_rank = values.get("per_rank") if isinstance(values, dict) else None
        sharded = bool(getattr(self.store, "rank_state", False))
        if per_rank is None and not sharded:
            return tensors, values
        saved = len(per_rank) if per_rank is not None else 1
        if per_rank is None or saved != self.ranks or not sharded:
            raise InputError(
                f"{str(path)!r} was written by a run whose model inputs were sharded over "
                f"{saved} rank(s); this run has {self.ranks} (sharded: {sharded}). Resume "
                f"with `torchrun --nproc_per_node {saved}` and the same token source, or "
                "train from an activation cache, whose stream any number of ranks share"
            )
        prefix = f"rank{distributed.rank()}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        return own, per_rank[distributed.rank()]

    def _truncate_metrics(self) -> None:
        if not self.writes:
            return
        path = self.out_dir / METRICS_FILE
        rows: list[list[str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if r and int(r[0]) <= self.step_count]
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            writer.writerows(kept)

    # ---- state ---------------------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything a resumed run needs: ``(tensors, JSON values)``."""
        tensors: dict[str, Tensor] = {
            "generator": self.generator.get_state(),
            "since_fired": self.tracker.since_fired,
        }
        for name, p in self.sae.named_parameters():
            tensors[f"param.{name}"] = p.detach()
            for key, value in self.optimizer.state.get(p, {}).items():
                tensors[f"adam.{name}.{key}"] = value
        obj_tensors, obj_values = self.objective.state_dict()
        tensors.update({f"objective.{k}": v for k, v in obj_tensors.items()})
        store_tensors, store_values = self.store.state_dict()
        if self.ranks > 1 and getattr(self.store, "rank_state", False):
            # every rank's store state (each reads its own model inputs), kept by rank 0
            mine = ({k: v.detach().cpu() for k, v in store_tensors.items()}, store_values)
            gathered = distributed.gather_object(mine) or []
            store_tensors = {
                f"rank{r}.{k}": v for r, (part, _) in enumerate(gathered) for k, v in part.items()
            }
            store_values = {"per_rank": [v for _, v in gathered]}
        tensors.update({f"store.{k}": v for k, v in store_tensors.items()})
        values = {
            "step": self.step_count,
            "tokens": self.tokens,
            "scale": self.scale,
            "objective": obj_values,
            "wall_seconds": self.wall_seconds,
            "acc": self.acc,
            "store": store_values,
            "config": self.cfg.to_dict(),
            "device_type": self.device.type,
            "matmul_dtype_resolved": self.matmul.dtype,
        }
        return tensors, values

    def folded_sae(self) -> SAE:
        """The SAE on raw activations: normalisation folded in, metadata attached.

        Its architecture is the objective's ``inference_architecture`` (BatchTopK SAEs
        come out as ``jumprelu`` with the global threshold θ). The metadata's
        ``training`` summary holds the config without the machine-specific fields
        (``out_dir``, ``cache_dir``, ``device``: a shipped SAE must not carry the paths
        of the machine that trained it), the device type, and the matmul dtype used with
        how it was chosen (:meth:`MatmulChoice.as_metadata`).
        """
        cfg = self.cfg
        recorded = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_METADATA}
        summary = {
            "architecture_trained": cfg.architecture,
            "tokens": self.tokens,
            "steps": self.step_count,
            "wall_seconds": round(self.wall_seconds, 1),
            "normalisation_scale": self.scale,
            "final_coefficient": self.objective.coefficient(self.step_count),
            "final_metrics": self.last_row,
            "device_type": self.device.type,
            **self.matmul.as_metadata(),
            "config": recorded,
        }
        out = SAE(
            SAEConfig(
                d_in=self.sae.cfg.d_in,
                d_sae=cfg.d_sae,
                hook_name=self.hook_name,
                device=str(self.device),
                metadata={**self.meta, "training": summary},
                **self.objective.inference_config(),
            )
        )
        self.objective.fold_scale(self.sae, self.scale, out)
        self.objective.finish_inference_sae(out)
        return out.eval()

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state (see :mod:`.checkpoint`); under data
        parallelism every rank must call it (a store sharded by rank gathers its
        states) and rank 0 writes."""
        tensors, values = self.state()
        if not self.writes:
            return checkpoint.checkpoint_root(self.out_dir) / f"step_{self.step_count:08d}"
        return checkpoint.save_checkpoint(
            self.out_dir, self.step_count, tensors, values, self.folded_sae()
        )

    # ---- training ------------------------------------------------------------
    def train_step(self) -> ForwardOutput:
        """One optimizer step on the next batch."""
        cfg, sae = self.cfg, self.sae
        x = self._next_batch() * self.scale
        lr = lr_at(self.step_count, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state = StepState(self.step_count, self.tokens, self.tracker.dead, self.ranks)
        coefficient = self.objective.coefficient(state.step)  # in force for this step
        out = self.objective.forward(sae, x, state)
        loss = float(out.loss.detach())
        if self.ranks == 1:
            self._check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.ranks > 1:  # every rank sees the same mean loss, so all raise or none
            self._check_finite(self._average_gradients(loss))
        unit_norm = self.objective.unit_norm_decoder
        if unit_norm:
            with torch.no_grad():  # keep the step tangent to the unit sphere
                w, g = sae.W_dec, sae.W_dec.grad
                g -= (g * w).sum(-1, keepdim=True) * w
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if unit_norm:
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        fvu = metrics.fvu(x, out.x_hat)
        n_tokens = x.shape[0] * self.ranks
        if self.ranks > 1:
            out = self.objective.sync(out, self.ranks)
            fvu = float(distributed.all_reduce_(torch.tensor([fvu], dtype=torch.float64)))
            fvu /= self.ranks
        self.tracker.update(out.fired, n_tokens)
        revivals = self.tracker.revivals
        self.objective.after_step(
            sae, x, out, state, LoopHandles(self.optimizer, self.tracker, self.generator)
        )
        if self.ranks > 1:
            self._agree_after_resampling(revivals)
        self.step_count += 1
        self.tokens += n_tokens
        acc = self.acc
        acc["n"] += 1
        acc["loss"] += loss
        acc["mse"] += float(out.mse)
        acc["fvu"] += fvu
        acc["l0"] += out.l0
        acc["aux"] += float(out.aux)
        self._lr, self._coefficient = lr, coefficient
        return out

    def _check_finite(self, loss: float) -> None:
        """Raise before the optimizer step if the batch loss is not finite (the SAE
        keeps the finite weights it had)."""
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training diverged at step {self.step_count}: the loss is {loss}; start "
                f"again with a lower lr (now {self.cfg.lr}) or grad_clip (now "
                f"{self.cfg.grad_clip})"
            )

    def _average_gradients(self, loss: float) -> float:
        """Average the gradients over the ranks: one all-reduce of them all, flattened,
        with this rank's ``loss`` appended; returns the mean loss over the ranks."""
        grads = [p.grad for p in self.sae.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_tensor([loss])])
        distributed.all_reduce_(flat)
        flat /= self.ranks
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])

    @torch.no_grad()
    def _agree_after_resampling(self, revivals_before: int) -> None:
        """If any rank resampled latents in this step (each from its own batch), give
        every rank rank 0's weights, Adam moments, dead-latent counters, generator and
        the objective's state tensors (``Objective.state_dict``, e.g. JumpReLU's
        thresholds: overwritten in place, as the live tensors they are)."""
        flag = torch.tensor([float(self.tracker.revivals != revivals_before)])
        if float(distributed.all_reduce_(flag, "max")) == 0.0:
            return
        for p in self.sae.parameters():
            distributed.broadcast_(p.data)
            for key in ("exp_avg", "exp_avg_sq"):
                if key in self.optimizer.state.get(p, {}):
                    distributed.broadcast_(self.optimizer.state[p][key])
        distributed.broadcast_(self.tracker.since_fired)
        for tensor in self.objective.state_dict()[0].values():
            distributed.broadcast_(tensor)
        gen = self.generator.get_state()
        self.generator.set_state(distributed.broadcast_(gen.clone()))

    def _log_row(self, rate: float) -> dict[str, float]:
        n = max(1, self.acc["n"])
        row = {
            "step": self.step_count,
            "tokens": self.tokens,
            "lr": self._lr,
            "coefficient": self._coefficient,
            **{k: self.acc[k] / n for k in ("loss", "mse", "fvu", "l0", "aux")},
            "dead_fraction": self.tracker.dead_fraction,
            "tokens_per_s": rate,
            "wall_seconds": self.wall_seconds,
        }
        self.acc = self._empty_acc()
        return row

    def logs_at(self, step: int) -> bool:
        """Whether a metrics row is written after ``step`` steps: the first step, every
        ``log_every_steps``-th, and the last."""
        return step == 1 or step % self.cfg.log_every_steps == 0 or step == self.cfg.total_steps

    def run(self, max_steps: int | None = None) -> SAE | None:
        """Train to ``cfg.total_tokens`` and save; or stop after ``max_steps`` steps
        without a final save (as a killed run would), returning None.

        The metrics log (``metrics.csv``, the progress bar's loss / FVU / L0 / dead
        fraction, W&B) gets a row after the first step, then every
        ``log_every_steps`` steps and after the last (:meth:`logs_at`); each row
        averages the steps since the previous one. The progress bar's line names the
        device and the matmul dtype in use, e.g.
        ``topk blocks.2.hook_resid_post [cpu, float32 matmul]``.

        Returns:
            The trained SAE on raw activations (also saved to ``<out_dir>/sae``).

        Raises:
            InputError: ``max_steps`` is negative.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        if max_steps is not None:
            max_steps = check_int(max_steps, "max_steps", minimum=0)
        wandb_run = _wandb_init(cfg) if cfg.wandb and self.writes else None
        bar = tqdm(
            total=cfg.total_tokens,
            initial=self.tokens,
            unit="tok",
            unit_scale=True,
            disable=not (cfg.progress_bar and self.writes),
            desc=self.describe(),
        )
        log = (self.out_dir / METRICS_FILE).open("a", newline="") if self.writes else None
        writer = csv.writer(log) if log is not None else None
        steps_done, tick, tick_tokens = 0, time.perf_counter(), self.tokens
        try:
            while self.step_count < cfg.total_steps:
                if max_steps is not None and steps_done >= max_steps:
                    return None
                start = time.perf_counter()
                self.train_step()
                self.wall_seconds += time.perf_counter() - start
                steps_done += 1
                bar.update(cfg.batch_size)
                last = self.step_count == cfg.total_steps
                if self.logs_at(self.step_count):
                    now = time.perf_counter()
                    row = self._log_row((self.tokens - tick_tokens) / max(now - tick, 1e-9))
                    tick, tick_tokens = now, self.tokens
                    self.last_row = {k: round(float(v), 6) for k, v in row.items()}
                    if writer is not None and log is not None:
                        writer.writerow([row[c] for c in METRIC_COLUMNS])
                        log.flush()
                    bar.set_postfix(
                        loss=f"{row['loss']:.3g}",
                        L0=f"{row['l0']:.1f}",
                        FVU=f"{row['fvu']:.4f}",
                        dead=f"{row['dead_fraction']:.3f}",
                    )
                    if wandb_run is not None:
                        wandb_run.log(row, step=self.step_count)
                every = cfg.checkpoint_every_tokens
                if (
                    every
                    and (self.tokens // every > (self.tokens - cfg.batch_size) // every)
                    and not last
                ):
                    self.save_checkpoint()
        finally:
            if log is not None:
                log.close()
            bar.close()
            if wandb_run is not None:
                wandb_run.finish()
        self.save_checkpoint()
        sae = self.folded_sae()
        if self.writes:
            # swapped in whole: a kill leaves the previous out_dir/sae or this one, complete
            save_sae(sae, self.out_dir / "sae", format="saelens", overwrite=True)
        if self.data_parallel:
            distributed.barrier()  # every rank returns once the files are written
        return sae

    def describe(self) -> str:
        """``"<architecture> <hook> [<device type>, <dtype> matmul]"``: the progress
        bar's label."""
        return (
            f"{self.cfg.architecture} {self.cfg.hook_name} "
            f"[{self.device.type}, {self.matmul.dtype} matmul]"
        )


def _objective_state(
    tensors: dict[str, Tensor], values: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The objective's part of a checkpoint (also from checkpoints written before the
    objectives had their own: ``theta``, ``log_gain`` and ``kl_running`` at top level)."""
    if "objective" in values:
        return (
            {k[len("objective.") :]: v for k, v in tensors.items() if k.startswith("objective.")},
            values["objective"],
        )
    legacy = {"running": tensors["kl_running"]} if "kl_running" in tensors else {}
    return legacy, {"threshold": values.get("theta", 0.0), "log_gain": values.get("log_gain", 0.0)}


def _wandb_init(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb=True but wandb is not installed; logging to CSV only", stacklevel=3)
        return None
    return wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), dir=cfg.out_dir)


def check_batch_divisible(batch_size: int, ranks: int) -> int:
    """The per-rank batch ``batch_size / ranks`` of a data-parallel run.

    ``TrainConfig.batch_size`` is the GLOBAL batch (tokens per optimiser step), so a
    config means the same run at any number of ranks.

    Raises:
        InputError: ``batch_size`` is not divisible by ``ranks``.
    """
    if batch_size % ranks:
        raise InputError(
            f"batch_size={batch_size} (tokens per optimiser step, over all ranks) is not "
            f"divisible by the {ranks} data-parallel ranks; pass a multiple of {ranks}, "
            f"e.g. batch_size={max(ranks, batch_size - batch_size % ranks)}"
        )
    return batch_size // ranks
