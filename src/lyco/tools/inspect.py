"""``lyco inspect FILE``: what an adapter file holds and which UIs/libraries load it.

For a kohya/LyCORIS file: algorithms, ranks, LoKr factor layouts, module counts and ‖ΔW‖ per block, base model
family, dtypes, the top training tags, the metadata, and per client whether it computes the file exactly,
approximately, ignores it or fails (the support matrix, ``docs/compatibility.md``).  A PEFT adapter (folder or file)
or a diffusers-format LoRA file is described too, without compatibility claims (UIs do not load those layouts).
Anything else (a checkpoint, an image, ...) is named for what it is.  The output is deterministic.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..algos import registry
from ..algos.support import CLIENTS
from ..errors import FileFormatError, LycoError
from ..io import peft as peft_io
from ..io.files import read_file
from .compat import group, verdicts

_BLOCK = re.compile(
    r"^(lora_unet_(?:down_blocks_\d+|mid_block|up_blocks_\d+|input_blocks_\d+|middle_block|output_blocks_\d+|"
    r"conv_in|conv_out|time_embedding|time_embed|add_embedding|label_emb|out)|lora_te\d?_text_model_encoder_layers_\d+|"
    r"lora_te\d?|lycoris)")
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"GGUF", "a GGUF model file"), (b"PK\x03\x04", "a zip archive (a torch.save checkpoint?)"),
          (b"\x80\x02", "a Python pickle (a torch checkpoint?)"), (b"RIFF", "a RIFF container (WebP/WAV)"))
_CHECKPOINT_KEYS = (
    ("model.diffusion_model.", "a full Stable Diffusion checkpoint (original single-file layout)"),
    ("first_stage_model.", "a Stable Diffusion checkpoint part (VAE in the original layout)"),
    ("conditioner.embedders.", "a Stable Diffusion XL checkpoint part (text encoders in the original layout)"),
    ("down_blocks.0.resnets.", "diffusers model weights (a UNet or VAE, no adapter)"),
    ("text_model.encoder.", "text-encoder weights (transformers layout, no adapter)"),
    ("encoder.down.", "VAE weights (original layout)"),
)
TOP_TAGS = 10


def block_of(name: str) -> str:
    m = _BLOCK.match(name)
    return m.group(1) if m else name.split("_")[0]


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def delta_norm(parts: dict[str, torch.Tensor]) -> float | None:
    """‖s·ΔW‖_F from the file alone (None where it needs the base weight: OFT, IA3, GLoRA, DoRA, unknown keys)."""
    cls = registry.detect(parts)
    if cls is None:
        return None
    try:
        d = cls.delta_from_file(parts)
    except (LycoError, KeyError, IndexError, ValueError, RuntimeError, TypeError, ArithmeticError):
        return None
    return None if d is None else float(d.norm())


def family_of(names: list[str], meta: dict[str, str]) -> str:
    v = meta.get("ss_base_model_version", "")
    if v:
        return {"sd_v1": "sd1", "sd_v1_v": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2"}.get(
            v, "sdxl" if v.startswith("sdxl") else v)
    if any(n.startswith(("lora_te1_", "lora_te2_")) or n.startswith(("lora_unet_input_blocks",
                                                                     "lora_unet_output_blocks")) for n in names):
        return "sdxl"
    if any(n.startswith("lora_unet_") or n.startswith("lora_te_") for n in names):
        return "sd1/sd2"
    return "unknown (generic model)"


def top_tags(meta: dict[str, str], n: int = TOP_TAGS) -> list[tuple[str, int]]:
    """The most frequent training tags from ``ss_tag_frequency`` (summed over dataset folders)."""
    try:
        freq = json.loads(meta.get("ss_tag_frequency", "{}"))
    except json.JSONDecodeError:
        return []
    total: Counter = Counter()
    for tags in (freq.values() if isinstance(freq, dict) else ()):
        for tag, count in (tags.items() if isinstance(tags, dict) else ()):
            if isinstance(count, (int, float)):
                total[str(tag).strip()] += int(count)
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def modules_summary(groups: dict[str, dict[str, torch.Tensor]], block=block_of) -> dict[str, Any]:
    """Algorithms, ranks, layouts and ‖ΔW‖ per block of a file's modules (sorted, so the output is deterministic)."""
    algos: Counter = Counter()
    ranks: Counter = Counter()
    layouts: Counter = Counter()
    blocks: dict[str, list] = {}
    unknown, problems = [], []
    for name in sorted(groups):
        parts = groups[name]
        cls = registry.detect(parts)
        if cls is None:
            unknown.append(name)
            continue
        try:
            cls.check_file_tensors(name, {p: t for p, t in parts.items() if p in cls.file_parts})
            s = cls.file_summary(parts)
        except FileFormatError as exc:
            problems.append(str(exc))
            s = None
        except (KeyError, IndexError, ValueError, RuntimeError, TypeError, ArithmeticError):
            s = None
        algos[cls.algo + "".join(f"+{t}" for t in (s.tags if s else ("malformed",)))] += 1
        if s and s.rank is not None:
            ranks[s.rank] += 1
        if s and s.layout:
            layouts[f"{cls.algo}: {s.layout}"] += 1
        b = blocks.setdefault(block(name), [0, 0.0, 0])
        b[0] += 1
        n = delta_norm(parts) if s is not None else None
        if n is None:
            b[2] += 1
        else:
            b[1] += n * n
    return {
        "modules": len(groups),
        "algorithms": dict(sorted(algos.items())),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "layouts": dict(sorted(layouts.items())),
        "blocks": {k: {"modules": v[0], "delta_norm": math.sqrt(v[1]), "modules_without_norm": v[2]}
                   for k, v in sorted(blocks.items(), key=lambda kv: _natural(kv[0]))},
        "unknown_modules": unknown,
        "problems": problems,
    }


