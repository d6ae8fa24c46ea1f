"""``lyco generate MODEL "prompt" --adapter a.safetensors:0.8 ... -o DIR``: images with a model and adapters, the
way A1111 and ComfyUI users make them.

* Several adapters, each ``path[:weight[:te_weight]]`` (ComfyUI's order: model strength, then text-encoder
  strength; the text encoder takes ``--te-multiplier``, else the weight, when no second number is given).
* Image k of a run has its own CPU generator seeded ``seed + k`` (A1111's batch seeds; the same rule as
  ``lyco eval``), so an image does not depend on the batch size or the device.  ``--seed -1`` draws a seed.
* Every PNG carries its generation parameters in a ``parameters`` text chunk, written exactly as A1111 writes
  them (prompt with ``<lora:name:weight>`` tags, ``Negative prompt:`` line, ``Steps: …, Sampler: …, CFG scale:
  …, Seed: …, Size: WxH, Model hash: …, Model: …, Lora hashes: "name: hash, …"``), so A1111's PNG Info and
  ComfyUI/Civitai readers show them.  Hashes are A1111's: the first 10 hex digits of the checkpoint file's
  sha256, the first 12 of each LoRA's safetensors data-section sha256.
* Files are numbered like A1111 (``00000-1234.png``, continuing after the highest number already in DIR);
  an existing image is never replaced.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import sd
from .errors import ConfigError, did_you_mean
from .io.atomic import atomic_path

log = logging.getLogger("lyco")

#: lyco's sampler names (those of ``lyco eval``) -> the names A1111 writes in its parameters
A1111_SAMPLERS = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "dpm++2m": "DPM++ 2M", "pndm": "PLMS"}
SAMPLER_ALIASES = {**{v.lower(): k for k, v in A1111_SAMPLERS.items()}, "k_euler": "euler", "k_euler_a": "euler_a",
                   "euler-a": "euler_a", "dpmpp_2m": "dpm++2m", "dpm++ 2m": "dpm++2m", "plms": "pndm"}
_PNG_NAME = re.compile(r"^(\d+)-")
MAX_CHUNKS = 8  # SD1/SD2 prompts up to 8 x 75 tokens (the webui has no limit; 600 tokens is plenty)


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter file with its UNet and text-encoder strengths."""

    path: str
    weight: float = 1.0
    te_weight: float | None = None  # None: --te-multiplier, else ``weight``

    @property
    def name(self) -> str:
        return Path(self.path).stem


@dataclass
class Settings:
    """What changes the pixels (and goes into the PNG parameters)."""

    prompt: str
    negative: str = ""
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "ddim"
    seed: int = -1
    width: int | None = None
    height: int | None = None
    n: int = 1
    batch_size: int = 1
    te_multiplier: float | None = None
    adapters: list[AdapterSpec] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- arguments
def parse_adapter(text: str) -> AdapterSpec:
    """``path``, ``path:weight`` or ``path:weight:te_weight`` (a Windows drive letter stays in the path)."""
    nums: list[float] = []
    path = text
    for _ in range(2):
        head, sep, tail = path.rpartition(":")
        if not sep or not head or (len(head) == 1 and tail.startswith(("\\", "/"))):
            break
        try:
            nums.insert(0, float(tail))
        except ValueError:
            break
        path = head
    if not nums:
        return AdapterSpec(text)
    return AdapterSpec(path, nums[0], nums[1] if len(nums) > 1 else None)


