"""Training: the loop (``loop``), its typed config (``config``), data and model loading
(``data``), the per-batch objective (``loss``, ``edm``), VAE latent caching (``latent_cache``) and
checkpoints (``checkpoint``).

``python -m trackgo_model.train`` (what ``accelerate launch -m`` and ``torchrun -m`` run) and the
``trackgo train`` subcommand both end in :func:`trackgo_model.train.loop.train`.
"""
from .loop import DTYPES, NonFiniteLossError, accelerate_kwargs, load_trainable, main, prepare_model, register, train

__all__ = ["DTYPES", "NonFiniteLossError", "accelerate_kwargs", "load_trainable", "main", "prepare_model",
           "register", "train"]
