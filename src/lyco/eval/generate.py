"""Image generation for the evaluation (docs/EVALUATION.md §3), cached on disk.

* Image k of a prompt set is generated from its own CPU generator seeded ``seed_start + k`` (so results do not
  depend on batch size or device), for the base model and every checkpoint alike: base and tuned images pair up.
* Base images come from the same pipeline with no adapter attached; a checkpoint's adapter is attached with its
  multiplier, used, and detached again.  Images are keyed by content, so the base model's images are generated once
  and shared by every checkpoint that pairs with them (and by checkpoints at multiplier 0, which are the base).
* Prompts longer than the text encoder's window are encoded in chunks and concatenated (as the webui and kohya's
  ``max_token_length`` do), up to ``max_chunks`` chunks; prompts of equal chunk count are batched together.
* Every image is a PNG at ``<cache>/images/<key[:2]>/<key>.png`` where the key hashes (model, adapter, multiplier,
  prompt, seed, sampler settings): re-runs only generate what is new.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io.atomic import write_atomic
from ..sd import load as load_adapter
from ..sd import load_pipeline, model_info
from ..sd.pipelines import resolve_model_path
from .config import Generation
from .features import file_sha256

log = logging.getLogger("lyco")

SAMPLERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Variant:
    """A model to generate with: the base, or a checkpoint (adapter on a model, or a full model)."""

    name: str
    model: str
    adapter: str | None = None
    multiplier: float = 1.0
    config: str = ""
    seed: str = ""
    epoch: str = ""
    concepts: tuple[str, ...] | None = None
    is_base: bool = False


@dataclass(frozen=True)
class ImageJob:
    """Image k of one prompt set for one variant."""

    variant: str
    leaf: str
    prompt_type: str
    k: int
    prompt: str
    seed: int
    key: str

    def path(self, cache_root: Path) -> Path:
        return image_path(cache_root, self.key)


def image_path(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / "images" / key[:2] / f"{key}.png"


def model_identity(model: str) -> str:
    """Identity of a base model for cache keys: its resolved path plus size/mtime (weights are not hashed)."""
    p = resolve_model_path(model)
    probe = p / "model_index.json" if p.is_dir() else p
    st = probe.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def adapter_identity(path: str | None, memo: dict[tuple, str] | None = None) -> str:
    """An adapter's content hash (so a retrained file at the same path is not mistaken for the old one)."""
    if path is None:
        return ""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"adapter {p}: no such file")
    return file_sha256(p, memo)


def settings_dict(gen: Generation, width: int, height: int) -> dict[str, Any]:
    """The sampler settings that change pixels (batch size and device do not enter the cache key)."""
    return {"sampler": gen.sampler, "steps": gen.steps, "guidance_scale": gen.guidance_scale, "width": width,
            "height": height, "negative_prompt": gen.negative_prompt, "max_chunks": gen.max_chunks,
            "dtype": gen.dtype, "eta": 0.0}


