"""Input checkers: the one place where public entry points validate their arguments.

Every public function checks its arguments with these helpers, so the same mistake
gets the same message wherever it is made. Each checker returns the value in its
canonical form (a Python ``int``, a ``torch.device``, a LongTensor ...) and raises a
:mod:`saehooks.errors` class whose message names the argument, what was given and
what to pass instead.

This module imports only torch and :mod:`saehooks.errors`, so every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from saehooks.errors import DeviceError, InputError, InputTypeError


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as a Python ``int`` within ``[minimum, maximum]``.

    Accepts Python and NumPy integers and 0-d integer tensors; refuses ``bool``,
    floats (also integral ones such as ``4096.0``: a float here is usually a mistake
    in a computed value) and strings.

    Raises:
        InputTypeError: not an integer.
        InputError: outside the range.
    """
    if (
        isinstance(value, Tensor)
        and value.ndim == 0
        and not value.dtype.is_floating_point
        and value.dtype != torch.bool
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = (
            f"; pass int({value!r})"
            if isinstance(value, str) and value.strip().lstrip("-").isdigit()
            else ""
        )
        raise InputTypeError(f"{name} must be an integer, got {_describe(value)}{hint}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int >= 1`` (sizes, counts, batch sizes). See :func:`check_int`."""
    return check_int(value, name, minimum=1)


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_inf: bool = False,
    exclusive_minimum: bool = False,
) -> float:
    """``value`` as a finite Python ``float`` within the bounds.

    Args:
        minimum, maximum: inclusive bounds (``minimum`` exclusive with
            ``exclusive_minimum=True``).
        allow_inf: accept ``±inf`` (never NaN).

    Raises:
        InputTypeError: not a real number (``bool`` and strings included).
        InputError: NaN, infinite (unless allowed), or out of bounds.
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise InputError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise InputError(
            f"{name} must be {'>' if exclusive_minimum else '>='} {minimum}, got {value}"
        )
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a ``bool`` (NumPy bools too); strings such as ``"false"`` and
    integers are refused, since ``bool("false")`` is True.

    Raises:
        InputTypeError: not a boolean.
    """
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise InputTypeError(f"{name} must be True or False, got {_describe(value)}")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        InputError: anything else (the message lists the choices).
    """
    if not isinstance(value, str) or value not in choices:
        raise InputError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {_describe(value)}"
        )
    return value


def check_finite_tensor(value: Tensor, name: str) -> Tensor:
    """``value`` if every entry is finite.

    Raises:
        InputTypeError: not a floating-point tensor.
        InputError: a NaN or an infinity (the message counts them).
    """
    if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
        raise InputTypeError(f"{name} must be a floating-point tensor, got {_describe(value)}")
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise InputError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s); pass finite numbers"
        )
    return value


def check_feature_ids(features: Any, d_sae: int, name: str = "features") -> list[int]:
    """Latent ids as a list of distinct Python ints in ``0 … d_sae - 1``.

    Accepts an int, a sequence of ints, a NumPy integer array or an integer tensor
    (0-d or 1-d).

    Raises:
        InputTypeError: floats, bools, strings or nested sequences.
        InputError: an id out of range, a repeated id, or no ids at all.
    """
    if isinstance(features, Tensor):
        if features.dtype.is_floating_point or features.dtype == torch.bool or features.ndim > 1:
            raise InputTypeError(f"{name} must be integer latent ids, got {_describe(features)}")
        items: Iterable[Any] = features.reshape(-1).tolist()
    elif hasattr(features, "dtype") and hasattr(features, "tolist"):  # numpy array or scalar
        if getattr(features, "ndim", 0) > 1 or features.dtype.kind not in "iu":
            raise InputTypeError(
                f"{name} must be integer latent ids, got a NumPy array of "
                f"dtype {features.dtype} and shape {features.shape}"
            )
        listed = features.tolist()
        items = listed if isinstance(listed, list) else [listed]
    elif isinstance(features, (str, bytes)) or not isinstance(features, Iterable):
        items = [features]
    else:
        items = list(features)
    ids = [check_int(f, f"each of {name}", minimum=0) for f in items]
    if not ids:
        raise InputError(f"{name} is empty; pass at least one latent id")
    out_of_range = [f for f in ids if f >= d_sae]
    if out_of_range:
        raise InputError(
            f"latent id(s) {out_of_range} out of range: this SAE has d_sae="
            f"{d_sae} latents (ids 0 … {d_sae - 1})"
        )
    repeated = sorted({f for f in ids if ids.count(f) > 1})
    if repeated:
        raise InputError(f"{name} repeats latent id(s) {repeated}; pass each id once")
    return ids


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine.

    Raises:
        InputTypeError: not a string or ``torch.device``.
        DeviceError: an unknown device string, or a device that is not available
            (e.g. ``"cuda"`` without a GPU); the message lists the devices there are.
    """
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    if not isinstance(device, (str, torch.device)):
        raise InputTypeError(
            f"{name} must be a string such as 'cpu' or 'cuda:0', got {_describe(device)}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(
            f"{name}={str(device)!r} is not a device name ({exc}); pass 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise DeviceError(
                f"{name}={str(device)!r} is not available: {_available()}; pass one of those"
            )
        return dev
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"{name}={str(device)!r} is not available: {_available()}")
        return dev
    return dev  # other backends (xpu, meta, ...): torch reports on use


