"""saehooks: sparse autoencoders hooked into TransformerLens models."""

from saehooks.evaluation import EvalReport, evaluate, loss_increase_per_token
from saehooks.hooks import attach, run_with_cache_with_saes, run_with_saes
from saehooks.io import load_sae, save_sae
from saehooks.models import load_model
from saehooks.reference import list_pretrained_saes, load_eval_tokens
from saehooks.sae import SAE, SAEConfig

__version__ = "0.1.0"
