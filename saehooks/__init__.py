"""saehooks: sparse autoencoders hooked into TransformerLens models.

import saehooks as sh
model = sh.load_model()                              # shipped reference LM
sae = sh.load_sae("topk-k32-blocks.2.hook_resid_post")
with sh.attach(model, sae):                          # activation -> reconstruction
    loss = model(sh.load_eval_tokens(8), return_type="loss")
report = sh.evaluate(model, sae, sh.load_eval_tokens(64))
"""

from saehooks.analysis.attribution import (
    attribution_check,
    feature_ablation_effects,
    feature_attribution,
)
from saehooks.analysis.logits import feature_logit_effects
from saehooks.analysis.stats import (
    FeatureScan,
    feature_act_stats,
    feature_density,
    feature_density_histogram,
    mean_feature_acts,
    scan_features,
    top_activating_examples,
)
from saehooks.analysis.steering import steering_sweep
from saehooks.errors import (
    ConcurrentUseError,
    DeviceError,
    InputError,
    InputTypeError,
    SAEHooksError,
    SAENotFoundError,
    TrainingDivergedError,
)
from saehooks.evaluation import EvalReport, evaluate, loss_increase_per_token
from saehooks.hooks import (
    ProcessingMismatchWarning,
    add_sae,
    attach,
    attached_saes,
    latent_hooks,
    reset_saes,
    run_with_cache_with_saes,
    run_with_saes,
)
from saehooks.interventions import (
    ablate_features,
    clamp_features,
    steer,
    steer_direction,
)
from saehooks.io import SAEFileError, load_sae, save_sae
from saehooks.reference import list_pretrained_saes, load_eval_tokens
from saehooks.sae import SAE, SAEConfig
from saehooks.tl import HookNameError, load_model
from saehooks.training import TrainConfig, train_sae

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "ConcurrentUseError",
    "TrainingDivergedError",
    "DeviceError",
    "EvalReport",
    "FeatureScan",
    "HookNameError",
    "InputError",
    "InputTypeError",
    "ProcessingMismatchWarning",
    "SAEConfig",
    "SAEFileError",
    "SAEHooksError",
    "SAENotFoundError",
    "TrainConfig",
    "ablate_features",
    "add_sae",
    "attach",
    "attached_saes",
    "attribution_check",
    "clamp_features",
    "evaluate",
    "feature_ablation_effects",
    "feature_act_stats",
    "feature_attribution",
    "feature_density",
    "feature_density_histogram",
    "feature_logit_effects",
    "latent_hooks",
    "list_pretrained_saes",
    "load_eval_tokens",
    "load_model",
    "load_sae",
    "loss_increase_per_token",
    "mean_feature_acts",
    "run_with_cache_with_saes",
    "reset_saes",
    "run_with_saes",
    "save_sae",
    "scan_features",
    "steer",
    "steer_direction",
    "steering_sweep",
    "top_activating_examples",
    "train_sae",
]
