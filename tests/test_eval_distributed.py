"""``lyco eval`` under ``torchrun`` with 2 CPU processes: jobs and features are sharded, results gathered on the main
process, and the numbers equal a one-process run (images and image features bit for bit)."""
from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval_fixtures import GEN, TRIGGER_PROMPT, make_world, to_toml
from lyco.eval import evaluate
from lyco.eval.config import EvalConfig

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


def _config(world: dict, out: Path) -> EvalConfig:
    return EvalConfig(
        base=world["model"], out=str(out),
        checkpoints=[{"name": "lora", "adapter": world["adapter"]}],
        concepts=[{"category": "character", "class": "olis", "descriptor": TRIGGER_PROMPT, "dataset": world["data"],
                   "prompts": {"train": "none", "alter": "plushie", "agnostic_class": "none"}}],
        generation={**GEN, "images": 2},
        backbones={"dino": world["dino"], "clip": world["clip"], "vgg": world["vgg"], "image_size": 32},
        # Grams not cached: gathered from the processes in memory; DINO/CLIP features read from the shared cache
        metrics={"names": ["image_similarity", "scd", "vendi", "style_loss", "text_similarity"], "cache_gram": False},
        report={"grid_images": 1, "plots": False})


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_processes_match_one(tmp_path):
    world = make_world(tmp_path / "world", GEN)
    toml = tmp_path / "eval.toml"
    toml.write_text(to_toml(_config(world, tmp_path / "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "lyco", "eval", str(toml),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert "(2 processes)" in log
    for rank in (0, 1):                                  # both processes generated images and extracted features
        line = next(ln for ln in log.splitlines() if f"process {rank}/2:" in ln)
        assert "generated 0 images" not in line and "extracted 0 features" not in line, line

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as in the two processes (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        one = evaluate(_config(world, tmp_path / "one"), progress=False)
    finally:
        torch.set_num_threads(threads)
    # the images are the same files, bit for bit
    imgs = lambda root: {p.name: p.read_bytes() for p in (root / "cache" / "images").rglob("*.png")}  # noqa: E731
    assert imgs(tmp_path / "two") == imgs(tmp_path / "one")
    with open(tmp_path / "two" / "results.csv", newline="") as f:
        two = list(csv.DictReader(f))
    with open(one.files["csv"], newline="") as f:
        single = list(csv.DictReader(f))
    assert [r["metric"] + r["prompt_type"] + r["checkpoint"] for r in two] == \
        [r["metric"] + r["prompt_type"] + r["checkpoint"] for r in single]
    for a, b in zip(two, single):
        va, vb = float(a["value"]), float(b["value"])
        if a["metric"] == "text_similarity":             # text embeddings may differ in the last float bit
            assert va == pytest.approx(vb, rel=1e-5, abs=1e-6)
        else:
            assert va == vb or (math.isnan(va) and math.isnan(vb)), (a["metric"], a, b)
