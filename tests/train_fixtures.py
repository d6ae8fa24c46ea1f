"""Shared helpers for trainer tests: a tiny SD folder with a tokenizer, small image datasets, configs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from sd_tiny import make_pipeline, tokenizer_dir


def tiny_model_dir(root: Path, family: str = "sd1") -> Path:
    d = root / f"model-{family}"
    if not (d / "model_index.json").is_file():
        pipe = make_pipeline(family)
        pipe.save_pretrained(d)
        for sub in ("tokenizer",) + (("tokenizer_2",) if family == "sdxl" else ()):
            shutil.copytree(tokenizer_dir(), d / sub, dirs_exist_ok=True)
    return d


def image_folder(root: Path, name: str = "10_zkx shape", n: int = 6, size=(32, 32), seed: int = 0,
                 captions: bool = True) -> Path:
    d = root / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = size
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[:] = rng.integers(0, 255, 3)
        arr[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(d / f"{i}.png")
        if captions:
            (d / f"{i}.txt").write_text(f"zkx shape, tag{i % 3}")
    return d.parent


def base_config(root: Path, model: Path, data: Path, **over) -> dict:
    cfg = {
        "name": "t", "output_dir": str(root / "run"), "overwrite": True,
        "model": {"base": str(model)},
        "network": {"algo": "lora", "dim": 4, "alpha": 4.0},
        "train": {"steps": 4, "lr": 1e-3, "seed": 3},
        "datasets": [{"resolution": 32, "batch_size": 2, "folders": [str(data)], "bucket": {"step": 8}}],
        "save": {"dtype": "fp32"},
        "log": {"tensorboard": False},
    }
    for k, v in over.items():
        cur = cfg
        keys = k.split(".")
        for kk in keys[:-1]:
            cur = cur.setdefault(kk, {})
        cur[keys[-1]] = v
    return cfg


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
