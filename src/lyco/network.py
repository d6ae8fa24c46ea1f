"""``Network``: the set of adapters lyco attached to a model (or to several, e.g. a UNet and text encoders)."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from ._version import __version__
from .algos import registry
from .algos.base import AdapterModule, base_params
from .algos.geometry import Geometry
from .algos.options import AlgoOptions
from .config import AdapterConfig
from .errors import ConfigError, FileFormatError, LycoError, StateError, short_list
from .inject import Root, Target, is_adaptable_layer, is_norm_layer, layer_of, select_targets, walk
from .io import peft as peft_io
from .io.files import model_hashes, read_file, write_file
from .layer import LycoLayer, chain
from .presets import resolve_preset

log = logging.getLogger("lyco")

FORMAT_VERSION = "1"
IGNORED_PARTS = {"bias_indices", "bias_values", "bias_size"}


@dataclass
class Site:
    name: str
    root: Root
    path: str
    parent: nn.Module
    attr: str
    wrapper: LycoLayer


class Network(nn.Module):
    """Adapters attached to one or more models.  Build with :func:`lyco.attach` or :func:`lyco.load`."""

    def __init__(self) -> None:
        super().__init__()
        #: the adapters by file name: an ``nn.ModuleDict`` (so they are submodules), typed as the mapping it is
        self.adapters = cast("MutableMapping[str, AdapterModule]", nn.ModuleDict())
        self._sites: dict[str, Site] = {}
        self.config: AdapterConfig | None = None
        #: metadata added on save (e.g. ss_base_model_version for SD models)
        self.base_metadata: dict[str, str] = {}
        self.attached = False

    # ------------------------------------------------------------------ introspection
    def names(self) -> list[str]:
        return list(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def site(self, name: str) -> Site:
        return self._sites[name]

    def algo_counts(self) -> dict[str, int]:
        return dict(Counter(a.algo + ("+dora" if a.dora_axis else "") for a in self.adapters.values()))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def summary(self) -> str:
        per_root = Counter(s.root.prefix for s in self._sites.values())
        parts = ", ".join(f"{k}: {v}" for k, v in per_root.items())
        algos = ", ".join(f"{k} x{v}" for k, v in self.algo_counts().items())
        return f"{len(self)} modules ({parts}); {algos}; {self.num_parameters():,} trainable parameters"

    # ------------------------------------------------------------------ control
    def set_multiplier(self, multiplier: float, prefix: str | None = None) -> None:
        """Strength of every adapter (or of those whose name starts with ``prefix``, e.g. ``lora_te``)."""
        m = float(multiplier)
        for name, site in self._sites.items():
            if prefix is not None and not name.startswith(prefix):
                continue
            w = site.wrapper
            if w.merged:
                self._require_top_unmerged(site)
                w.unmerge()
                w.adapter.multiplier = m
                w.merge()
            else:
                w.adapter.multiplier = m

    def _check_attached(self) -> None:
        if not self.attached:
            raise StateError("this network has been detached; attach or load it again")

    def _above(self, site: Site) -> list[LycoLayer]:
        top = getattr(site.parent, site.attr)
        c = chain(top)
        if site.wrapper not in c:
            raise StateError(f"{site.name}: the adapter is no longer in the model (was the layer replaced?)")
        return c[: c.index(site.wrapper)]

    def _require_top_unmerged(self, site: Site) -> None:
        if any(w.merged for w in self._above(site)):
            raise StateError(f"{site.name}: another network stacked on this layer is merged; unmerge it first")

    def merge(self) -> None:
        """Write every adapter into its layer's weight (exactly reversible with :meth:`unmerge`)."""
        self._check_attached()
        for site in self._sites.values():
            site.wrapper.merge()

    def unmerge(self) -> None:
        self._check_attached()
        for site in self._sites.values():
            if site.wrapper.merged:
                self._require_top_unmerged(site)
        for site in self._sites.values():
            site.wrapper.unmerge()

    @property
    def merged(self) -> bool:
        return any(s.wrapper.merged for s in self._sites.values())

    def detach(self) -> None:
        """Remove every adapter and restore the model exactly (weights and requires_grad flags)."""
        self._check_attached()
        for site in self._sites.values():
            if site.wrapper.merged:
                self._require_top_unmerged(site)
        for site in self._sites.values():
            w = site.wrapper
            w.unmerge()
            above = self._above(site)
            below = w.base_layer
            if above:
                holder = above[-1]
                holder.base_layer = below
                if not isinstance(below, LycoLayer):
                    holder._frozen_flags = w._frozen_flags
            else:
                setattr(site.parent, site.attr, below)
                if not isinstance(below, LycoLayer):
                    _restore_flags(below, w._frozen_flags)
        self.attached = False

    def bake(self) -> None:
        """Merge every adapter into its layer for good and remove the wrappers (the model keeps the adapted
        weights; used to write merged checkpoints).  Networks stacked above must be baked first."""
        self._check_attached()
        for site in self._sites.values():
            if self._above(site):
                raise StateError(f"{site.name}: another network is stacked on this layer; bake it first")
        self.merge()
        for site in self._sites.values():
            w = site.wrapper
            w.merged = False
            w._merge_backup = None
            setattr(site.parent, site.attr, w.base_layer)
            if not isinstance(w.base_layer, LycoLayer):
                _restore_flags(w.base_layer, w._frozen_flags)
        self.attached = False

    # ------------------------------------------------------------------ files
    def state_tensors(self, dylora_rank: int | None = None) -> dict[str, torch.Tensor]:
        """The file content in fp32: ``<module name>.<part>`` -> tensor (folded as the format requires).

        ``dylora_rank`` truncates DyLoRA modules to that rank (a multiple of their block size)."""
        out: dict[str, torch.Tensor] = {}
        for name, a in self.adapters.items():
            exported = a.export_truncated(dylora_rank) if (dylora_rank and a.truncatable) else a.export()
            for part, t in exported.items():
                out[f"{name}.{part}"] = t
        return out

    def build_metadata(self, metadata: dict[str, str] | None = None) -> dict[str, str]:
        cfg = self.config
        adapters = list(self.adapters.values())
        algos = sorted({a.algo for a in adapters})
        main = Counter(a.algo for a in adapters).most_common(1)[0][0] if adapters else "lora"
        scaled = [a for a in adapters if a.scaled]
        dim = Counter(a.rank for a in scaled).most_common(1)[0][0] if scaled else 1
        alpha = Counter(a.saved_alpha() for a in scaled).most_common(1)[0][0] if scaled else 1.0
        args: dict[str, str] = {"algo": main}
        if cfg is not None:
            for k, v in cfg.option_dict().items():
                if k in ("dim", "alpha") or v is None:
                    continue
                args[k] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
            if cfg.preset:
                args["preset"] = cfg.preset
            args["algo"] = cfg.algo
        modules = {n: a.describe() for n, a in self.adapters.items()}
        meta = {
            "ss_network_module": "lyco.kohya",
            "ss_network_dim": str(dim),
            "ss_network_alpha": str(alpha),
            "ss_network_args": json.dumps(args),
            "lyco.version": __version__,
            "lyco.format_version": FORMAT_VERSION,
            "lyco.algo": ",".join(algos),
            "lyco_config": json.dumps({
                "format_version": FORMAT_VERSION,
                "library_version": __version__,
                "rs_lora_folded": True,
                "config": cfg.model_dump(mode="json") if cfg is not None else None,
                "modules": modules,
            }, sort_keys=True),
        }
        meta.update(self.base_metadata)
        if metadata:
            for k, v in metadata.items():
                if not isinstance(v, str):
                    raise ConfigError(f"metadata[{k!r}] must be a string (got {type(v).__name__}); json.dumps it")
            meta.update(metadata)
        return meta

    def save(self, path: str | os.PathLike[str], dtype: torch.dtype | None = None,
             metadata: dict[str, str] | None = None, dylora_rank: int | None = None) -> str:
        """Write a kohya/LyCORIS ``.safetensors`` file.  ``dtype`` None keeps fp32 (lossless).

        ``dylora_rank`` writes DyLoRA modules truncated to that rank (a valid LoCon file at that rank)."""
        tensors = {}
        for key, t in self.state_tensors(dylora_rank).items():
            part = key.split(".", 1)[1]
            if part == "alpha":
                t = t.to(torch.float32)
            elif t.is_floating_point() and dtype is not None:
                t = t.to(dtype)
            tensors[key] = t.contiguous()
        meta = self.build_metadata(metadata)
        stem = os.path.splitext(os.path.basename(str(path)))[0]
        meta.setdefault("ss_output_name", stem)
        if "modelspec.sai_model_spec" in meta:
            meta.setdefault("modelspec.title", meta["ss_output_name"])
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(tensors, meta)
        write_file(path, tensors, meta)
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# building


