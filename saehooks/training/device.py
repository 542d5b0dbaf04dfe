"""Where a run trains and how it multiplies: the machine-dependent choices of a config.

:func:`training_device` says where a run trains (``TrainConfig.device``, else the
model's device, else the CPU), and :func:`resolve_matmul_dtype` turns
``matmul_dtype="auto"`` into the dtype this machine multiplies fastest (a short timed
probe, once per process and device type).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from saehooks import tl
from saehooks.checks import check_choice, check_device
from saehooks.training.config import MATMUL_DTYPES, TrainConfig

# ---- where a run trains ---------------------------------------------------------------


def training_device(model: nn.Module | None, cfg: TrainConfig) -> torch.device:
    """Where a run trains: ``cfg.device``, else the model's device, else the CPU.

    Raises:
        DeviceError: a device this machine does not have.
    """
    if cfg.device is not None:
        return check_device(cfg.device, "TrainConfig.device")
    if model is not None and next(iter(model.parameters()), None) is not None:
        return tl.model_device(model)
    return torch.device("cpu")


# ---- matmul dtype: what this device multiplies fastest ------------------------------

BF16_MIN_SPEEDUP = 1.25
"""bfloat16 is chosen only if its matmul is at least this many times faster than fp32
(it carries ~3 significant digits; a tie is not worth the precision)."""


class MatmulChoice(NamedTuple):
    """The encoder matmul dtype of a run and how it was chosen."""

    dtype: str
    """``"float32"`` or ``"bfloat16"``."""
    source: str
    """``"explicit"`` (set by the user), ``"probe"`` (timed here), ``"cuda"`` (bf16 on
    a GPU with bf16 support), ``"default"`` (no probe for this device type), or
    ``"rank 0"`` (under torchrun every rank takes rank 0's ``auto`` choice)."""
    float32_ms: float | None
    """Probe time of one fp32 ``[rows, d_in] @ [d_in, d_sae]`` matmul (ms), if timed."""
    bfloat16_ms: float | None
    """The same in bfloat16 (ms), if timed."""

    def as_metadata(self) -> dict[str, Any]:
        """JSON-ready dict for the SAE's training metadata."""
        return {
            "matmul_dtype_resolved": self.dtype,
            "matmul_dtype_source": self.source,
            "matmul_probe_ms": {"float32": self.float32_ms, "bfloat16": self.bfloat16_ms},
        }


def choose_matmul_dtype(
    float32_seconds: float, bfloat16_seconds: float, min_speedup: float = BF16_MIN_SPEEDUP
) -> str:
    """The faster matmul dtype given measured times (a pure function).

    Args:
        float32_seconds: time of one fp32 probe matmul (s).
        bfloat16_seconds: time of the same matmul in bfloat16 (s); ``inf`` or NaN if it
            could not run.
        min_speedup: bf16 must be at least this many times faster.

    Returns:
        ``"bfloat16"`` if ``float32_seconds >= min_speedup * bfloat16_seconds``, else
        ``"float32"`` (also for non-positive or non-finite timings).
    """
    if (
        not (math.isfinite(float32_seconds) and math.isfinite(bfloat16_seconds))
        or bfloat16_seconds <= 0
        or float32_seconds <= 0
    ):
        return "float32"
    return "bfloat16" if float32_seconds >= min_speedup * bfloat16_seconds else "float32"


def probe_matmul_seconds(
    device: str | torch.device = "cpu",
    rows: int = 128,
    d_in: int = 256,
    d_sae: int = 1024,
    repeats: int = 7,
    budget_seconds: float = 0.1,
) -> tuple[float, float]:
    """Best-of-``repeats`` time of a ``[rows, d_in] @ [d_in, d_sae]`` matmul in fp32 and
    in bf16 on ``device`` (after a small warm-up product, which pays for kernel set-up).

    Each dtype stops repeating once it has spent ``budget_seconds``, so the probe takes
    ~0.1 s on a CPU whose bf16 is emulated (~1 GFLOP/s: ~50 ms per product) and a few
    ms where it is fast.

    Returns:
        ``(float32_seconds, bfloat16_seconds)``; bf16 is ``inf`` if it cannot run.
    """
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, d_in, generator=gen).to(dev)
    b = torch.randn(d_in, d_sae, generator=gen).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def best_time(dtype: torch.dtype) -> float:
        x, w = a.to(dtype), b.to(dtype)
        x[:8] @ w
        sync()
        best, spent = math.inf, 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            x @ w
            sync()
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent > budget_seconds:
                break
        return best

    fp32 = best_time(torch.float32)
    try:
        bf16 = best_time(torch.bfloat16)
    except RuntimeError:  # no bf16 matmul on this backend
        bf16 = math.inf
    return fp32, bf16


_MATMUL_CACHE: dict[str, MatmulChoice] = {}


def resolve_matmul_dtype(
    requested: str,
    device: str | torch.device = "cpu",
    probe: Callable[[torch.device], tuple[float, float]] | None = None,
) -> MatmulChoice:
    """The matmul dtype a run uses: an explicit ``requested`` dtype always wins;
    ``"auto"`` is decided once per process and device type (and CPU thread count).

    On CPU the probe (:func:`probe_matmul_seconds`, or ``probe`` if given) times both
    dtypes and :func:`choose_matmul_dtype` decides: bf16 is ~3x faster than fp32 with
    AMX / AVX512-BF16 units and ~40x slower without them (measured on an AVX2 AMD EPYC:
    1.3 vs 45 GFLOP/s). On CUDA it is bf16 when the GPU supports it (its tensor cores
    are made for it), without a probe; on other devices fp32.

    Args:
        requested: ``"auto"``, ``"float32"`` or ``"bfloat16"``.
        device: where the SAE trains.
        probe: ``device -> (float32_seconds, bfloat16_seconds)``, for tests; a result
            obtained through it is not cached.

    Returns:
        A :class:`MatmulChoice`.

    Raises:
        InputError: an unknown ``requested``.
    """
    requested = check_choice(requested, "matmul_dtype", MATMUL_DTYPES)
    if requested != "auto":
        return MatmulChoice(requested, "explicit", None, None)
    dev = torch.device(device)
    key = f"cpu/{torch.get_num_threads()}threads" if dev.type == "cpu" else dev.type
    if probe is None and key in _MATMUL_CACHE:
        return _MATMUL_CACHE[key]
    if dev.type == "cuda" and probe is None:
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        choice = MatmulChoice("bfloat16" if supported else "float32", "cuda", None, None)
    elif dev.type == "cpu" or probe is not None:
        fp32, bf16 = (probe or probe_matmul_seconds)(dev)
        choice = MatmulChoice(
            choose_matmul_dtype(fp32, bf16),
            "probe",
            round(fp32 * 1e3, 4),
            round(bf16 * 1e3, 4) if math.isfinite(bf16) else None,
        )
    else:
        choice = MatmulChoice("float32", "default", None, None)
    if probe is None:
        _MATMUL_CACHE[key] = choice
    return choice


def to_training_device(batch: Tensor, device: torch.device) -> Tensor:
    """``batch`` on ``device``; a CPU batch bound for a CUDA device goes through pinned
    (page-locked) memory with a non-blocking copy, so the transfer overlaps the GPU's work
    (PyTorch's caching host allocator keeps the pinned buffer alive until the copy ends)."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