def parse_size(text: str) -> tuple[int, int]:
    """``512``, ``512x768`` (width x height); both multiples of 8."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×]\s*(\d+))?\s*", text)
    if not m:
        raise ConfigError(f"--size {text!r}: give WIDTHxHEIGHT (e.g. 512x768) or one number for a square")
    w, h = int(m.group(1)), int(m.group(2) or m.group(1))
    if w < 8 or h < 8 or w % 8 or h % 8:
        raise ConfigError(f"--size {text}: width and height must be multiples of 8 (the VAE works in 8-pixel steps)")
    return w, h


def sampler_name(text: str) -> str:
    from .eval.generate import SAMPLERS
    key = text.strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS and key != "model":
        choices = list(SAMPLERS) + ["model"] + list(A1111_SAMPLERS.values())
        raise ConfigError(f"unknown sampler {text!r}{did_you_mean(text, choices)}; choose one of "
                          f"{', '.join(list(SAMPLERS) + ['model'])} (A1111 names such as 'Euler a' work too)")
    return key


# ----------------------------------------------------------------------------------------------- parameters
def quote(value: Any) -> str:
    """A1111's quoting of infotext values: JSON-quoted when they hold a comma, colon or newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, str]:
    """Read a ``parameters`` text the way A1111's PNG Info does: prompt lines, ``Negative prompt:`` lines, then the
    last line's ``key: value`` pairs (quoted values are JSON strings; ``Size: WxH`` gives ``Size-1``/``Size-2``)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for k, v in _PARAM.findall(last):
        v = json.loads(v) if v[:1] == '"' and v[-1:] == '"' else v
        size = re.fullmatch(r"(\d+)x(\d+)", v)
        if size:
            out[f"{k}-1"], out[f"{k}-2"] = size.group(1), size.group(2)
        out[k] = v
    return out


def lora_tag(spec: AdapterSpec, te: float) -> str:
    """The adapter as A1111 writes it in a prompt (A1111's first number is the text-encoder strength)."""
    if te == spec.weight:
        return f"<lora:{spec.name}:{spec.weight:g}>"
    return f"<lora:{spec.name}:te={te:g}:unet={spec.weight:g}>"


def infotext(s: Settings, seed: int, size: tuple[int, int], model: dict[str, str], lora_hashes: dict[str, str]) -> str:
    """The ``parameters`` text of one image, as A1111 writes it."""
    tags = " ".join(lora_tag(a, te_weight(a, s)) for a in s.adapters)
    lines = [f"{s.prompt} {tags}".strip() if tags else s.prompt]
    if s.negative:
        lines.append(f"Negative prompt: {s.negative}")
    params: dict[str, Any] = {"Steps": s.steps, "Sampler": A1111_SAMPLERS.get(s.sampler, s.sampler),
                              "CFG scale": f"{s.cfg:g}", "Seed": seed, "Size": f"{size[0]}x{size[1]}"}
    if model.get("hash"):
        params["Model hash"] = model["hash"]
    params["Model"] = model["name"]
    if lora_hashes:
        params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in lora_hashes.items())
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items()))
    return "\n".join(lines)


def te_weight(spec: AdapterSpec, s: Settings) -> float:
    if spec.te_weight is not None:
        return spec.te_weight
    return s.te_multiplier if s.te_multiplier is not None else spec.weight


def _sha256(path: Path, skip_header: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_header:
            n = int.from_bytes(f.read(8), "little")
            f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model: str) -> dict[str, str]:
    """``name`` (A1111: the checkpoint's file stem) and, for a single file, ``hash`` (sha256, 10 hex digits)."""
    if model.startswith("builtin:"):
        return {"name": model}
    p = Path(model)
    if p.is_file():
        return {"name": p.stem, "hash": _sha256(p)[:10]}
    return {"name": p.name}


def lora_hash(path: str) -> str:
    """A1111's LoRA short hash: sha256 of a safetensors file's data section (its 'addnet' hash), 12 hex digits."""
    p = Path(path)
    return _sha256(p, skip_header=p.suffix.lower() == ".safetensors")[:12]


# ----------------------------------------------------------------------------------------------- files
def next_index(folder: Path) -> int:
    """One more than the highest ``NNNNN-`` number of the files in ``folder`` (A1111's numbering)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _PNG_NAME.match(p.name))]
    return max(numbers, default=-1) + 1


def save_png(image: Any, folder: Path, index: int, seed: int, text: str) -> Path:
    """Write ``NNNNN-SEED.png`` with the ``parameters`` chunk, whole or not at all (:func:`lyco.io.atomic.atomic_path`
    without replacing); never replaces a file: a taken name moves on to the next number."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    while True:
        path = folder / f"{index:05d}-{seed}.png"
        try:
            with atomic_path(path, durable=False, replace=False) as tmp:
                tmp.write_bytes(buf.getvalue())
            return path
        except FileExistsError:
            index += 1


# ----------------------------------------------------------------------------------------------- generation
def load(model: str, adapters: Sequence[AdapterSpec], s: Settings, *, device: str = "cpu", dtype: Any = None,
         strict: bool = True, prediction_type: str | None = None) -> tuple[Any, list[Any]]:
    """The pipeline with every adapter attached at its strengths."""
    from .eval.generate import set_sampler
    pipe = sd.load_pipeline(model, prediction_type=prediction_type, torch_dtype=dtype)
    if pipe.tokenizer is None:
        raise ConfigError(f"{model}: the pipeline has no tokenizer, which generation needs")
    set_sampler(pipe, s.sampler)
    pipe.set_progress_bar_config(disable=True)
    nets = []
    for a in adapters:
        net = sd.load(pipe, a.path, multiplier=a.weight, strict=strict)
        net.set_multiplier(te_weight(a, s), prefix="lora_te")
        nets.append(net)
    pipe.to(device)
    for net in nets:
        net.to(device=device, dtype=dtype)
    return pipe, nets