def _restore_flags(layer: nn.Module, flags: dict[str, bool] | None) -> None:
    if not flags:
        return
    for pname, p in layer.named_parameters(recurse=False):
        if pname in flags:
            p.requires_grad_(flags[pname])


def _install(net: Network, target: Target, adapter: AdapterModule, multiplier: float) -> None:
    current = target.module
    adapter.multiplier = multiplier
    wrapper = LycoLayer(current, adapter, id(net))
    wrapper.train(current.training)  # follow the model's train/eval mode
    if not isinstance(current, LycoLayer):
        flags = {n: p.requires_grad for n, p in current.named_parameters(recurse=False)}
        wrapper._frozen_flags = flags
        for p in current.parameters(recurse=False):
            p.requires_grad_(False)
    # keep the adapter on the layer's device (its dtype stays fp32: adapter parameters are fp32 masters)
    raw = layer_of(current)
    w = getattr(raw, "weight", None)
    if isinstance(w, torch.Tensor) and w.device.type != "meta":
        adapter.to(device=w.device)
    setattr(target.parent, target.attr, wrapper)
    net.adapters[target.name] = adapter
    net._sites[target.name] = Site(target.name, target.root, target.path, target.parent, target.attr, wrapper)


def build_network(roots: list[Root], config: AdapterConfig, multiplier: float = 1.0) -> Network:
    targets = select_targets(roots, config)
    gen = None
    if config.seed is not None:
        gen = torch.Generator().manual_seed(config.seed)
    net = Network()
    net.config = config
    made: list[tuple[Target, AdapterModule]] = []
    for t in targets:
        cls = registry.get(t.opts.algo)
        W, _ = base_params(t.module)
        made.append((t, cls(t.geom, t.opts, t.name, base_weight=W.detach(), generator=gen)))
    for t, adapter in made:
        _install(net, t, adapter, multiplier)
    net.attached = True
    log.info("lyco: attached %s", net.summary())
    return net


