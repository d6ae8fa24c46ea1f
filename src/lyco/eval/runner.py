"""The evaluation run: plan → generate → extract features → metrics → rank → report.

Distributed: under ``torchrun``/``accelerate launch`` every process builds the same plan; the images still missing
from the cache and the features are split across processes (each writes into the shared cache), features are
gathered on the main process, which alone computes metrics and writes the report.  The cache folder must be
visible to every process (one machine, or a shared filesystem).
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError, StateError
from ..sd import load_pipeline, model_info
from ..sd.pipelines import resolve_model_path
from .backbones import Backbone, load_clip, load_dino, load_vgg, resolve_device, resolve_weights
from .config import EvalConfig
from .features import FeatureCache, extract, file_sha256
from .generate import (
    ImageJob,
    Variant,
    adapter_identity,
    job_key,
    model_identity,
    run_generation,
    settings_dict,
    windows,
)
from .metrics import Metric, get_metric, higher_is_better
from .plan import Outcome, Plan
from .prompts import Leaf, build_leaves
from .rank import Row, aggregate, rank_normalize
from .report import write_outputs
from .textproc import build_processor

log = logging.getLogger("lyco")

GEN_MODE = "resize"        # generated (square) images: plain resize
VGG_MODE = "short_side"


# ----------------------------------------------------------------------------------------------- planning
def variants_of(cfg: EvalConfig) -> list[Variant]:
    """The base model, then each checkpoint (one per multiplier when several are listed)."""
    base = _base_path(cfg)
    out = [Variant("base", base, is_base=True, config="base")]
    for ck in cfg.checkpoints:
        mults = ck.multiplier if isinstance(ck.multiplier, list) else [ck.multiplier]
        for m in mults:
            name = ck.name if len(mults) == 1 else f"{ck.name}@{m:g}"
            model = str(cfg.path(ck.model)) if ck.model else base
            adapter = str(cfg.path(ck.adapter)) if ck.adapter else None
            label = ck.config or ck.name
            out.append(Variant(name, model, adapter, float(m), config=label if len(mults) == 1 else f"{label}@{m:g}",
                               seed="" if ck.seed is None else str(ck.seed),
                               epoch="" if ck.epoch is None else str(ck.epoch),
                               concepts=tuple(ck.concepts) if ck.concepts is not None else None))
    return out


def _base_path(cfg: EvalConfig) -> str:
    return str(cfg.path(cfg.base))


def native_resolution(model: str) -> int:
    """The model's native image side, from its folder configs when possible (no weights loaded)."""
    p = resolve_model_path(model)
    unet_cfg, vae_cfg = p / "unet" / "config.json", p / "vae" / "config.json"
    if p.is_dir() and unet_cfg.is_file() and vae_cfg.is_file():
        sample = int(json.loads(unet_cfg.read_text())["sample_size"])
        levels = len(json.loads(vae_cfg.read_text())["block_out_channels"])
        return sample * 2 ** (levels - 1)
    return int(model_info(load_pipeline(model)).resolution)


def check_files(cfg: EvalConfig, variants: Sequence[Variant]) -> None:
    """Every model and adapter the checkpoints name exists: one error listing all that are missing."""
    missing: dict[str, str] = {}
    for v in variants:
        if not v.model.startswith("builtin:") and not Path(v.model).exists():
            missing.setdefault(v.model, f"{'base' if v.is_base else v.name}: model {v.model}")
        if v.adapter is not None and not Path(v.adapter).is_file():
            missing.setdefault(v.adapter, f"{v.name.split('@')[0]}: adapter {v.adapter}")
    if missing:
        lines = "\n  ".join(missing.values())
        raise ConfigError(f"{len(missing)} file(s) named by the config do not exist (relative paths are relative to "
                          f"{Path(cfg.root).resolve()}):\n  {lines}")


def build_plan(cfg: EvalConfig) -> Plan:
    variants = variants_of(cfg)
    check_files(cfg, variants)
    leaves = build_leaves(cfg)
    base = variants[0].model
    g = cfg.generation
    side = None if (g.width and g.height) else native_resolution(base)
    size = cast(tuple[int, int], (g.width or side, g.height or side))  # side is set when either is missing
    settings = settings_dict(g, size[0], size[1])
    memo: dict[tuple, str] = {}
    model_ids = {v.model: model_identity(v.model) for v in variants}
    plan = Plan(leaves, variants, {}, size, settings)
    for v in variants:
        adapter_id = adapter_identity(v.adapter, memo)
        for leaf in plan.leaves_of(v):
            for ptype, ps in leaf.prompt_sets.items():
                jobs = []
                for k, prompt in enumerate(ps.image_prompts()):
                    seed = g.seed_start + k
                    key = job_key(model_ids[v.model], adapter_id, v.multiplier, prompt, seed, settings)
                    jobs.append(ImageJob(v.name, leaf.id, ptype, k, prompt, seed, key))
                plan.sets[(v.name, leaf.id, ptype)] = jobs
    return plan


