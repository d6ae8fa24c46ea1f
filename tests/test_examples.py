"""Every example config parses (train and eval)."""
from pathlib import Path

import pytest

from lyco.eval.config import load_eval_config
from lyco.train.config import load_train_config

ROOT = Path(__file__).parent.parent / "examples"
TRAIN = sorted((ROOT / "train").glob("*.toml"))
EVAL = sorted((ROOT / "eval").glob("*.toml"))


@pytest.mark.parametrize("path", TRAIN, ids=[p.name for p in TRAIN])
def test_train_example_parses(path):
    cfg = load_train_config(path)
    assert cfg.name and cfg.datasets


@pytest.mark.parametrize("path", EVAL, ids=[p.name for p in EVAL])
def test_eval_example_parses(path):
    cfg = load_eval_config(path)
    assert cfg.base and cfg.concepts and cfg.checkpoints
    assert cfg.root == str(path.parent.resolve())          # relative paths are relative to the example's folder


def test_there_are_examples():
    assert len(TRAIN) >= 4 and len(EVAL) >= 2
