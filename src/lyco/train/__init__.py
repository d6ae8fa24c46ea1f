"""The trainer: ``lyco train CONFIG.toml`` on Hugging Face accelerate (see :mod:`lyco.train.loop`)."""
from .config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