# ----------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One number to compute: a metric on one image set with one backbone (and one dataset resize mode)."""

    variant: Variant
    leaf: Leaf
    metric: type[Metric]
    prompt_type: str
    kind: str             # backbone: dino | clip | vgg
    ref_mode: str         # preprocessing of the dataset images ("" when the metric does not use them)

    @property
    def gen_mode(self) -> str:
        return VGG_MODE if self.kind == "vgg" else GEN_MODE

    @property
    def resize(self) -> str:
        """The result table's resize column: the dataset resize mode of embedding metrics."""
        return "" if self.kind == "vgg" else self.ref_mode


def metric_tasks(cfg: EvalConfig, plan: Plan) -> Iterator[Task]:
    """Every (checkpoint, leaf, metric, prompt type, backbone, resize) the config asks for, in report order."""
    for v in plan.variants:
        for leaf in plan.leaves_of(v):
            for name in cfg.metrics.names:
                m = get_metric(name)
                if (m.style_concepts_only and not leaf.style_concept) or ("base_images" in m.requires and v.is_base):
                    continue
                if "references" in m.requires and not leaf.images:
                    continue
                for ptype in m.prompt_types:
                    if ptype not in leaf.prompt_sets:
                        continue
                    for kind in _encoders(m.feature, cfg):
                        if "references" not in m.requires:
                            modes = [""]
                        else:
                            modes = [VGG_MODE] if kind == "vgg" else list(cfg.metrics.dataset_resize)
                        for mode in modes:
                            yield Task(v, leaf, m, ptype, kind, mode)


# ----------------------------------------------------------------------------------------------- features
@dataclass(frozen=True)
class Need:
    kind: str        # dino | clip | vgg
    path: Path
    mode: str


def feature_needs(cfg: EvalConfig, plan: Plan) -> list[Need]:
    """Every (backbone, image, preprocessing) the tasks need, deduplicated, in a fixed order."""
    cache = cfg.cache_dir
    needs: dict[tuple, Need] = {}

    def add(kind: str, path: Path, mode: str) -> None:
        needs.setdefault((kind, str(path), mode), Need(kind, Path(path), mode))

    for t in metric_tasks(cfg, plan):
        sets = [(t.variant.name, t.leaf.id, t.prompt_type)]
        if "base_images" in t.metric.requires:
            sets.append(("base", t.leaf.id, t.prompt_type))
        for key in sets:
            for j in plan.sets[key]:
                add(t.kind, j.path(cache), t.gen_mode)
        if t.ref_mode:
            for img in t.leaf.images:
                add(t.kind, img, t.ref_mode)
    return list(needs.values())


def _encoders(feature: str, cfg: EvalConfig) -> list[str]:
    if feature == "embedding":
        return list(cfg.metrics.image_encoders)
    return ["clip"] if feature == "clip" else ["vgg"]


def check_backbones(cfg: EvalConfig, plan: Plan) -> None:
    """Every backbone the metrics need has local weights (raises a ConfigError naming the key otherwise)."""
    for kind in sorted({t.kind for t in metric_tasks(cfg, plan)}):
        resolve_weights(kind, cfg.backbone_path(kind))