def job_key(model_id: str, adapter_id: str, multiplier: float, prompt: str, seed: int, settings: dict[str, Any]) -> str:
    """The cache key of one image.  An adapter at multiplier 0 is exactly its model (lyco's adapters return the
    base layer's output then), so such a checkpoint shares the model's own images instead of generating copies."""
    if multiplier == 0:
        adapter_id = ""
    payload = {"model": model_id, "adapter": adapter_id, "multiplier": float(multiplier) if adapter_id else None,
               "prompt": prompt, "seed": int(seed), "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- prompts
def _window(pipe: Any) -> int:
    tok = pipe.tokenizer
    limit = int(pipe.text_encoder.config.max_position_embeddings)
    ml = getattr(tok, "model_max_length", limit)
    return min(int(ml), limit) if ml and ml < 10**6 else limit


def token_ids(pipe: Any, prompt: str) -> list[int]:
    return list(pipe.tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def n_chunks(pipe: Any, prompt: str, max_chunks: int) -> int:
    per = _window(pipe) - 2
    return max(1, min(max_chunks, math.ceil(len(token_ids(pipe, prompt)) / per)))


def chunk_ids(pipe: Any, prompt: str, chunks: int) -> torch.Tensor:
    """(chunks, window) token ids: each chunk BOS + ≤ window−2 tokens + EOS, padded with the pad token."""
    tok = pipe.tokenizer
    window = _window(pipe)
    per = window - 2
    ids = token_ids(pipe, prompt)
    if len(ids) > per * chunks:
        log.debug("prompt truncated to %d chunks: %r", chunks, prompt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for j in range(chunks):
        part = ids[j * per:(j + 1) * per]
        row = [tok.bos_token_id] + part + [tok.eos_token_id]
        rows.append(row + [pad] * (window - len(row)))
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def encode_chunked(pipe: Any, prompts: Sequence[str], chunks: int) -> torch.Tensor:
    """(B, chunks·window, D) text embeddings: each chunk encoded separately (last hidden state), concatenated."""
    ids = torch.stack([chunk_ids(pipe, p, chunks) for p in prompts])          # B, C, W
    b, c, w = ids.shape
    te = pipe.text_encoder
    hidden = te(ids.reshape(b * c, w).to(te.device))[0]
    return hidden.reshape(b, c * w, hidden.shape[-1])


# ----------------------------------------------------------------------------------------------- sampling
def set_sampler(pipe: Any, sampler: str) -> None:
    if sampler == "model":
        return
    import diffusers
    cls = getattr(diffusers, SAMPLERS[sampler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def windows(jobs: Sequence[ImageJob], size: int) -> list[list[ImageJob]]:
    """Consecutive runs of ``size`` jobs of the same variant: the unit of work that processes share out."""
    out: list[list[ImageJob]] = []
    for j in jobs:
        if out and len(out[-1]) < size and out[-1][0].variant == j.variant:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def _batches(jobs: list[ImageJob], pipe: Any, gen: Generation, sdxl: bool) -> Iterator[tuple[int, list[ImageJob]]]:
    """Each window of ``batch_size`` jobs, split by prompt chunk count (prompt embeddings of one batch must have
    the same length).  Batches depend only on the job list, so sharded runs batch exactly like one process."""
    neg_chunks = 1 if sdxl else n_chunks(pipe, gen.negative_prompt, gen.max_chunks)
    for window in windows(jobs, gen.batch_size):
        groups: dict[int, list[ImageJob]] = defaultdict(list)
        for j in window:
            groups[1 if sdxl else max(neg_chunks, n_chunks(pipe, j.prompt, gen.max_chunks))].append(j)
        for c in sorted(groups):
            yield c, groups[c]


def _save_png(img: Any, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_atomic(path, buf.getvalue(), durable=False)  # the image cache: atomic, not fsynced


def generate_jobs(pipe: Any, jobs: list[ImageJob], gen: Generation, cache_root: Path, *, size: tuple[int, int],
                  progress: bool = True, desc: str = "") -> int:
    """Generate ``jobs`` (``size`` = (width, height)) with ``pipe`` as it is (adapter attached or not, on its device)
    into the cache; returns the count."""
    width, height = size
    if not jobs:
        return 0
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    set_sampler(pipe, gen.sampler)
    done = 0
    bar = tqdm(total=len(jobs), desc=desc or "generate", unit="img", disable=not progress, leave=False)
    for chunks, batch in _batches(jobs, pipe, gen, sdxl):
        generators = [torch.Generator("cpu").manual_seed(j.seed) for j in batch]
        kw: dict[str, Any] = dict(num_inference_steps=gen.steps, guidance_scale=gen.guidance_scale, width=width,
                                  height=height, generator=generators, output_type="pil")
        if gen.sampler == "ddim":
            kw["eta"] = 0.0
        if sdxl:
            kw.update(prompt=[j.prompt for j in batch], negative_prompt=[gen.negative_prompt] * len(batch))
        else:
            kw.update(prompt_embeds=encode_chunked(pipe, [j.prompt for j in batch], chunks),
                      negative_prompt_embeds=encode_chunked(pipe, [gen.negative_prompt] * len(batch), chunks))
        with torch.no_grad():
            images = pipe(**kw).images
        for j, img in zip(batch, images):
            _save_png(img, j.path(cache_root))
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    return done


def load_variant_pipeline(model: str, gen: Generation, device: torch.device) -> Any:
    pipe = load_pipeline(model, torch_dtype=None if gen.dtype == "fp32" else DTYPES[gen.dtype])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def native_size(pipe: Any) -> int:
    return int(model_info(pipe).resolution)


def run_generation(variants: Sequence[Variant], jobs_by_variant: dict[str, list[ImageJob]], gen: Generation,
                   cache_root: Path, *, device: torch.device, size: tuple[int, int], progress: bool = True) -> int:
    """Generate each variant's jobs (this process's share), loading each model once and each adapter in turn."""
    total = 0
    by_model: dict[str, list[Variant]] = defaultdict(list)
    for v in variants:
        if jobs_by_variant.get(v.name):
            by_model[v.model].append(v)
    for model, members in by_model.items():
        pipe = load_variant_pipeline(model, gen, device)
        for v in members:
            net = None
            if v.adapter is not None:
                net = load_adapter(pipe, v.adapter, multiplier=v.multiplier)
                net.to(device=device, dtype=DTYPES[gen.dtype])
            try:
                total += generate_jobs(pipe, jobs_by_variant[v.name], gen, cache_root, size=size, progress=progress,
                                       desc=f"generate {v.name}")
            finally:
                if net is not None:
                    net.detach()
        del pipe
    return total
