"""``lyco train CONFIG.toml [--set key=value ...] [--resume latest|PATH]``."""
from __future__ import annotations

import argparse
import logging

from .config import load_train_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco train", description=__doc__)
    ap.add_argument("config", help="TOML run file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one value (repeatable)")
    ap.add_argument("--resume", help="'latest' or a state folder")
    a = ap.parse_args(argv)
    cfg = load_train_config(a.config, a.set)
    from .loop import train
    logging.getLogger("lyco").setLevel(logging.INFO)
    path = train(cfg, resume=a.resume)
    print(f"final adapter: {path}")
    return 0