def needs_find_unused(config: AdapterConfig) -> bool:
    """Whether DDP must use ``find_unused_parameters=True`` for networks built from ``config``: some option set (the
    config's own, or an override in its or its preset's ``module_algo_map`` / ``name_algo_map``) lets a training step
    skip parameters (module dropout, or an algorithm with a stochastic graph such as DyLoRA)."""
    sel = resolve_preset(config, "lora_unet")  # the override maps do not depend on the side
    for over in [{}, *sel.module_algo_map.values(), *sel.name_algo_map.values()]:
        opts = config.with_overrides(over)
        algo_opts = AlgoOptions(**{k: v for k, v in opts.items() if k in AlgoOptions.field_names()})
        if registry.get(opts["algo"]).needs_find_unused(algo_opts):
            return True
    return False


def resolve_names(roots: list[Root], train_norm: bool = True) -> dict[str, tuple[Root, str, nn.Module]]:
    """Every adaptable module name (and read-only alias) of the roots -> (root, path, module)."""
    table: dict[str, tuple[Root, str, nn.Module]] = {}
    for root in roots:
        for path, mod, _ in walk(root.module):
            if not path or not (is_adaptable_layer(mod) or (train_norm and is_norm_layer(mod))):
                continue
            entry = (root, path, mod)
            table.setdefault(root.name(path), entry)
            for alias in (root.read_aliases(path) if root.read_aliases else ()):
                table.setdefault(alias, entry)
    return table


