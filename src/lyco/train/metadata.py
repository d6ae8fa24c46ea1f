"""The kohya sd-scripts metadata (``ss_*``) a trained adapter carries, so UIs and tools show how it was made.

The model-side keys (``ss_base_model_version``, ``ss_network_*``, modelspec, hashes) are added by
:meth:`lyco.network.Network.save` via :mod:`lyco.sd`; this module adds what only the trainer knows.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from .config import TrainConfig
from .data import DatasetScan


@dataclass(frozen=True)
class RunFacts:
    """What the metadata says about the run, fixed when the run starts."""

    started: str
    num_train_images: int
    tag_frequency: dict[str, int]
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, scans: list[DatasetScan]) -> RunFacts:
        items = [it for sc in scans for it in sc.items]
        tags = Counter(t.strip() for it in items for t in it.caption.split(",") if t.strip())
        dirs = {s.name: {"n_repeats": s.repeats, "img_count": len(s.items)} for sc in scans for s in sc.subsets}
        return cls(time.strftime("%Y-%m-%dT%H:%M:%S"), sum(len(s.epoch_indices()) for s in scans), dict(tags), dirs)


def kohya_metadata(cfg: TrainConfig, facts: RunFacts, step: int, epoch: int) -> dict[str, str]:
    """sd-scripts' training keys for an adapter written at ``step`` / ``epoch``."""
    t = cfg.train
    resolution = cfg.datasets[0].resolution
    return {
        "ss_output_name": cfg.name, "ss_steps": str(step), "ss_epoch": str(epoch),
        "ss_learning_rate": str(t.lr), "ss_unet_lr": str(t.unet_lr or t.lr),
        "ss_text_encoder_lr": str(t.text_encoder_lr or t.lr), "ss_seed": str(t.seed),
        "ss_num_train_images": str(facts.num_train_images),
        "ss_mixed_precision": t.mixed_precision, "ss_training_started_at": facts.started,
        "ss_clip_skip": str(cfg.model.clip_skip), "ss_resolution": f"({resolution}, {resolution})",
        "ss_sd_model_name": cfg.model.base, "ss_tag_frequency": json.dumps({"all": facts.tag_frequency}),
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
        "lyco.train_config": json.dumps(cfg.resolved()),
    }
