"""The SAE trainer: Adam, schedules, dead latents, logging, checkpoints.

:func:`train_sae` is the entry point; :class:`Trainer` exposes the steps for tests
and notebooks (``Trainer(...).run(max_steps=...)`` stops like a killed run).
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

from saehooks import models
from saehooks.checks import check_device, check_int
from saehooks.errors import InputError, InputTypeError
from saehooks.io import save_sae
from saehooks.sae import SAE, SAEConfig
from saehooks.training import checkpoint, config, forward, init, resample
from saehooks.training.activation_cache import (
    CachedActivationStore,
    model_fingerprint,
    read_cache_info,
    write_activation_cache,
)
from saehooks.training.activation_store import ActivationStore
from saehooks.training.config import TrainConfig

METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ("step", "tokens", "lr", "coefficient", "loss", "mse", "fvu", "l0", "aux",
                  "dead_fraction", "tokens_per_s", "wall_seconds")
# fields that may differ between a run and its resumption
_RESUME_FREE = {"progress_bar", "wandb", "wandb_project", "out_dir", "checkpoint_every_tokens",
                "log_every_steps", "cache_dir", "device"}
# machine-specific fields left out of the config recorded in a saved SAE's metadata
_NOT_IN_METADATA = ("out_dir", "cache_dir", "device")
# fields an objective does not read
_UNUSED = {
    "topk": {"l1_coefficient", "sparsity_warmup_fraction", "kl_beta", "kl_rho", "kl_scale",
             "target_l0", "target_l0_rate", "resample_dead", "resample_every_tokens",
             "resample_stop_fraction"},
    "l1": {"k", "auxk", "aux_k", "aux_coefficient", "kl_beta", "kl_rho", "kl_scale"},
    "kl": {"k", "auxk", "aux_k", "aux_coefficient", "l1_coefficient"},
}
_UNUSED["batchtopk"] = _UNUSED["topk"]


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


def coefficient_at(step: int, cfg: TrainConfig) -> float:
    """Sparsity coefficient with its linear warm-up: λ (``l1``), β (``kl``), else 0."""
    base = {"l1": cfg.l1_coefficient, "kl": cfg.kl_beta}.get(cfg.architecture, 0.0)
    warm = round(cfg.sparsity_warmup_fraction * cfg.total_steps)
    return base * min(1.0, (step + 1) / warm) if warm else base


def training_device(model: nn.Module | None, cfg: TrainConfig) -> torch.device:
    """Where a run trains: ``cfg.device``, else the model's device, else the CPU.

    Raises:
        DeviceError: a device this machine does not have.
    """
    if cfg.device is not None:
        return check_device(cfg.device, "TrainConfig.device")
    if model is not None and next(iter(model.parameters()), None) is not None:
        return models.model_device(model)
    return torch.device("cpu")


def make_store(model: nn.Module, token_source: Any, cfg: TrainConfig):
    """The activation store of a run: live, or over the on-disk cache of ``cfg.cache_dir``
    (written first if missing or made for another hook / model). A live store keeps its
    buffer on the training device (:func:`training_device`)."""
    live = ActivationStore(model, token_source, cfg.hook_name, cfg.batch_size,
                           cfg.buffer_tokens, cfg.model_batch_rows, cfg.drop_bos, cfg.seed,
                           cfg.context_size, device=training_device(model, cfg))
    live.context = source_context(live.source, live.bos_id, cfg)
    if not cfg.cache_dir:
        return live
    info = read_cache_info(cfg.cache_dir)
    stale = info is None or info["hook_name"] != cfg.hook_name or \
        info.get("model_fingerprint") != model_fingerprint(model) or \
        (cfg.cache_tokens and info["n_tokens"] < cfg.cache_tokens)
    if stale:
        finite = live.source.finite_rows is not None
        n = cfg.cache_tokens or (None if finite else cfg.total_tokens)
        write_activation_cache(live, cfg.cache_dir, n, cfg.shard_tokens, cfg.progress_bar)
    cached = CachedActivationStore(cfg.cache_dir, cfg.batch_size, cfg.seed)
    cached.context = live.context
    return cached


def source_context(source, bos_id: int | None, cfg: TrainConfig) -> tuple[int, bool | None]:
    """``(context_size, prepend_bos)`` of a token source, for the SAE's metadata
    (``prepend_bos`` is None when it cannot be told without consuming the source)."""
    rows = source._tensor
    if rows is None and isinstance(source._iterable, (list, tuple)) and source._iterable:
        first = torch.as_tensor(source._iterable[0])
        rows = first if first.ndim == 2 else first[None]
    if rows is not None:
        return int(rows.shape[1]), bool(bos_id is not None and (rows[:, 0] == bos_id).all())
    if source._files is not None:
        return cfg.context_size, True
    return cfg.context_size, None


class Trainer:
    """Trains one SAE on a store's activations.

    The SAE, its Adam state, the dead-latent counters and each batch live on
    :attr:`device` (``cfg.device``, else the model's, else the CPU); the running
    metrics are Python floats. The encoder matmul dtype is ``cfg.matmul_dtype``, with
    ``"auto"`` resolved by :func:`~saehooks.training.config.resolve_matmul_dtype`
    (:attr:`matmul`).

    Args:
        model: the TransformerLens model (for the SAE's metadata; None omits it).
        store: an :class:`ActivationStore` or :class:`CachedActivationStore`.
        cfg: the training configuration.
        resume_from: a run folder / checkpoint to continue from, or None.

    Raises:
        InputTypeError: ``cfg`` is not a :class:`TrainConfig`.
        DeviceError: ``cfg.device`` is not on this machine.
        SAENotFoundError: ``resume_from`` holds no checkpoint.
        SAEFileError: every checkpoint there is damaged.
        InputError: a resume with a different config.
    """

    def __init__(self, model: nn.Module | None, store, cfg: TrainConfig,
                 resume_from: str | Path | None = None) -> None:
        if not isinstance(cfg, TrainConfig):
            raise InputTypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}; pass "
                                 "saehooks.TrainConfig(...)")
        self.cfg, self.store, self.out_dir = cfg, store, Path(cfg.out_dir)
        self.device = training_device(model, cfg)
        self.matmul = config.resolve_matmul_dtype(cfg.matmul_dtype, self.device)
        # what the forward passes read: the config with the matmul dtype resolved
        self._step_cfg = dataclasses.replace(cfg, matmul_dtype=self.matmul.dtype)
        context = getattr(store, "context", (cfg.context_size, None))
        self.meta = {} if model is None else {
            "model_name": models.model_name(model),
            "model_processing": models.model_processing(model),
            "context_size": context[0], "prepend_bos": context[1]}
        # the SAE records the hook's classic name, whichever alias the config used
        self.hook_name = cfg.hook_name if model is None else \
            models.classic_hook_name(model, cfg.hook_name)
        d_in = store.d_in
        self.sae = SAE(SAEConfig(d_in=d_in, d_sae=cfg.d_sae, hook_name=self.hook_name,
                                 device=str(self.device)))
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.tracker = resample.DeadLatentTracker(cfg.d_sae, cfg.dead_window_tokens)
        self.tracker.since_fired = self.tracker.since_fired.to(self.device)
        self.step_count, self.tokens, self.scale, self.theta = 0, 0, 1.0, 0.0
        self.log_gain = 0.0  # log of the target-L0 controller's factor on the coefficient
        # kl: running firing estimate per latent (losses.running_firing_rate)
        self.kl_running = torch.zeros(cfg.d_sae, dtype=self.sae.W_dec.dtype,
                                      device=self.sae.W_dec.device)
        self.wall_seconds, self.acc = 0.0, self._empty_acc()
        self.last_row: dict[str, float] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_leftovers(self.out_dir)
        if resume_from is not None:
            self._resume(resume_from)
        else:
            self._initialise()
            (self.out_dir / METRICS_FILE).write_text(",".join(METRIC_COLUMNS) + "\n")

    # ---- setup ---------------------------------------------------------------
    @staticmethod
    def _empty_acc() -> dict[str, float]:
        return {"n": 0, "loss": 0.0, "mse": 0.0, "fvu": 0.0, "l0": 0.0, "aux": 0.0}

    def _next_batch(self) -> Tensor:
        """The store's next batch on the training device (one transfer per batch)."""
        return self.store.next_batch().to(self.device)

    def _initialise(self) -> None:
        cfg = self.cfg
        n_batches = max(1, math.ceil(cfg.init_tokens / cfg.batch_size))
        x = torch.cat([self._next_batch() for _ in range(n_batches)])
        self.scale = init.normalisation_scale(x) if cfg.normalize_activations else 1.0
        norm = 1.0 if cfg.unit_norm_decoder else cfg.decoder_init_norm
        init.init_sae(self.sae, x * self.scale, b_dec_init=cfg.b_dec_init, decoder_norm=norm,
                      encoder_as_decoder_transpose=cfg.init_encoder_as_decoder_transpose,
                      generator=self.generator)
        if cfg.fit_encoder_scale:
            topk = cfg.architecture in ("topk", "batchtopk")
            init.fit_encoder_scale(self.sae, x[:8192] * self.scale, cfg.k if topk else None)

    def _resume(self, path: str | Path) -> None:
        tensors, values = checkpoint.load_checkpoint(path)
        # to the training device, except RNG states and Adam's step counts (CPU scalars)
        tensors = {k: v if k.endswith(("generator", ".step")) else v.to(self.device)
                   for k, v in tensors.items()}
        raw = {k: v for k, v in values["config"].items() if k != "device"}
        saved = TrainConfig.from_dict(raw).to_dict()
        free = _RESUME_FREE | _UNUSED[self.cfg.architecture]
        diffs = [k for k, v in self.cfg.to_dict().items() if k not in free and saved.get(k) != v]
        if diffs:
            said = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(self.cfg, k)!r})"
                             for k in diffs)
            raise InputError(f"cannot resume {str(path)!r} with a different config: the run "
                             f"had {said}; pass the run's own TrainConfig (or start a new "
                             "out_dir)")
        resolved = values.get("matmul_dtype_resolved")
        if self.cfg.matmul_dtype == "auto" and resolved in ("float32", "bfloat16") \
                and resolved != self.matmul.dtype:
            # keep the run's own choice: an exact resumption needs the same arithmetic
            self.matmul = config.MatmulChoice(resolved, "resumed", None, None)
            self._step_cfg = dataclasses.replace(self.cfg, matmul_dtype=resolved)
        with torch.no_grad():
            for name, p in self.sae.named_parameters():
                p.copy_(tensors[f"param.{name}"])
        for name, p in self.sae.named_parameters():
            if f"adam.{name}.step" in tensors:
                self.optimizer.state[p] = {
                    "step": tensors[f"adam.{name}.step"].clone(),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].clone()}
        saved_type = values.get("device_type", "cpu")
        if saved_type == self.device.type:
            self.generator.set_state(tensors["generator"].clone())
        else:  # a CPU generator state does not fit a CUDA generator, and vice versa
            warnings.warn(f"resuming a run checkpointed on {saved_type!r} on "
                          f"{self.device.type!r}: its random generator starts afresh, so "
                          "resampling differs from an uninterrupted run", stacklevel=3)
        self.tracker.since_fired = tensors["since_fired"].clone()
        if "kl_running" in tensors:
            self.kl_running = tensors["kl_running"].to(self.sae.W_dec.device).clone()
        store_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("store.")}
        self.store.load_state_dict(store_tensors, values["store"])
        self.step_count, self.tokens = int(values["step"]), int(values["tokens"])
        self.scale, self.theta = float(values["scale"]), float(values["theta"])
        self.log_gain = float(values["log_gain"])
        self.wall_seconds, self.acc = float(values["wall_seconds"]), dict(values["acc"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
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
        tensors: dict[str, Tensor] = {"generator": self.generator.get_state(),
                                      "since_fired": self.tracker.since_fired,
                                      "kl_running": self.kl_running}
        for name, p in self.sae.named_parameters():
            tensors[f"param.{name}"] = p.detach()
            for key, value in self.optimizer.state.get(p, {}).items():
                tensors[f"adam.{name}.{key}"] = value
        store_tensors, store_values = self.store.state_dict()
        tensors.update({f"store.{k}": v for k, v in store_tensors.items()})
        values = {"step": self.step_count, "tokens": self.tokens, "scale": self.scale,
                  "theta": self.theta, "log_gain": self.log_gain,
                  "wall_seconds": self.wall_seconds, "acc": self.acc,
                  "store": store_values, "config": self.cfg.to_dict(),
                  "device_type": self.device.type, "matmul_dtype_resolved": self.matmul.dtype}
        return tensors, values

    def folded_sae(self) -> SAE:
        """The SAE on raw activations: normalisation folded in, metadata attached.

        BatchTopK SAEs come out as ``jumprelu`` with the global threshold θ. The
        metadata's ``training`` summary holds the config without the machine-specific
        fields (``out_dir``, ``cache_dir``, ``device``: a shipped SAE must not carry the
        paths of the machine that trained it), the device type, and the matmul dtype
        used with how it was chosen (:meth:`MatmulChoice.as_metadata`).
        """
        cfg = self.cfg
        arch = {"topk": "topk", "batchtopk": "jumprelu"}.get(cfg.architecture, "relu")
        recorded = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_METADATA}
        summary = {"architecture_trained": cfg.architecture, "tokens": self.tokens,
                   "steps": self.step_count, "wall_seconds": round(self.wall_seconds, 1),
                   "normalisation_scale": self.scale,
                   "final_coefficient": coefficient_at(self.step_count, cfg)
                   * math.exp(self.log_gain), "final_metrics": self.last_row,
                   "device_type": self.device.type, **self.matmul.as_metadata(),
                   "config": recorded}
        out = SAE(SAEConfig(d_in=self.sae.cfg.d_in, d_sae=cfg.d_sae, architecture=arch,
                            k=cfg.k if arch == "topk" else None, hook_name=self.hook_name,
                            device=str(self.device),
                            metadata={**self.meta, "training": summary}))
        init.fold_scale(self.sae, self.scale, out)
        if arch == "jumprelu":
            with torch.no_grad():
                out.threshold.fill_(self.theta)
        return out.eval()

    def save_checkpoint(self) -> Path:
        tensors, values = self.state()
        return checkpoint.save_checkpoint(self.out_dir, self.step_count, tensors, values,
                                          self.folded_sae())

    # ---- training ------------------------------------------------------------
    def train_step(self) -> forward.ForwardOutput:
        """One optimizer step on the next batch."""
        cfg, sae = self._step_cfg, self.sae  # the config with the matmul dtype resolved
        x = self._next_batch() * self.scale
        lr = lr_at(self.step_count, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        coefficient = coefficient_at(self.step_count, cfg) * math.exp(self.log_gain)
        dead = self.tracker.dead
        if cfg.architecture == "topk":
            step_fn = forward.topk_forward if cfg.sparse_kernels else forward.topk_dense_forward
            out = step_fn(sae, x, cfg, dead)
        elif cfg.architecture == "batchtopk":
            out = forward.batchtopk_forward(sae, x, cfg, dead)
        else:
            out = forward.relu_forward(sae, x, cfg, coefficient, self.kl_running, self.tokens)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.unit_norm_decoder:
            with torch.no_grad():  # keep the step tangent to the unit sphere
                w, g = sae.W_dec, sae.W_dec.grad
                g -= (g * w).sum(-1, keepdim=True) * w
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if cfg.unit_norm_decoder:
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.tracker.update(out.fired, x.shape[0])
        warm = round(cfg.sparsity_warmup_fraction * cfg.total_steps)
        if cfg.target_l0 > 0 and cfg.architecture in ("l1", "kl") and self.step_count >= warm:
            error = math.log(max(out.l0, 1e-3) / cfg.target_l0)
            bound = math.log(cfg.target_l0_max_factor)
            self.log_gain += cfg.target_l0_rate * max(-1.0, min(1.0, error))
            self.log_gain = max(-bound, min(bound, self.log_gain))
        if cfg.architecture == "batchtopk":
            self.theta = out.min_active if self.step_count == 0 else \
                0.99 * self.theta + 0.01 * out.min_active
        before = self.tokens
        self.step_count += 1
        self.tokens += x.shape[0]
        every = cfg.resample_every_tokens
        if (cfg.architecture in ("l1", "kl") and cfg.resample_dead and every
                and self.tokens // every > before // every
                and self.tokens <= cfg.resample_stop_fraction * cfg.total_tokens):
            resample.resample_dead_latents(sae, self.tracker.dead, x, out.x_hat, self.optimizer,
                                           self.generator, cfg.unit_norm_decoder)
            self.tracker.revive(self.tracker.dead.nonzero().squeeze(1))
        acc = self.acc
        acc["n"] += 1
        acc["loss"] += float(out.loss.detach())
        acc["mse"] += float(out.mse)
        acc["fvu"] += float(out.mse) / float((x - x.mean(0)).pow(2).sum(-1).mean())
        acc["l0"] += out.l0
        acc["aux"] += float(out.aux)
        self._lr, self._coefficient = lr, coefficient
        return out

    def _log_row(self, rate: float) -> dict[str, float]:
        n = max(1, self.acc["n"])
        row = {"step": self.step_count, "tokens": self.tokens, "lr": self._lr,
               "coefficient": self._coefficient,
               **{k: self.acc[k] / n for k in ("loss", "mse", "fvu", "l0", "aux")},
               "dead_fraction": self.tracker.dead_fraction, "tokens_per_s": rate,
               "wall_seconds": self.wall_seconds}
        self.acc = self._empty_acc()
        return row

    def run(self, max_steps: int | None = None) -> SAE | None:
        """Train to ``cfg.total_tokens`` and save; or stop after ``max_steps`` steps
        without a final save (as a killed run would), returning None.

        The progress bar's line names the device and the matmul dtype in use, e.g.
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
        wandb_run = _wandb_init(cfg) if cfg.wandb else None
        bar = tqdm(total=cfg.total_tokens, initial=self.tokens, unit="tok", unit_scale=True,
                   disable=not cfg.progress_bar, desc=self.describe())
        metrics = (self.out_dir / METRICS_FILE).open("a", newline="")
        writer = csv.writer(metrics)
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
                if self.step_count % cfg.log_every_steps == 0 or last:
                    now = time.perf_counter()
                    row = self._log_row((self.tokens - tick_tokens) / max(now - tick, 1e-9))
                    tick, tick_tokens = now, self.tokens
                    self.last_row = {k: round(float(v), 6) for k, v in row.items()}
                    writer.writerow([row[c] for c in METRIC_COLUMNS])
                    metrics.flush()
                    bar.set_postfix(loss=f"{row['loss']:.3g}", L0=f"{row['l0']:.1f}",
                                    FVU=f"{row['fvu']:.4f}", dead=f"{row['dead_fraction']:.3f}")
                    if wandb_run is not None:
                        wandb_run.log(row, step=self.step_count)
                every = cfg.checkpoint_every_tokens
                if every and (self.tokens // every > (self.tokens - cfg.batch_size) // every) \
                        and not last:
                    self.save_checkpoint()
        finally:
            metrics.close()
            bar.close()
            if wandb_run is not None:
                wandb_run.finish()
        self.save_checkpoint()
        sae = self.folded_sae()
        # swapped in whole: a kill leaves the previous out_dir/sae or this one, complete
        save_sae(sae, self.out_dir / "sae", format="saelens", overwrite=True)
        return sae

    def describe(self) -> str:
        """``"<architecture> <hook> [<device type>, <dtype> matmul]"``: the progress
        bar's label."""
        return (f"{self.cfg.architecture} {self.cfg.hook_name} "
                f"[{self.device.type}, {self.matmul.dtype} matmul]")


def _wandb_init(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb=True but wandb is not installed; logging to CSV only",
                      stacklevel=3)
        return None
    return wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), dir=cfg.out_dir)