def network_from_tensors(
    tensors: dict[str, torch.Tensor], roots: list[Root], *, multiplier: float = 1.0, strict: bool = True,
    source: str = "<state dict>", metadata: dict[str, str] | None = None, allow_nonfinite: bool = False,
) -> Network:
    """Detect each module's algorithm from its keys, rebuild it exactly and attach it.

    Every tensor is checked first: non-floating dtypes, NaN/Inf (unless ``allow_nonfinite``) and non-scalar ``alpha``
    are FileFormatErrors naming ``source`` and the key."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if "." not in key:
            groups.setdefault("", {})[key] = t
            continue
        name, part = key.split(".", 1)
        groups.setdefault(name, {})[part] = t
    if "" in groups:
        raise FileFormatError(f"{source}: keys without a module name: {short_list(sorted(groups['']))}")
    module_hints = _module_hints(metadata)
    table = resolve_names(roots)
    unmatched, unknown_parts, ignored = [], [], []
    made: list[tuple[Target, AdapterModule]] = []
    seen: dict[str, str] = {}
    for name, parts in groups.items():
        entry = table.get(name)
        if entry is None:
            unmatched.append(name)
            continue
        root, path, mod = entry
        keys = set(parts)
        cls = registry.detect(parts)
        if cls is None:
            unknown_parts.append(f"{name}.{{{', '.join(sorted(keys))}}}")
            continue
        extra = keys - cls.file_parts - IGNORED_PARTS
        if keys & IGNORED_PARTS:
            ignored.append(name)
        if extra:
            unknown_parts.append(f"{name}.{{{', '.join(sorted(extra))}}} (with {cls.algo} keys)")
        h: dict[str, Any] = {}
        axis = module_hints.get(name, {}).get("dora_axis")
        if axis:
            h["dora_axis"] = axis
        layer = layer_of(mod)
        adapter = _module_from_file(cls, name, parts, path, layer, h, source, allow_nonfinite)
        for w in h.get("warnings", []):
            log.warning("lyco: %s: %s", source, w)
        parent_path, _, attr = path.rpartition(".")
        parent = root.module.get_submodule(parent_path)
        canonical = root.name(path)  # files may use another spelling; the network writes the canonical one
        if canonical in seen:
            raise FileFormatError(f"{source}: the layer '{path}' appears twice in the file (as '{seen[canonical]}' "
                                  f"and '{name}'); files must not mix naming layouts")
        seen[canonical] = name
        made.append((Target(root, path, mod, parent, attr, canonical, None, adapter.opts), adapter))  # type: ignore[arg-type]
    if ignored:
        log.warning("lyco: %s: ignored legacy sparse-residual keys (bias_indices/bias_values/bias_size) in %d modules",
                    source, len(ignored))
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} module names have no matching layer in the model: "
                        f"{short_list(sorted(unmatched))}")
    if unknown_parts:
        problems.append(f"unknown keys: {short_list(unknown_parts)}")
    if not made:
        raise FileFormatError(f"{source}: no module of the file matches the model"
                              + (f" ({'; '.join(problems)})" if problems else "")
                              + f". Model names look like: {short_list(sorted(table)[:5], 5)}")
    if problems:
        msg = f"{source}: " + "; ".join(problems)
        if strict:
            raise FileFormatError(msg + " (pass strict=False to load the rest)")
        log.warning("lyco: %s", msg)
    net = Network()
    for target, adapter in made:
        _install(net, target, adapter, multiplier)
    net.attached = True
    return net


def _module_hints(metadata: dict[str, str] | None) -> dict[str, dict[str, Any]]:
    """Per-module records of lyco's ``lyco_config`` metadata (informational; only DoRA-axis ties use them)."""
    try:
        return json.loads((metadata or {}).get("lyco_config", "{}")).get("modules", {}) or {}
    except (json.JSONDecodeError, AttributeError):
        return {}


