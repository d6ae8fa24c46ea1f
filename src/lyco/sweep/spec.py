"""A sweep file resolved into what will run: configurations with their factors, one ``lyco train`` config per
(configuration, seed) and the evaluation settings.  Every problem is found here, before anything runs."""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, did_you_mean
from ..eval.config import EvalConfig
from ..train.config import TrainConfig
from ..validation import format_validation_error
from .config import ConfigEntry, SweepConfig, parse_sweep, read_toml
from .grid import FACTOR_COLUMNS, GRIDS, Settings, derive_factors, varies

#: keys of the run config the sweep sets itself (a configuration may not override them)
MANAGED = ("name", "output_dir", "overwrite", "train.seed", "train.epochs", "train.steps", "save.every_n_epochs",
           "save.every_n_steps", "save.keep_last_n")


@dataclass(frozen=True)
class ConfigSpec:
    id: str
    label: str
    set: dict[str, Any]                 # flattened dotted keys -> values
    factors: dict[str, Any]             # FACTOR_COLUMNS + user labels (None = not applicable)
    default: bool
    varies: str                         # what it changes relative to its algorithm's default


@dataclass(frozen=True)
class RunSpec:
    name: str                           # "<config id>-s<seed>"
    config: str
    seed: int
    dir: Path                           # the trainer's output_dir
    config_file: Path                   # the resolved run config, beside the run folder
    train: dict[str, Any] = field(repr=False, compare=False)
    unit: str = "epoch"                 # what save points count: "epoch" | "step"
    points: tuple[int, ...] = ()

    @property
    def final(self) -> int:
        return self.points[-1]

    def checkpoint_name(self, point: int) -> str:
        return f"{self.name}-{self.unit[0]}{point}"


@dataclass
class Sweep:
    cfg: SweepConfig
    file: Path
    root: Path                          # the sweep file's folder
    out: Path
    configs: list[ConfigSpec]
    runs: list[RunSpec]
    eval_data: dict[str, Any] = field(repr=False)    # the eval config as data (checkpoints empty, paths rooted)
    notes: list[str] = field(default_factory=list)

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


# ------------------------------------------------------------------------------------------------ helpers
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: tables merge key by key, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _abs(p: str, root: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (root / q).resolve())


