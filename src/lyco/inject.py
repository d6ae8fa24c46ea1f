"""Target selection: which layers of a model an :class:`AdapterConfig` adapts, and with which options.

Selection follows LyCORIS/kohya semantics:

* ``target_modules``: class names.  A matching block adapts every supported layer inside it; a matching layer
  class (``Linear``, ``Conv2d`` ...) adapts itself.
* ``target_names``: module paths, regex matched from the start (``re.match``) or globs (``use_fnmatch``).
* ``exclude_names``: paths (same matching) removed together with everything under them.
* ``module_algo_map`` / ``name_algo_map``: option overrides; their keys are targets too.  The innermost
  matching block class wins among class overrides; a name override (first matching pattern) applies last.
"""
from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch.nn as nn

from .algos import registry
from .algos.geometry import Geometry, is_norm
from .algos.options import AlgoOptions
from .config import AdapterConfig
from .errors import ConfigError, TargetError, short_list
from .layer import LycoLayer
from .presets import resolve_preset

log = logging.getLogger("lyco")

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def kohya_name(prefix: str, path: str) -> str:
    """``prefix`` + ``_`` + the module path with dots replaced by underscores."""
    return f"{prefix}_{path}".replace(".", "_") if path else prefix


@dataclass
class Root:
    """One model (or sub-model) a network attaches to, with the prefix of its module names."""

    prefix: str
    module: nn.Module
    namer: Callable[[str], str] | None = None
    #: extra spellings accepted when reading files (name -> path resolution)
    read_aliases: Callable[[str], list[str]] | None = None
    config: AdapterConfig | None = None  # per-root config (e.g. text encoders with other targets)
    family: str = ""  # "sd1" | "sd2" | "sdxl" for Stable Diffusion roots (presets differ slightly per family)

    def name(self, path: str) -> str:
        return self.namer(path) if self.namer else kohya_name(self.prefix, path)


@dataclass
class Target:
    root: Root
    path: str
    module: nn.Module  # the layer, or the outermost wrapper already sitting there
    parent: nn.Module
    attr: str
    name: str
    geom: Geometry
    opts: AlgoOptions
    class_chain: list[str] = field(default_factory=list)


def layer_of(m: nn.Module) -> nn.Module:
    return m.raw_layer() if isinstance(m, LycoLayer) else m


def is_adaptable_layer(m: nn.Module) -> bool:
    m = layer_of(m)
    if isinstance(m, (nn.Linear, *CONV_TYPES)):
        return True
    name = type(m).__name__
    return "Linear" in name and all(hasattr(m, a) for a in ("in_features", "out_features", "weight"))


def is_norm_layer(m: nn.Module) -> bool:
    return is_norm(layer_of(m))


def walk(module: nn.Module, prefix: str = "", ancestors: tuple = ()) -> Iterator[tuple[str, nn.Module, tuple]]:
    """Like named_modules, but a lyco wrapper is a leaf (its internals are not targets)."""
    yield prefix, module, ancestors
    if isinstance(module, LycoLayer):
        return
    chain = ancestors + ((prefix, module),)
    for name, child in module._modules.items():
        if child is None:
            continue
        yield from walk(child, f"{prefix}.{name}" if prefix else name, chain)


class _Matcher:
    def __init__(self, patterns: list[str], use_fnmatch: bool) -> None:
        self.patterns = list(patterns)
        self.fn = use_fnmatch
        self.compiled: list[str | re.Pattern[str]] = []
        for p in self.patterns:
            if use_fnmatch:
                self.compiled.append(p)
            else:
                try:
                    self.compiled.append(re.compile(p))
                except re.error as exc:
                    raise ConfigError(f"invalid regular expression {p!r} in target/exclude names: {exc} "
                                      "(set use_fnmatch=true for glob patterns)") from None
        self.hits: set[str] = set()

    def first(self, path: str) -> str | None:
        for p, c in zip(self.patterns, self.compiled):
            if path == p or (fnmatch.fnmatchcase(path, c) if isinstance(c, str) else c.match(path)):
                self.hits.add(p)
                return p
        return None


