"""Training sparse autoencoders on a model's activations.

``train_sae(model, tokens, TrainConfig(...))`` streams activations at a hook (live or
from an on-disk cache, :mod:`.stores`), trains with one of the objectives of
:mod:`.objectives` in the loop of :mod:`.trainer`, and returns an SAE that reads raw
activations. See :class:`TrainConfig` for every knob.
"""

from saehooks.training.activation_cache import CachedActivationStore, write_activation_cache
from saehooks.training.activation_store import ActivationStore, TokenSource
from saehooks.training.config import TrainConfig
from saehooks.training.trainer import Trainer, train_sae

__all__ = [
    "ActivationStore",
    "CachedActivationStore",
    "TokenSource",
    "TrainConfig",
    "Trainer",
    "train_sae",
    "write_activation_cache",
]
