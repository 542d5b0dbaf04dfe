"""The errors saehooks raises for user mistakes: one base class, a few kinds.

Every error that means "the input was wrong" (a value, a file, a hook name, a
device, a usage order) derives from :class:`SAEHooksError`, and its message names the
problem and what to pass instead. The command line prints these as one line and lets
every other exception (a bug) show its traceback. Each kind also subclasses the
builtin a caller would expect (``ValueError``, ``TypeError``, ``KeyError``,
``FileNotFoundError``, ``RuntimeError``, ``FloatingPointError``), so ``except
ValueError`` keeps working.

This module imports nothing of the package, so every module may raise these.
"""

from __future__ import annotations


class SAEHooksError(Exception):
    """Base class of every user-facing saehooks error (bad input, file or usage)."""

    def __str__(self) -> str:  # KeyError subclasses would print the message in quotes
        return str(self.args[0]) if self.args else type(self).__name__


class InputError(SAEHooksError, ValueError):
    """An argument has the wrong value, shape, range or dtype."""


class InputTypeError(SAEHooksError, TypeError):
    """An argument has the wrong type."""


class DeviceError(SAEHooksError, ValueError):
    """A device that is not available, or tensors on different devices."""


class HookNameError(SAEHooksError, KeyError):
    """A hook name the model does not have."""


class SAEFileError(SAEHooksError, ValueError):
    """A file that should hold an SAE is missing, truncated, corrupt or inconsistent."""


class SAENotFoundError(SAEHooksError, FileNotFoundError):
    """No SAE (or model) at the path or name given."""


class ConcurrentUseError(SAEHooksError, RuntimeError):
    """One model used by saehooks contexts from several threads at once."""


class TrainingDivergedError(SAEHooksError, FloatingPointError):
    """A training run produced non-finite values (a loss or a parameter); the message
    names the step and the setting to lower."""
