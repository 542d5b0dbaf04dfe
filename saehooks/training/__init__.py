"""Training sparse autoencoders on a model's activations.

``train_sae(model, tokens, TrainConfig(...))`` streams activations at a hook (live or
from an on-disk cache, :mod:`.stores`), trains with one of the objectives of
:mod:`.objectives` in the loop of :mod:`.trainer` (started by
:mod:`.launch`), and returns an SAE that reads raw
activations. See :class:`TrainConfig` for every knob.
"""

from saehooks.training.activation_cache import cache_activations, write_activation_cache
from saehooks.training.activation_store import ActivationStore, TokenSource
from saehooks.training.config import TrainConfig
from saehooks.training.launch import train_sae
from saehooks.training.stores import CachedActivationStore, TensorStore
from saehooks.training.trainer import Trainer

__all__ = [
    "ActivationStore",
    "CachedActivationStore",
    "TensorStore",
    "TokenSource",
    "TrainConfig",
    "Trainer",
    "cache_activations",
    "train_sae",
    "write_activation_cache",
]