def _module_from_file(cls: type[AdapterModule], name: str, parts: dict[str, torch.Tensor], path: str,
                      layer: nn.Module, hints: dict[str, Any], source: str, allow_nonfinite: bool) -> AdapterModule:
    """One adapter rebuilt from its tensors; every problem is a FileFormatError naming the file and module."""
    try:
        known = {p: t for p, t in parts.items() if p in cls.file_parts}
        hints.setdefault("warnings", []).extend(cls.check_file_tensors(name, known, allow_nonfinite))
        geom = Geometry.from_module(layer, path)
        if geom.kind not in cls.layer_kinds:
            raise FileFormatError(f"module '{name}': {cls.algo} keys cannot adapt the model's "
                                  f"{type(layer).__name__} layer at '{path}'")
        return cls.from_file(geom, parts, name, hints)
    except FileFormatError as exc:
        raise FileFormatError(f"{source}: {exc}") from None
    except LycoError as exc:
        raise FileFormatError(f"{source}: module '{name}' ({path}): {exc}") from None
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError, ArithmeticError) as exc:  # unanticipated shapes
        shapes = ", ".join(f"{p} {tuple(t.shape)}" for p, t in sorted(parts.items()))
        raise FileFormatError(f"{source}: module '{name}': malformed {cls.algo} tensors for the model's layer "
                              f"'{path}' ({shapes}): {type(exc).__name__}: {exc}") from None


def read_adapter(path: str | os.PathLike[str], roots: list[Root]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The kohya/LyCORIS tensors and metadata of an adapter: a kohya/LyCORIS ``.safetensors`` file, a PEFT folder
    (or its weights file) or a diffusers-format LoRA file (their modules named through ``roots``)."""
    p = Path(path)
    if peft_io.is_peft_folder(p):
        return _named(peft_io.read_peft(p), roots, str(p)), {}
    tensors, meta = read_file(p)
    layout = peft_io.layout_of(tensors)
    if layout == "peft":
        return _named(peft_io.read_peft(p), roots, str(p)), meta
    if layout == "diffusers":
        return _named(peft_io.read_diffusers(tensors, str(p)), roots, str(p)), meta
    return tensors, meta


def _named(adapters: list[peft_io.ForeignAdapter], roots: list[Root], source: str) -> dict[str, torch.Tensor]:
    by_part = {peft_io.PART_OF_PREFIX.get(r.prefix, "model"): r for r in roots}
    out: dict[str, torch.Tensor] = {}
    for ad in adapters:
        root = roots[0] if len(roots) == 1 and len(adapters) == 1 else by_part.get(ad.part)
        if root is None:
            raise FileFormatError(f"{source}: the {ad.kind} adapter for '{ad.part}' has no matching model part "
                                  f"(the model has: {', '.join(sorted(by_part))})")
        for mpath, parts in ad.modules.items():
            for part, t in parts.items():
                out[f"{root.name(mpath)}.{part}"] = t
    return out


def attach(model: nn.Module, config: AdapterConfig | None = None, *, prefix: str = "lycoris",
           multiplier: float = 1.0, **options: Any) -> Network:
    """Attach adapters to ``model`` and return the :class:`Network`.

    ``config`` may be omitted and options given as keywords: ``lyco.attach(model, algo="loha", dim=8)``.
    Module names in files are ``prefix`` + ``_`` + the module path with dots replaced by underscores.
    """
    if config is None:
        config = AdapterConfig(**options)
    elif options:
        raise ConfigError(f"pass either an AdapterConfig or keyword options, not both (got {sorted(options)})")
    return build_network([Root(prefix, model)], config, multiplier)


def load(path: str | os.PathLike[str], model: nn.Module, *, prefix: str = "lycoris", multiplier: float = 1.0,
         strict: bool = True, allow_nonfinite: bool = False) -> Network:
    """Load an adapter onto ``model``: algorithms are detected from the keys, modules rebuilt exactly.

    ``path`` is a kohya/LyCORIS ``.safetensors`` file, a PEFT adapter folder (or its ``adapter_model.safetensors``
    with the config beside it) or a diffusers-format LoRA file."""
    root = Root(prefix, model, read_aliases=_generic_aliases(prefix))
    tensors, meta = read_adapter(path, [root])
    return network_from_tensors(tensors, [root], multiplier=multiplier, strict=strict, source=str(path), metadata=meta,
                                allow_nonfinite=allow_nonfinite)


def _generic_aliases(prefix: str) -> Callable[[str], list[str]]:
    def aliases(path: str) -> list[str]:
        flat = path.replace(".", "_")
        return [f"lycoris_{flat}", f"lora_{flat}"] if prefix != "lycoris" else [f"lora_{flat}"]
    return aliases


def parameters_of(networks: Iterable[Network]) -> list[nn.Parameter]:
    return [p for n in networks for p in n.parameters()]
