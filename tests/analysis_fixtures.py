"""Synthetic studies for the analysis tests: a grid shaped like the paper's (one factor at a time around one default
per algorithm) whose raw metrics follow a known latent "fitting" level, so every finding's direction is known."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

# (config, algo, preset, lr, dim, alpha, factor)
GRID = [
    ("101", "lora", "attn-mlp", 5e-4, 8, 4, ""), ("102", "lora", "attn-mlp", 1e-4, 8, 4, ""),
    ("103", "lora", "attn-mlp", 1e-3, 8, 4, ""), ("104", "lora", "attn-mlp", 5e-4, 32, 16, ""),
    ("105", "lora", "attn-mlp", 5e-4, 32, 1, ""), ("106", "lora", "attn-only", 5e-4, 8, 4, ""),
    ("107", "lora", "full", 5e-4, 8, 4, ""),
    ("111", "loha", "attn-mlp", 5e-4, 4, 2, ""), ("112", "loha", "attn-mlp", 1e-4, 4, 2, ""),
    ("113", "loha", "attn-mlp", 1e-3, 4, 2, ""), ("114", "loha", "attn-mlp", 5e-4, 16, 8, ""),
    ("115", "loha", "attn-only", 5e-4, 4, 2, ""),
    ("121", "lokr", "attn-mlp", 5e-4, 10000, 1, 8), ("122", "lokr", "attn-mlp", 1e-4, 10000, 1, 8),
    ("123", "lokr", "attn-mlp", 1e-3, 10000, 1, 8), ("124", "lokr", "attn-mlp", 5e-4, 10000, 1, 4),
    ("125", "lokr", "attn-mlp", 5e-4, 10000, 1, 12), ("126", "lokr", "attn-only", 5e-4, 10000, 1, 8),
    ("131", "full", "attn-mlp", 1e-6, "", "", ""), ("132", "full", "attn-mlp", 5e-7, "", "", ""),
    ("133", "full", "attn-mlp", 5e-6, "", "", ""), ("134", "full", "attn-only", 1e-6, "", "", ""),
]
FACTOR_COLUMNS = ("config", "algo", "preset", "lr", "dim", "alpha", "factor")
LEAVES = [("character", "olis", ""), ("character", "kiri", ""), ("scene", "castle", "day"),
          ("scene", "castle", "night"), ("scene", "canal", "")]
ALGO_FIT = {"lokr": 0.6, "lora": 0.3, "loha": 0.0, "full": -0.3}
LR_DEFAULT = {"lora": 5e-4, "loha": 5e-4, "lokr": 5e-4, "full": 1e-6}


def factor_rows(grid=GRID) -> list[dict[str, str]]:
    return [dict(zip(FACTOR_COLUMNS, (str(v) for v in row))) for row in grid]


def fitting(row, epoch: int) -> float:
    """The latent fitting level of a config at an epoch (higher = more fitted)."""
    config, algo, preset, lr, dim, alpha, factor = row
    f = ALGO_FIT[algo] + 0.8 * math.log(lr / LR_DEFAULT[algo]) / math.log(2) / 2.3 + 0.5 * math.log(epoch / 10)
    if algo in ("lora", "loha") and dim not in (8, 4):
        f += 0.6 if alpha != 1 else -1.0            # capacity up; α = 1 lowers the scale: less fitted
    if algo == "lokr":
        f += {4: 0.6, 8: 0.0, 12: -0.4}[factor]
    f += {"attn-only": -0.8, "attn-mlp": 0.0, "full": 0.02}[preset]
    return f


def study_rows(grid=GRID, seeds=(1, 2), epochs=(10, 30, 50), noise=0.02, seed=0) -> list[dict[str, object]]:
    """results.csv rows (leaf level) of the synthetic study."""
    rng = np.random.default_rng(seed)
    out = []
    for row in grid:
        for s in seeds:
            for e in epochs:
                f = fitting(row, e)
                ck = f"{row[0]}-s{s}-e{e}"
                for cat, cls, sub in LEAVES:
                    vals = {
                        ("image_similarity", "dino", "letterbox", "train"): 0.40 + 0.05 * f,
                        ("image_similarity", "dino", "letterbox", "trigger"): 0.42 + 0.05 * f,
                        ("image_similarity", "dino", "letterbox", "alter"): 0.30 + 0.06 * f,
                        ("image_similarity", "dino", "resize", "trigger"): 0.41 + 0.05 * f,
                        ("scd", "dino", "letterbox", "trigger"): 0.20 - 0.02 * f,
                        ("text_similarity", "clip", "", "alter"): 0.25 - 0.02 * f,
                        ("vendi", "dino", "", "trigger"): 9.0 - 0.8 * f,
                        ("style_loss", "vgg", "", "style"): 1.0 + 0.4 * f,
                    }
                    for (metric, enc, resize, ptype), v in vals.items():
                        out.append({"level": "leaf", "category": cat, "class": cls, "subclass": sub,
                                    "checkpoint": ck, "config": row[0], "seed": str(s), "epoch": str(e),
                                    "metric": metric, "encoder": enc, "resize": resize, "prompt_type": ptype,
                                    "value": float(v + noise * rng.standard_normal())})
    return out


def write_csv(path: Path, rows: list[dict[str, object]], columns=None) -> Path:
    columns = list(columns or rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