def _batch_kwargs(pipe: Any, prompt: str, negative: str, n: int) -> dict[str, Any]:
    """Prompt arguments: SD1/SD2 prompts longer than the text encoder's window are encoded in chunks, as lyco eval
    and the webui do; SDXL takes the strings."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"prompt": [prompt] * n, "negative_prompt": [negative] * n}
    from .eval.generate import encode_chunked, n_chunks
    chunks = max(n_chunks(pipe, prompt, MAX_CHUNKS), n_chunks(pipe, negative, MAX_CHUNKS))
    return {"prompt_embeds": encode_chunked(pipe, [prompt] * n, chunks),
            "negative_prompt_embeds": encode_chunked(pipe, [negative] * n, chunks)}


def generate(model: str, s: Settings, out_dir: str | os.PathLike, *, device: str = "cpu", dtype: Any = None,
             strict: bool = True, prediction_type: str | None = None, progress: bool = False) -> list[Path]:
    """Generate ``s.n`` images into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; give a folder (images are numbered inside it)")
    seed = s.seed if s.seed >= 0 else random.SystemRandom().randrange(2**32 - s.n)
    pipe, nets = load(model, s.adapters, s, device=device, dtype=dtype, strict=strict, prediction_type=prediction_type)
    side = sd.model_info(pipe).resolution
    size = (s.width or side, s.height or side)
    ident = model_identity(model)
    hashes = {a.name: lora_hash(a.path) for a in s.adapters}
    out.mkdir(parents=True, exist_ok=True)
    index = next_index(out)
    written: list[Path] = []
    with tqdm(total=s.n, desc="generate", unit="img", disable=not progress) as bar:
        for start in range(0, s.n, s.batch_size):
            seeds = [seed + k for k in range(start, min(s.n, start + s.batch_size))]
            kw = dict(num_inference_steps=s.steps, guidance_scale=s.cfg, width=size[0], height=size[1],
                      generator=[torch.Generator("cpu").manual_seed(x) for x in seeds], output_type="pil",
                      **_batch_kwargs(pipe, s.prompt, s.negative, len(seeds)))
            if s.sampler == "ddim":
                kw["eta"] = 0.0
            with torch.no_grad():
                images = pipe(**kw).images
            for img, x in zip(images, seeds):
                written.append(save_png(img, out, index, x, infotext(s, x, size, ident, hashes)))
                index = int(written[-1].name.split("-")[0]) + 1
            bar.update(len(seeds))
    for net in reversed(nets):
        net.detach()
    return written


# ----------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="diffusers folder, single-file checkpoint, or builtin:tiny")
    ap.add_argument("prompt", help="the prompt")
    ap.add_argument("--adapter", action="append", default=[], metavar="PATH[:W[:TE]]",
                    help="adapter file with its strength and optional text-encoder strength (repeatable)")
    ap.add_argument("--te-multiplier", type=float, default=None,
                    help="text-encoder strength of adapters that do not give their own (default: their weight)")
    ap.add_argument("--negative", default="", help="negative prompt")
    ap.add_argument("--seed", type=int, default=-1, help="seed of the first image; image k uses seed+k (-1: random)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    ap.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    ap.add_argument("--sampler", default="ddim", help="ddim, euler, euler_a, dpm++2m, pndm, or 'model' for the "
                    "model's own scheduler; A1111 names work too (default ddim)")
    ap.add_argument("--size", default=None, help="WIDTHxHEIGHT or one number (default: the model's native size)")
    ap.add_argument("-n", type=int, default=1, help="number of images (default 1)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    ap.add_argument("-o", "--output", default="outputs", help="output folder (default: outputs); images are "
                    "numbered after the ones already there, never replaced")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                    help="model dtype (auto: fp16 on a GPU, fp32 on the CPU)")
    ap.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                    help="override the model's prediction type (SD2 768-v vs 512 base single files)")
    ap.add_argument("--ignore-unmatched", action="store_true",
                    help="load the adapter modules that match the model and warn about the rest")
    return ap


def settings_from_args(a: argparse.Namespace) -> Settings:
    if a.n < 1 or a.batch_size < 1 or a.steps < 1:
        raise ConfigError("-n, --batch-size and --steps must be at least 1")
    if a.cfg < 0:
        raise ConfigError(f"--cfg {a.cfg}: the guidance scale must be >= 0")
    w, h = parse_size(a.size) if a.size else (None, None)
    adapters = [parse_adapter(x) for x in a.adapter]
    missing = [x.path for x in adapters if not Path(x.path).is_file()]
    if missing:
        raise ConfigError(f"adapter file(s) not found: {', '.join(missing)}")
    return Settings(prompt=a.prompt, negative=a.negative, steps=a.steps, cfg=a.cfg, sampler=sampler_name(a.sampler),
                    seed=a.seed, width=w, height=h, n=a.n, batch_size=a.batch_size, te_multiplier=a.te_multiplier,
                    adapters=adapters)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    s = settings_from_args(a)
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
             "auto": torch.float16 if device.startswith("cuda") else torch.float32}[a.dtype]
    paths = generate(a.model, s, a.output, device=device, dtype=dtype, strict=not a.ignore_unmatched,
                     prediction_type=a.prediction_type, progress=sys.stderr.isatty())
    for p in paths:
        print(f"wrote {p}")
    return 0
