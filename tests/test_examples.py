"""Every example config parses (train and eval)."""
from pathlib import Path

import pytest

from lyco.train.config import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "train").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_train_example_parses(path):
    cfg = load_config(path)
    assert cfg.name and cfg.datasets