def _dtypes(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    return dict(sorted(Counter(str(t.dtype).replace("torch.", "") for t in tensors.values()).items()))


def sniff(path: Path) -> str | None:
    """What a file that is not a safetensors file is, from its first bytes (None: it looks like safetensors)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "an empty file"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return None  # let the safetensors reader say what is wrong with it


def not_an_adapter(path: str, what: str, size: int, hint: str = "") -> dict[str, Any]:
    return {"file": path, "adapter": False, "format": what, "size_bytes": size, "compatibility": None,
            "message": f"not an adapter file lyco recognises: this is {what}." + (f" {hint}" if hint else "")}


def _kind_of_keys(keys: list[str]) -> str:
    for prefix, what in _CHECKPOINT_KEYS:
        if any(k.startswith(prefix) for k in keys):
            return what
    return f"a safetensors file with {len(keys)} tensors but no adapter keys (e.g. {', '.join(sorted(keys)[:3])})"


def summarize(path: str) -> dict[str, Any]:
    p = Path(path)
    if peft_io.is_peft_folder(p):
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return _foreign_summary(path, peft_io.read_peft(p), {}, size)
    if not p.is_file():
        folder = " (a folder, but not a PEFT adapter folder)" if p.is_dir() else ""
        raise FileFormatError(f"{p}: no such file{folder}")
    size = p.stat().st_size
    what = sniff(p) if p.suffix.lower() not in (".pt", ".pth", ".ckpt", ".bin") else None
    if what:
        return not_an_adapter(path, what, size)
    tensors, meta = read_file(p)
    layout = peft_io.layout_of(tensors)
    if layout == "peft":
        try:
            return _foreign_summary(path, peft_io.read_peft(p), meta, size)
        except FileFormatError as exc:
            return not_an_adapter(path, "PEFT adapter weights", size, str(exc))
    if layout == "diffusers":
        return _foreign_summary(path, peft_io.read_diffusers(tensors, path), meta, size)
    groups = group(tensors)
    info = modules_summary(groups)
    if groups and len(info["unknown_modules"]) == len(groups):
        return not_an_adapter(path, _kind_of_keys(list(tensors)), size)
    names = sorted(groups)
    sdxl_diffusers = any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks")) for n in names) and \
        any(n.startswith(("lora_te1_", "lora_te2_")) for n in names)
    return {"file": path, "adapter": True, "format": "kohya/LyCORIS", "size_bytes": size, **info,
            "tensors": len(tensors), "base_model": family_of(names, meta), "dtypes": _dtypes(tensors),
            "compatibility": {c: {"level": v.level, "reason": v.reason}
                              for c, v in verdicts(groups, sdxl_diffusers).items()},
            "top_tags": top_tags(meta), "metadata": dict(sorted(meta.items()))}


def _foreign_summary(path: str, adapters: list[peft_io.ForeignAdapter], meta: dict[str, str], size: int) -> dict:
    groups = {f"{a.part}:{m}": parts for a in adapters for m, parts in a.modules.items()}
    info = modules_summary(groups, block=lambda n: ".".join(n.split(".")[:2]))
    kinds = sorted({a.kind for a in adapters})
    tensors = {f"{n}.{k}": t for n, parts in groups.items() for k, t in parts.items()}
    return {"file": path, "adapter": True, "format": ", ".join(kinds), "size_bytes": size, **info,
            "tensors": len(tensors), "parts": sorted(a.part for a in adapters), "dtypes": _dtypes(tensors),
            "compatibility": None,
            "message": f"a {' / '.join(kinds)} adapter, not a kohya/LyCORIS file: UIs do not load it. lyco.load and "
                       "lyco.sd.load read it as it is; `lyco convert IN --to kohya --base MODEL -o OUT.safetensors` "
                       "writes the kohya layout",
            "top_tags": top_tags(meta), "metadata": dict(sorted(meta.items()))}


def _print(info: dict[str, Any]) -> None:
    print(f"{info['file']}: {info['format']}, {info['size_bytes'] / 1024:.1f} KB" +
          (f", {info['modules']} modules, {info['tensors']} tensors" if info["adapter"] else ""))
    if not info["adapter"]:
        print(info["message"])
        return
    if "base_model" in info:
        print(f"base model: {info['base_model']}")
    print("algorithms: " + ", ".join(f"{k} x{v}" for k, v in info["algorithms"].items()))
    for label, key in (("ranks", "ranks"), ("dtypes", "dtypes")):
        if info[key]:
            print(f"{label}: " + ", ".join(f"{k} x{v}" for k, v in info[key].items()))
    for k, v in info["layouts"].items():
        print(f"factors: {k} x{v}")
    print("blocks (modules, ‖ΔW‖):")
    for k, v in info["blocks"].items():
        extra = f" (+{v['modules_without_norm']} need the base model)" if v["modules_without_norm"] else ""
        print(f"  {k:<48} {v['modules']:>4}  {v['delta_norm']:.4g}{extra}")
    for problem in info["problems"][:10]:
        print(f"problem: {problem}")
    if info["unknown_modules"]:
        print(f"unrecognised modules ({len(info['unknown_modules'])}): {', '.join(info['unknown_modules'][:10])}")
    if info["top_tags"]:
        print("top tags: " + ", ".join(f"{t} ({n})" for t, n in info["top_tags"]))
    if info["compatibility"] is None:
        print(info["message"])
    else:
        print("compatibility:")
        for c in CLIENTS:
            v = info["compatibility"][c]
            print(f"  {c:<13} {v['level']:<12} {v['reason']}")
    shown = {k: v for k, v in info["metadata"].items() if k not in ("lyco_config", "ss_tag_frequency")}
    if shown:
        print("metadata:")
        for k, v in shown.items():
            print(f"  {k} = {v if len(v) < 100 else v[:97] + '...'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a kohya/LyCORIS .safetensors file, a PEFT adapter folder or file, or a diffusers "
                                 "LoRA file")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    info = summarize(os.fspath(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0 if info["adapter"] else 1
