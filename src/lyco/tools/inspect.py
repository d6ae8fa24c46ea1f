"""``lyco inspect FILE``: algorithms, ranks, module counts, metadata and size of an adapter file."""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from typing import Any

from ..algos import registry
from ..io.files import read_file


def summarize(path: str) -> dict[str, Any]:
    tensors, meta = read_file(path)
    groups: dict[str, dict] = {}
    for k, t in tensors.items():
        name, _, part = k.partition(".")
        groups.setdefault(name, {})[part] = t
    algos: Counter = Counter()
    ranks: Counter = Counter()
    prefixes: Counter = Counter()
    unknown = []
    for name, parts in groups.items():
        cls = registry.detect(parts)
        if cls is None:
            unknown.append(name)
            continue
        tag = cls.algo + ("+dora" if "dora_scale" in parts else "") + (
            "+tucker" if parts.keys() & {"lora_mid.weight", "hada_t1", "lokr_t2"} else "")
        algos[tag] += 1
        for key in ("lora_down.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b"):
            if key in parts:
                ranks[int(tensors[f"{name}.{key}"].shape[0])] += 1
                break
        prefixes[name.split("_")[0] + "_" + name.split("_")[1] if name.count("_") else name] += 1
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in tensors.values())
    return {
        "file": path,
        "size_bytes": os.path.getsize(path),
        "modules": len(groups),
        "tensors": len(tensors),
        "algorithms": dict(algos),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "prefixes": dict(prefixes),
        "dtypes": dict(dtypes),
        "unknown_modules": unknown,
        "metadata": meta,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco inspect", description=__doc__)
    ap.add_argument("file")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    info = summarize(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['file']}: {info['size_bytes'] / 1024:.1f} KB, {info['modules']} modules, {info['tensors']} tensors")
    print("algorithms: " + ", ".join(f"{k} x{v}" for k, v in info["algorithms"].items()))
    if info["ranks"]:
        print("ranks: " + ", ".join(f"{k} x{v}" for k, v in info["ranks"].items()))
    print("dtypes: " + ", ".join(f"{k} x{v}" for k, v in info["dtypes"].items()))
    if info["unknown_modules"]:
        print(f"unrecognised modules: {', '.join(info['unknown_modules'][:10])}")
    meta = info["metadata"]
    shown = {k: v for k, v in meta.items() if k != "lyco_config"}
    if shown:
        print("metadata:")
        for k, v in sorted(shown.items()):
            print(f"  {k} = {v if len(v) < 100 else v[:97] + '...'}")
    return 0
