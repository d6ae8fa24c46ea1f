"""Make a saved transformers / diffusers folder load identically under every transformers version lyco supports.

transformers 5 writes three things that transformers 4.40 ... 4.57 read wrongly or not at all:

* ``CLIPTextModel`` weights without the ``text_model.`` prefix: 4.x loads such a text encoder RANDOMLY
  INITIALISED, with only a warning;
* ``tokenizer.json`` with BPE merges as pairs: tokenizers < 0.20 cannot parse it;
* the image-processor settings nested in ``processor_config.json``: 4.x looks for ``preprocessor_config.json``
  and fails on the nested ``image_processor`` key.

:func:`make_portable` rewrites these in place (the tensors stay bit-identical: only key names change); both
transformers generations read the result.  scripts/pretrain_tiny.py and scripts/train_backbones.py call it on
what they write; ``python scripts/portable_layout.py FOLDER ...`` converts existing folders.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TEXT_MODELS = ("CLIPTextModel", "CLIPTextModelWithProjection")
#: top-level keys of a transformers-5 CLIP text model that live under ``text_model.`` in every 4.x version
FLAT_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def _architectures(folder: Path) -> list[str]:
    cfg = folder / "config.json"
    return list(json.loads(cfg.read_text()).get("architectures") or []) if cfg.is_file() else []


def prefix_text_model(folder: Path) -> bool:
    """``embeddings.* / encoder.* / final_layer_norm.*`` -> ``text_model.…`` in a CLIP text encoder folder."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    if not path.is_file() or not set(_architectures(folder)) & set(TEXT_MODELS):
        return False
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if not any(k.startswith(FLAT_PARTS) for k in tensors):
        return False
    renamed = {("text_model." + k if k.startswith(FLAT_PARTS) else k): t for k, t in tensors.items()}
    save_file(renamed, str(path), metadata=metadata)
    return True


def legacy_merges(folder: Path) -> bool:
    """BPE merges in tokenizer.json as ``"a b"`` strings (the format every tokenizers version reads)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    merges = data.get("model", {}).get("merges")
    if not merges or isinstance(merges[0], str):
        return False
    if any(" " in part for pair in merges for part in pair):
        raise ValueError(f"{path}: a merge contains a space; the string form would be ambiguous")
    data["model"]["merges"] = [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return True


def preprocessor_config(folder: Path) -> bool:
    """The image processor of ``processor_config.json`` moved to ``preprocessor_config.json`` (4.x passes every
    key of processor_config.json to the processor's constructor and fails on a nested ``image_processor``)."""
    proc, pre = folder / "processor_config.json", folder / "preprocessor_config.json"
    if not proc.is_file():
        return False
    data = json.loads(proc.read_text(encoding="utf-8"))
    if "image_processor" not in data:
        return False
    out = dict(data.pop("image_processor"))
    if "processor_class" in data:
        out["processor_class"] = data["processor_class"]
    pre.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if set(data) <= {"processor_class"}:
        proc.unlink()  # nothing else in it: the classic layout (preprocessor_config.json + tokenizer files)
    else:
        proc.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def make_portable(root: str | Path) -> list[str]:
    """Apply every rewrite to ``root`` and its sub-folders; returns what changed."""
    changed = []
    for folder in [Path(root), *sorted(p for p in Path(root).rglob("*") if p.is_dir())]:
        for fix in (prefix_text_model, legacy_merges, preprocessor_config):
            if fix(folder):
                changed.append(f"{folder}: {fix.__name__}")
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    for folder in ap.parse_args().folders:
        for line in make_portable(folder) or [f"{folder}: already portable"]:
            print(line)


if __name__ == "__main__":
    main()