def train_sae(model: nn.Module, token_source: Any, cfg: TrainConfig,
              resume_from: str | Path | None = None) -> SAE:
    """Train an SAE on ``model``'s activations at ``cfg.hook_name``.

    Args:
        model: a TransformerLens model (see :func:`saehooks.load_model`).
        token_source: LongTensor ``[n_seq, n_ctx]``, a ``.safetensors`` file with
            ``tokens``, a folder of text files, or an iterable of token tensors
            (see :class:`~saehooks.training.activation_store.TokenSource`).
        cfg: the configuration.
        resume_from: a run folder (or checkpoint) to continue; the run then ends
            with exactly the weights an uninterrupted run would have.

    Returns:
        The SAE on raw activations (normalisation folded in), in eval mode, with
        metadata ``model_name``, ``model_processing``, ``context_size``,
        ``prepend_bos`` and ``training``; also saved to ``<out_dir>/sae``.

    Raises:
        InputTypeError: ``cfg`` is not a :class:`TrainConfig`, or an unsupported token
            source.
        HookNameError: the model has no such hook.
        DeviceError: ``cfg.device`` is not on this machine.
        InputError: token ids outside the model's vocabulary or rows longer than its
            context, or a resume with a different config.
        SAENotFoundError: no token file at the path given, or no checkpoint in
            ``resume_from``.
        SAEFileError: every checkpoint in ``resume_from`` is damaged.
    """
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}; pass "
                             "saehooks.TrainConfig(...)")
    if resume_from is not None:  # fail before any model or cache work (warnings come later)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.find_checkpoint(resume_from)
    store = make_store(model, token_source, cfg)
    trainer = Trainer(model, store, cfg, resume_from)
    sae = trainer.run()
    assert sae is not None
    return sae