class Backbones:
    """Loads each backbone on first use (one process may need only some)."""

    def __init__(self, cfg: EvalConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self._loaded: dict[str, Backbone] = {}

    def get(self, kind: str) -> Any:
        if kind not in self._loaded:
            b = self.cfg.backbones
            path = self.cfg.backbone_path(kind)
            kw: dict[str, Any] = dict(device=self.device, dtype=b.dtype)
            if kind == "dino":
                self._loaded[kind] = load_dino(path, image_size=b.image_size, **kw)
            elif kind == "clip":
                self._loaded[kind] = load_clip(path, image_size=b.image_size, **kw)
            else:
                self._loaded[kind] = load_vgg(path, taps=self.cfg.metrics.vgg_taps, image_size=b.image_size, **kw)
            log.info("backbone %s: %s (%s)", kind, path, self._loaded[kind].id)
        return self._loaded[kind]

    def ids(self) -> dict[str, str]:
        return {k: v.id for k, v in self._loaded.items()}


def shard_needs(needs: Sequence[Need], batch_size: int, rank: int, world: int) -> list[Need]:
    """This process's share: per backbone, windows of ``batch_size`` needs; all windows dealt out round-robin."""
    by_kind: dict[str, list[Need]] = defaultdict(list)
    for n in needs:
        by_kind[n.kind].append(n)
    all_windows = [by_kind[k][i:i + batch_size] for k in sorted(by_kind) for i in range(0, len(by_kind[k]), batch_size)]
    return [n for w in all_windows[rank::world] for n in w]


def _cached(kind: str, cfg: EvalConfig) -> bool:
    return cfg.metrics.cache_gram or kind != "vgg"


def extract_needs(needs: Sequence[Need], backbones: Backbones, cfg: EvalConfig, memo: dict, progress: bool
                  ) -> tuple[dict[str, str], list[tuple[str, str, np.ndarray]]]:
    """Extract ``needs`` into the feature cache.  Returns the backbones' cache keys and, for features that are
    not cached on disk (VGG Grams with ``cache_gram = false``), the vectors as (kind, sha:mode, vector)."""
    keys: dict[str, str] = {}
    vectors: list[tuple[str, str, np.ndarray]] = []
    by_kind: dict[str, list[Need]] = defaultdict(list)
    for n in needs:
        by_kind[n.kind].append(n)
    for kind, items in by_kind.items():
        bb = backbones.get(kind)
        keys[kind] = bb.cache_key
        cached = _cached(kind, cfg)
        feats = extract(bb, [(n.path, n.mode) for n in items], FeatureCache(cfg.cache_dir / "features", cached),
                        batch_size=cfg.backbones.batch_size, memo=memo, progress=progress, desc=f"features {kind}",
                        keep=not cached)
        if not cached:
            vectors += [(kind, key, vec) for key, vec in feats.items() if vec is not None]
    return keys, vectors


# ----------------------------------------------------------------------------------------------- metrics
class FeatureTable:
    """The features the metrics read: gathered vectors, else the feature cache (read on demand, so the main
    process never holds every feature of a large run at once)."""

    def __init__(self, cfg: EvalConfig, cache_keys: dict[str, str], vectors: Sequence[tuple[str, str, np.ndarray]],
                 memo: dict) -> None:
        self._mem = {(kind, key): vec for kind, key, vec in vectors}
        self._keys = cache_keys
        self._cache = FeatureCache(cfg.cache_dir / "features")
        self._memo = memo

    def vector(self, kind: str, path: Path, mode: str) -> np.ndarray:
        sha = file_sha256(Path(path), self._memo)
        hit = self._mem.get((kind, f"{sha}:{mode}"))
        if hit is None:
            hit = self._cache.get(self._keys[kind], mode, sha)
        if hit is None:
            raise StateError(f"feature of {path} ({kind}, {mode}) is missing from {self._cache.root}; was the cache "
                             "folder changed during the run, or is it not shared between the processes?")
        return hit

    def matrix(self, kind: str, paths: Sequence[Path], mode: str) -> np.ndarray:
        return np.stack([self.vector(kind, p, mode) for p in paths])


def compute_rows(cfg: EvalConfig, plan: Plan, table: FeatureTable, backbones: Backbones) -> list[Row]:
    """Raw metric values per (checkpoint, leaf, metric, encoder, resize, prompt type)."""
    cache = cfg.cache_dir
    processor = build_processor(cfg.metrics.text_table, [r for leaf in plan.leaves for r in leaf.text_rows],
                                legacy=cfg.metrics.legacy_text_processing)
    text_memo: dict[str, np.ndarray] = {}

    def text_features(prompts: list[str]) -> np.ndarray:
        processed = processor.process(prompts)
        new = sorted({p for p in processed if p not in text_memo})
        clip = backbones.get("clip")
        for i in range(0, len(new), cfg.backbones.batch_size):
            chunk = new[i:i + cfg.backbones.batch_size]
            for p, f in zip(chunk, clip.encode_text(chunk).cpu().numpy()):
                text_memo[p] = f
        return np.stack([text_memo[p] for p in processed])

    rows: list[Row] = []
    for t in metric_tasks(cfg, plan):
        jobs = plan.sets[(t.variant.name, t.leaf.id, t.prompt_type)]
        extra: dict[str, Any] = {}
        if "prompts" in t.metric.requires:
            extra["prompts"] = text_features([j.prompt for j in jobs])
        if "base_images" in t.metric.requires:
            extra["base"] = table.matrix(t.kind, [j.path(cache) for j in plan.sets[("base", t.leaf.id, t.prompt_type)]],
                                         t.gen_mode)
        if t.ref_mode:
            extra["references"] = table.matrix(t.kind, t.leaf.images, t.ref_mode)
        metric = t.metric(t.prompt_type)
        metric.update(table.matrix(t.kind, [j.path(cache) for j in jobs], t.gen_mode),
                      groups=np.asarray(t.leaf.prompt_sets[t.prompt_type].index), **extra)
        v = t.variant
        rows.append(Row(t.leaf.category, t.leaf.class_, t.leaf.subclass, v.name, t.metric.name, t.kind, t.resize,
                        t.prompt_type, float(metric.compute()["value"]), config=v.config, seed=v.seed, epoch=v.epoch))
    for leaf in plan.leaves:
        if not leaf.images:
            log.warning("%s: no dataset images, so no image similarity, SCD or style similarity", leaf.id)
    return rows


# ----------------------------------------------------------------------------------------------- the run
def _state(cfg: EvalConfig) -> Any:
    from accelerate import PartialState
    spec = cfg.generation.device
    cpu = spec == "cpu" or (spec == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def manifest(cfg: EvalConfig, plan: Plan, backbone_ids: dict[str, str], world: int) -> dict[str, Any]:
    import diffusers
    import transformers
    return {
        "lyco": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "processes": world,
        "base": plan.variant("base").model, "size": list(plan.size), "settings": plan.settings,
        "seeds": {"first": cfg.generation.seed_start, "rule": "image k of every prompt set has seed first + k"},
        "checkpoints": [{"name": v.name, "model": v.model, "adapter": v.adapter, "multiplier": v.multiplier,
                         "config": v.config, "seed": v.seed, "epoch": v.epoch} for v in plan.variants if not v.is_base],
        "leaves": [{"id": leaf.id, "descriptor": leaf.descriptor, "dataset_images": len(leaf.images),
                    "style_concept": leaf.style_concept,
                    "prompt_sets": {k: {"prompts": list(ps.prompts), "images": ps.n_images}
                                    for k, ps in leaf.prompt_sets.items()}} for leaf in plan.leaves],
        "backbones": backbone_ids, "vgg_taps": cfg.metrics.vgg_taps, "metrics": list(cfg.metrics.names),
        "text_table": cfg.metrics.text_table, "legacy_text_processing": cfg.metrics.legacy_text_processing,
        "config": cfg.model_dump(mode="json", by_alias=True),
    }


def evaluate(cfg: EvalConfig, *, progress: bool = True, report: bool = True) -> Outcome | None:
    """Run the whole evaluation; returns the outcome on the main process (None on the others)."""
    from accelerate.utils import gather_object

    state = _state(cfg)
    rank, world = state.process_index, state.num_processes
    device = state.device if cfg.generation.device == "auto" else resolve_device(cfg.generation.device)
    main = state.is_main_process
    show = progress and main

    plan = build_plan(cfg)
    check_backbones(cfg, plan)          # fail before generating, not after
    cache_root = cfg.cache_dir
    pending = [j for j in plan.unique_jobs() if not j.path(cache_root).is_file()]
    state.wait_for_everyone()          # every process has the same pending list before anyone writes
    if main:
        log.info("%d images planned, %d to generate (%d processes)", len(plan.unique_jobs()), len(pending), world)
    mine: dict[str, list[ImageJob]] = defaultdict(list)
    for window in windows(pending, cfg.generation.batch_size)[rank::world]:
        mine[window[0].variant] += window
    made = run_generation(plan.variants, mine, cfg.generation, cache_root, device=device, size=plan.size,
                          progress=show)
    state.wait_for_everyone()

    bb_device = state.device if cfg.backbones.device == "auto" else resolve_device(cfg.backbones.device)
    backbones = Backbones(cfg, bb_device)
    memo: dict[tuple, str] = {}
    needs = feature_needs(cfg, plan)
    my_needs = shard_needs(needs, cfg.backbones.batch_size, rank, world)
    keys, vectors = extract_needs(my_needs, backbones, cfg, memo, show)
    if world > 1:
        log.info("process %d/%d: generated %d images, extracted %d features", rank, world, made, len(my_needs))
    gathered = gather_object([(keys, vectors)])
    state.wait_for_everyone()
    if not main:
        return None

    all_keys: dict[str, str] = {}
    for k, _ in gathered:
        for kind, key in k.items():
            if all_keys.setdefault(kind, key) != key:
                raise StateError(f"the processes loaded different {kind} weights ({all_keys[kind]} vs {key})")
    table = FeatureTable(cfg, all_keys, [t for _, v in gathered for t in v], memo)
    rows = compute_rows(cfg, plan, table, backbones)
    pool = {v.name for v in plan.variants if cfg.rank.include_base or not v.is_base}
    rows = rank_normalize(rows, higher_is_better, pool=pool)
    if len(pool) < 2:
        log.warning("rank pool has %d checkpoint(s): normalised scores need at least two (add checkpoints or set "
                    "rank.include_base = true)", len(pool))
    outcome = Outcome(rows, aggregate(rows), plan, cfg.out_dir,
                      manifest=manifest(cfg, plan, backbones.ids(), world))
    if report:
        outcome.files = write_outputs(cfg, outcome)
    return outcome