def _available() -> str:
    names = ["'cpu'"]
    if torch.cuda.is_available():
        names += [f"'cuda:{i}'" for i in range(torch.cuda.device_count())]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        names.append("'mps'")
    return "this machine has " + ", ".join(names)


def check_tokens(
    tokens: Any,
    *,
    min_positions: int = 1,
    d_vocab: int | None = None,
    n_ctx: int | None = None,
    name: str = "tokens",
) -> Tensor:
    """``tokens`` as a LongTensor ``[batch, pos]`` (a 1-d row becomes ``[1, pos]``).

    Args:
        tokens: integer token ids, ``[batch, pos]`` or ``[pos]``.
        min_positions: fewest positions a row may have (2 for next-token losses).
        d_vocab: if given, every id must lie in ``0 … d_vocab - 1``.
        n_ctx: if given, rows may be at most this long (the model's context window).

    Raises:
        InputTypeError: not an integer tensor (e.g. text, or float ids).
        InputError: not 1- or 2-d, no rows, fewer than ``min_positions`` positions,
            longer than ``n_ctx``, or an id outside the vocabulary.
    """
    if (
        not isinstance(tokens, Tensor)
        or tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or tokens.dtype == torch.bool
    ):
        got = type(tokens).__name__ if not isinstance(tokens, Tensor) else tokens.dtype
        raise InputTypeError(
            f"{name} must be an integer tensor [batch, pos], got {got}; "
            "tokenize text with model.to_tokens(...) or use "
            "saehooks.load_eval_tokens()"
        )
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < min_positions:
        raise InputError(
            f"{name} must have shape [batch >= 1, pos >= {min_positions}], got "
            f"{tuple(tokens.shape)}"
        )
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise InputError(
            f"{name} rows have {tokens.shape[1]} positions but the model's context "
            f"window is n_ctx={n_ctx}; cut them, e.g. tokens[:, :{n_ctx}]"
        )
    if (
        d_vocab is not None
        and tokens.numel()
        and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab)
    ):
        bad = tokens[(tokens < 0) | (tokens >= d_vocab)].unique()[:5].tolist()
        raise InputError(
            f"{name} hold ids {bad} outside the model's vocabulary 0 … "
            f"{d_vocab - 1}; tokenize with this model's tokenizer "
            "(model.to_tokens)"
        )
    return tokens.long()


def check_model_tokens(
    model: Any, tokens: Any, *, min_positions: int = 1, name: str = "tokens"
) -> Tensor:
    """:func:`check_tokens` with the vocabulary and context window of ``model``
    (its ``cfg.d_vocab`` and ``cfg.n_ctx``)."""
    cfg = getattr(model, "cfg", None)
    return check_tokens(
        tokens,
        min_positions=min_positions,
        name=name,
        d_vocab=getattr(cfg, "d_vocab", None),
        n_ctx=getattr(cfg, "n_ctx", None),
    )


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """A batch size: an ``int >= 1``. See :func:`check_int`."""
    return check_positive_int(value, name)