def select_targets(roots: list[Root], config: AdapterConfig) -> list[Target]:
    """Resolve every root's targets; raises :class:`TargetError` when nothing matches."""
    out: list[Target] = []
    tried: list[str] = []
    candidates: list[str] = []
    for root in roots:
        cfg = root.config or config
        sel = resolve_preset(cfg, root.prefix, root.family)
        mam, nam = sel.module_algo_map, sel.name_algo_map
        classes = set(sel.target_modules) | set(mam)
        names = _Matcher(list(sel.target_names) + [k for k in nam if k not in sel.target_names], sel.use_fnmatch)
        excl = _Matcher(list(sel.exclude_names), sel.use_fnmatch)
        overrides_by_name = _Matcher(list(nam), sel.use_fnmatch)
        everything = sel.everything
        tried.append(f"{root.prefix}: classes {sorted(classes) or '-'}, names {names.patterns or '-'}"
                     + (", every Linear/Conv layer" if everything else ""))
        excluded: set[str] = set()
        if is_adaptable_layer(root.module) or isinstance(root.module, LycoLayer):
            raise TargetError(f"{root.prefix}: the model itself is a single {type(layer_of(root.module)).__name__}; "
                              "lyco replaces layers inside a model, so wrap it (e.g. nn.Sequential(layer))")
        for path, mod, ancestors in walk(root.module):
            if not path:
                continue
            if excl.first(path) is not None or any(a in excluded for a, _ in ancestors):
                excluded.add(path)
                continue
            layer = is_adaptable_layer(mod)
            norm = cfg.train_norm and is_norm_layer(mod)
            anc_classes = [type(layer_of(a)).__name__ for _, a in ancestors]
            own_class = type(layer_of(mod)).__name__
            if layer:
                candidates.append(f"{root.prefix}:{path or '<root>'} ({own_class})")
            in_block = any(c in classes for c in anc_classes) or any(
                names.first(a_path) is not None for a_path, _ in ancestors if a_path)
            direct = own_class in classes or (path and names.first(path) is not None)
            if not (layer or norm):
                if (own_class in classes or path in names.patterns) and not mod._modules:
                    raise TargetError(f"{root.prefix}: module '{path}' ({own_class}) matches a target but lyco cannot "
                                      "adapt it; supported: Linear, Conv1d/2d/3d, and norm layers with train_norm")
                continue
            if not (everything or in_block or direct):
                continue
            geom = Geometry.from_module(layer_of(mod), path)
            overs = [mam[c] for c in anc_classes + [own_class] if c in mam]
            pat = overrides_by_name.first(path) if path else None
            if pat is not None:
                overs.append(nam[pat])
            opts_dict = cfg.with_overrides(*overs)
            if norm and not layer:
                opts = AlgoOptions(**{k: v for k, v in opts_dict.items() if k in AlgoOptions.field_names()})
                opts = opts.replace(algo=registry.for_layer_kind("norm").algo, dora_wd=False, dropout=0.0)
            else:
                if geom.has_spatial_kernel and not sel.enable_conv and not (path and names.first(path) is not None):
                    continue
                module_opts = AdapterConfig.module_options(opts_dict, geom.has_spatial_kernel)
                if module_opts is None:
                    continue
                opts = module_opts
            parent_path, _, attr = path.rpartition(".")
            parent = root.module.get_submodule(parent_path)
            out.append(Target(root, path, mod, parent, attr, root.name(path), geom, opts, anc_classes + [own_class]))
        for p in names.patterns:
            if p not in names.hits and p not in nam:
                log.warning("lyco: target name pattern %r matched no module in %s", p, root.prefix)
    if not out:
        raise TargetError(
            "no module matched the targets (" + "; ".join(tried) + "). Candidate layers: "
            + (short_list(candidates, 20) or "none (the model has no Linear/Conv layers)")
        )
    seen: dict[str, str] = {}
    for t in out:
        if t.name in seen:
            raise TargetError(f"two modules map to the same file name {t.name!r}: '{seen[t.name]}' and '{t.path}'; "
                              "exclude one of them")
        seen[t.name] = t.path
    return out
