"""kohya sd-scripts option names → where the option lives in a lyco run file (for "did you mean" hints).

kohya users write ``learning_rate``, ``network_dim``, ``max_train_steps`` … out of habit; an unknown key with one
of these names gets a hint naming lyco's key instead of a generic did-you-mean.
"""
from __future__ import annotations

from typing import Any

#: kohya option -> lyco key (or key = value)
KOHYA_KEYS: dict[str, str] = {
    # model
    "pretrained_model_name_or_path": "model.base",
    "v_parameterization": 'model.prediction_type = "v_prediction"',
    "v2": "model.base (the model family is detected from the checkpoint)",
    "clip_skip": "model.clip_skip",
    # network
    "network_module": "network.algo (lyco trains its own adapters: lora, loha, lokr, ...)",
    "network_args": "one network.* key per argument (network.algo, network.factor, ...)",
    "network_dim": "network.dim",
    "network_alpha": "network.alpha",
    "network_dropout": "network.dropout",
    "network_train_unet_only": "network.train_text_encoder = false",
    "network_train_text_encoder_only": "network.train_unet = false",
    # optimisation
    "learning_rate": "train.lr",
    "unet_lr": "train.unet_lr",
    "text_encoder_lr": "train.text_encoder_lr",
    "loraplus_lr_ratio": "train.loraplus_lr_ratio",
    "max_train_steps": "train.steps",
    "max_train_epochs": "train.epochs",
    "epoch": "train.epochs",
    "seed": "train.seed",
    "optimizer_type": "train.optimizer.name",
    "optimizer_args": "train.optimizer.weight_decay / betas / eps",
    "lr_scheduler": "train.scheduler.name",
    "lr_warmup_steps": "train.scheduler.warmup_steps",
    "lr_scheduler_num_cycles": "train.scheduler.num_cycles",
    "lr_scheduler_power": "train.scheduler.power",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "max_grad_norm": "train.max_grad_norm",
    "mixed_precision": "train.mixed_precision",
    "full_fp16": 'train.mixed_precision = "fp16" (adapter weights stay fp32)',
    "full_bf16": 'train.mixed_precision = "bf16" (adapter weights stay fp32)',
    "gradient_checkpointing": "train.gradient_checkpointing",
    "noise_offset": "train.noise_offset",
    "min_snr_gamma": "train.min_snr_gamma",
    "scale_weight_norms": "train.max_norm",
    "cache_latents": 'train.cache_latents = "memory"',
    "cache_latents_to_disk": 'train.cache_latents = "disk"',
    "cache_text_encoder_outputs": "train.cache_text",
    # data
    "train_data_dir": "datasets[].folders (kohya N_name subfolders) or datasets[].subsets",
    "train_batch_size": "datasets[].batch_size",
    "batch_size": "datasets[].batch_size",
    "resolution": "datasets[].resolution",
    "enable_bucket": "datasets[].bucket.enabled",
    "min_bucket_reso": "datasets[].bucket.min_side",
    "max_bucket_reso": "datasets[].bucket.max_side",
    "bucket_reso_steps": "datasets[].bucket.step",
    "bucket_no_upscale": "datasets[].bucket.no_upscale",
    "caption_dropout_rate": "datasets[].caption_dropout",
    "caption_extension": "datasets[].subsets[].caption_extension",
    "shuffle_caption": "datasets[].subsets[].shuffle_tags",
    "keep_tokens": "datasets[].subsets[].keep_tokens",
    "caption_tag_dropout_rate": "datasets[].subsets[].tag_dropout",
    "flip_aug": "datasets[].subsets[].flip",
    "num_repeats": "datasets[].subsets[].repeats",
    "class_tokens": "datasets[].subsets[].trigger",
    "image_dir": "datasets[].subsets[].path",
    # outputs
    "output_name": "name",
    "output_dir": "output_dir (at the top level of the file)",
    "save_every_n_epochs": "save.every_n_epochs",
    "save_every_n_steps": "save.every_n_steps",
    "save_last_n_epochs": "save.keep_last_n",
    "save_last_n_steps": "save.keep_last_n",
    "save_precision": "save.dtype",
    "save_model_as": "nothing: lyco always writes .safetensors",
    "save_state": "save.state_every_n_steps or save.state_every_n_epochs",
    "sample_prompts": "sample.prompts",
    "sample_every_n_steps": "sample.every_n_steps",
    "sample_every_n_epochs": "sample.every_n_epochs",
    "sample_sampler": "sample.sampler",
    "sample_at_first": "sample.at_start",
    "logging_dir": "nothing: logs go to <output_dir>/logs",
    "log_with": "log.tensorboard / log.wandb",
}

#: kohya_ss / sd-scripts config-file sections
KOHYA_SECTIONS = {"general", "model_arguments", "additional_network_arguments", "optimizer_arguments",
                  "dataset_arguments", "training_arguments", "sample_prompt_arguments", "saving_arguments",
                  "logging_arguments", "huggingface_arguments", "dreambooth_arguments"}
LYCO_SECTIONS = "[model], [network], [train], [[datasets]], [sample], [save], [log]"


def kohya_hint(key: str, value: Any) -> str | None:
    """The hint for an unknown key that is a kohya option or section name, else None."""
    if key in KOHYA_SECTIONS:
        inner = [f"{k} -> {KOHYA_KEYS[k]}" for k in (value if isinstance(value, dict) else {}) if k in KOHYA_KEYS]
        return (f"a kohya config section; a lyco run file has {LYCO_SECTIONS}"
                + (": " + "; ".join(inner) if inner else ""))
    if key in KOHYA_KEYS:
        return f"kohya's {key}: did you mean {KOHYA_KEYS[key]}?"
    return None