def absolutize(run: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make the run's file paths absolute (model, tokenizers, preset files, dataset folders)."""
    run = copy.deepcopy(run)
    model = run.get("model") or {}
    for key in ("base", "tokenizer", "tokenizer_2"):
        v = model.get(key)
        if isinstance(v, str) and v and not v.startswith("builtin:"):
            model[key] = _abs(v, root)
    net = run.get("network") or {}
    if isinstance(net.get("preset"), str) and net["preset"].endswith(".toml"):
        net["preset"] = _abs(net["preset"], root)
    for ds in run.get("datasets") or []:
        if isinstance(ds, dict):
            ds["folders"] = [_abs(f, root) for f in ds.get("folders") or []]
            for sub in ds.get("subsets") or []:
                if isinstance(sub, dict) and isinstance(sub.get("path"), str):
                    sub["path"] = _abs(sub["path"], root)
    return run


def _validate_train(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A run config as the trainer would read it; returns its resolved form (every default filled in)."""
    try:
        return TrainConfig(**data).resolved()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrainConfig, source)) from None
    except ConfigError as exc:      # raised inside [network] by AdapterConfig
        raise ConfigError(f"{source}: [network] {exc}") from None


# ------------------------------------------------------------------------------------------------ configurations
def _entries(cfg: SweepConfig, source: str) -> list[ConfigEntry]:
    entries: list[ConfigEntry] = []
    if cfg.grid:
        grid = GRIDS[cfg.grid]
        ids = [g.id for g in grid]
        wanted = [str(i) for i in cfg.include] if cfg.include is not None else ids
        for i in wanted + [str(x) for x in cfg.exclude]:
            if i not in ids:
                raise ConfigError(f"{source}: include/exclude: {i!r} is not a configuration of grid "
                                  f"{cfg.grid!r}{did_you_mean(i, ids)}; its ids: {', '.join(ids)}")
        skip = {str(x) for x in cfg.exclude}
        entries += [ConfigEntry(id=g.id, label=g.label, set=dict(g.set)) for g in grid if g.id in wanted
                    and g.id not in skip]
    entries += cfg.configs
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise ConfigError(f"{source}: config id {e.id!r} appears twice"
                              + (f" (grid {cfg.grid!r} already has it)" if cfg.grid and e in cfg.configs else "")
                              + "; give every configuration its own id")
        seen.add(e.id)
    if not entries:
        raise ConfigError(f"{source}: include/exclude leave no configuration to run")
    return entries


def _check_excluded(cfg: SweepConfig, ids: list[str], source: str) -> None:
    for x in (str(i) for i in (cfg.analyze.exclude if cfg.analyze else ())):
        if x not in ids:
            raise ConfigError(f"{source}: analyze.exclude: {x!r} is not a configuration of this sweep"
                              f"{did_you_mean(x, ids)}")


def _sweep_keys(cfg: SweepConfig) -> dict[str, Any]:
    """What the sweep sets on every run: length from the save points, exports exactly at them (every gcd, all
    kept), a crash-safe state at least as often (unless the base asks for states)."""
    step = reduce(math.gcd, cfg.points)
    if cfg.unit == "epoch":
        return {"train": {"epochs": cfg.points[-1], "steps": None},
                "save": {"every_n_epochs": step, "every_n_steps": None, "keep_last_n": None}}
    return {"train": {"steps": cfg.points[-1], "epochs": None},
            "save": {"every_n_steps": step, "every_n_epochs": None, "keep_last_n": None}}


def _check_set(entry: ConfigEntry, source: str) -> None:
    flat = flatten(entry.set)
    for key in flat:
        if key in MANAGED or any(key.startswith(m + ".") for m in MANAGED):
            raise ConfigError(f"{source}: config {entry.id}: set.{key} is set by the sweep for every run (from "
                              "seeds, save_epochs/save_steps and out); remove it")


def _run_spec(cfg: SweepConfig, sweep_out: Path, base: dict[str, Any], entry: ConfigEntry, seed: int,
              source: str) -> RunSpec:
    name = f"{entry.id}-s{seed}"
    run_dir = sweep_out / "runs" / name
    data = deep_merge(base, entry.set)
    data = deep_merge(data, _sweep_keys(cfg))
    data.update(name=name, output_dir=str(run_dir))
    data.pop("overwrite", None)     # always trained with --resume latest: the run folder is the run's, kept as it is
    data["train"]["seed"] = seed
    save = data.setdefault("save", {})
    if not save.get("state_every_n_epochs") and not save.get("state_every_n_steps"):
        key = "state_every_n_epochs" if cfg.unit == "epoch" else "state_every_n_steps"
        save[key] = data["save"]["every_n_epochs" if cfg.unit == "epoch" else "every_n_steps"]
    data = {k: v for k, v in data.items() if v is not None}
    for table in ("train", "save"):
        data[table] = {k: v for k, v in data[table].items() if v is not None}
    resolved = _validate_train(data, f"{source}: config {entry.id}")
    return RunSpec(name, entry.id, seed, run_dir, sweep_out / "runs" / f"{name}.toml", resolved, cfg.unit,
                   tuple(cfg.points))


def _configs(entries: list[ConfigEntry], resolved: dict[str, dict[str, Any]]) -> list[ConfigSpec]:
    settings = [Settings.from_train(e.id, resolved[e.id], e.default) for e in entries]
    derived = derive_factors(settings)
    out = []
    for e in entries:
        f = {k: derived[e.id][k] for k in FACTOR_COLUMNS}
        f.update(e.factors)
        out.append(ConfigSpec(e.id, e.label, flatten(e.set), f, derived[e.id]["_default"], varies(derived, e.id)))
    return out


# ------------------------------------------------------------------------------------------------ loading
def _base(cfg: SweepConfig, root: Path, source: str) -> dict[str, Any]:
    if isinstance(cfg.base, str):
        path = Path(cfg.base) if Path(cfg.base).is_absolute() else root / cfg.base
        try:
            return absolutize(read_toml(path, "base run (lyco train config)"), Path.cwd())
        except ConfigError as exc:
            raise ConfigError(f"{source}: base: {exc}") from None
    return absolutize(cfg.base, root)


def _eval_data(cfg: SweepConfig, root: Path, out: Path, source: str,
               model: str) -> tuple[dict[str, Any], list[str]]:
    notes = []
    if isinstance(cfg.eval, str):
        path = Path(cfg.eval) if Path(cfg.eval).is_absolute() else root / cfg.eval
        try:
            data = read_toml(path, "eval config")
        except ConfigError as exc:
            raise ConfigError(f"{source}: eval: {exc}") from None
        data.setdefault("root", str(path.resolve().parent))
        where = f"{source}: eval ({path})"
        if data.get("checkpoints"):
            notes.append(f"the {len(data['checkpoints'])} [[checkpoints]] of {path.name} are replaced by the sweep's "
                         "pool")
    else:
        data = dict(cfg.eval, root=str(root))
        where = f"{source}: [eval]"
    if isinstance(cfg.eval, dict) and cfg.eval.get("checkpoints"):
        raise ConfigError(f"{where}: [[eval.checkpoints]]: the sweep fills in the checkpoints; remove them")
    data.update(checkpoints=[], out=str(out / "eval"))
    if "base" not in data:                   # generate with the model the runs were trained on
        data["base"] = model
        notes.append(f"the evaluation generates with the base run's model {model} (set eval base to change it)")
    if data.get("cache"):
        data["cache"] = _abs(str(data["cache"]), Path(data["root"]))
    try:
        EvalConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('invalid eval config: ')}") from None
    return data, notes


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read and check a sweep file: every configuration × seed becomes a validated run config."""
    file = Path(path)
    source = str(file)
    cfg = parse_sweep(read_toml(file, "sweep"), source)
    root = file.resolve().parent
    out = Path(_abs(cfg.out, root))
    entries = _entries(cfg, source)
    for e in entries:
        _check_set(e, source)
    _check_excluded(cfg, [e.id for e in entries], source)
    base = _base(cfg, root, source)
    _validate_train(deep_merge(base, _sweep_keys(cfg)), f"{source}: base run")
    runs: list[RunSpec] = []
    resolved: dict[str, dict[str, Any]] = {}
    for e in entries:
        for seed in cfg.seeds:
            spec = _run_spec(cfg, out, base, e, seed, source)
            resolved.setdefault(e.id, spec.train)
            runs.append(spec)
    eval_data, notes = _eval_data(cfg, root, out, source, str(runs[0].train["model"]["base"]))
    return Sweep(cfg, file, root, out, _configs(entries, resolved), runs, eval_data, notes)
