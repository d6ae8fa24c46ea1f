"""A file's tensors into a network built from sd-scripts' command line (``--network_weights``, ``--resume``,
``network.load_state_dict`` in sd-scripts' generation scripts).

Every module is checked against the file before anything is copied: a different algorithm or rank is a
:class:`~lyco.ConfigError` naming the module, both shapes and the fix (``--dim_from_weights``); a different alpha
is taken from the file and reported.  Tensors are copied into the existing parameters, so an optimizer built
on them stays valid.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..algos import registry
from ..algos.base import AdapterModule
from ..errors import ConfigError, FileFormatError, short_list
from ..io.files import group_by_module
from ..network import Network

log = logging.getLogger("lyco")

FIX = ("pass --dim_from_weights to build the network from the file (its algorithm, ranks and alphas), or the "
       "--network_dim / --network_args (algo, conv_dim, preset ...) it was trained with")


@dataclass
class LoadPlan:
    """What loading a file into a network does, worked out before any tensor is copied."""

    fresh: dict[str, AdapterModule] = field(default_factory=dict)  # network module -> module rebuilt from the file
    missing: list[str] = field(default_factory=list)  # network modules the file does not have
    unexpected: list[str] = field(default_factory=list)  # file modules the network does not have
    alphas: dict[str, tuple[float, float]] = field(default_factory=dict)  # module -> (command line, file)


def _shapes(m: AdapterModule) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _mismatch(name: str, ours: AdapterModule,
              parts: dict[str, torch.Tensor]) -> tuple[str | None, AdapterModule | None]:
    """(problem, None) or (None, module rebuilt from the file's tensors with the network module's geometry)."""
    cls = registry.detect(parts)
    if cls is None:
        return f"{name}: keys {{{', '.join(sorted(parts))}}} are no known algorithm", None
    if cls is not type(ours):
        return (f"{name}: the file has {cls.algo} ({_describe(parts)}), the network {ours.algo} "
                f"({_describe(ours.export())})"), None
    hints = {"dora_axis": ours.dora_axis} if ours.dora_axis else {}
    try:
        theirs = cls.from_file(ours.geom, parts, name, hints)
    except (FileFormatError, ConfigError) as exc:
        return f"{name}: {exc}", None
    if _shapes(ours) != _shapes(theirs):  # say it in the file's keys
        a = {k: tuple(t.shape) for k, t in ours.export().items()}
        b = {k: tuple(t.shape) for k, t in parts.items()}
        diff = [f"{k} file {b.get(k, 'absent')} vs network {a.get(k, 'absent')}" for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)]
        return f"{name} ({ours.algo}): " + "; ".join(diff), None
    return None, theirs


def _describe(tensors: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {tuple(t.shape)}" for k, t in sorted(tensors.items()) if t.dim())


def plan_load(net: Network, tensors: dict[str, torch.Tensor], source: str) -> LoadPlan:
    """Match the file's modules to the network's; raises on any algorithm / shape mismatch."""
    plan = LoadPlan()
    problems: list[str] = []
    groups = group_by_module(tensors)
    for name, parts in groups.items():
        ours = net.adapters[name] if name in net.adapters else None
        if ours is None:
            plan.unexpected.append(name)
            continue
        problem, theirs = _mismatch(name, ours, parts)
        if problem:
            problems.append(problem)
            continue
        assert theirs is not None
        plan.fresh[name] = theirs
        if abs(ours.saved_alpha() - theirs.saved_alpha()) > 1e-6 * max(1.0, abs(theirs.saved_alpha())):
            plan.alphas[name] = (ours.saved_alpha(), theirs.saved_alpha())
    if problems:
        raise ConfigError(f"{source} does not fit the network built from the command line ({len(problems)} of "
                          f"{len(groups)} modules): {short_list(sorted(problems), 3)}; {FIX}")
    plan.missing = [n for n in net.adapters if n not in groups]
    return plan


def apply_plan(net: Network, plan: LoadPlan) -> None:
    """Copy the file's tensors into the network's parameters (in place) and adopt the file's alphas."""
    with torch.no_grad():
        for name, theirs in plan.fresh.items():
            ours = net.adapters[name]
            ours.load_state_dict(theirs.state_dict())
            # the file stores alpha with rs-LoRA folded in; its scale wins
            ours.opts = ours.opts.replace(alpha=theirs.opts.alpha, rs_lora=theirs.opts.rs_lora)


def report(plan: LoadPlan, source: str, skipped_sides: tuple[str, ...] = ()) -> dict[str, object]:
    """Log what a load changed; raise when file modules would be dropped.  Returns sd-scripts' info dict."""
    dropped = [n for n in plan.unexpected if not n.startswith(skipped_sides)] if skipped_sides else plan.unexpected
    if dropped:
        raise ConfigError(f"{source}: {len(dropped)} modules of the file are not in the network built from the "
                          f"command line and would be lost from every file this run saves: "
                          f"{short_list(sorted(dropped), 4)}; {FIX}")
    untrained = sorted(set(plan.unexpected) - set(dropped))
    if untrained:
        log.warning("lyco.kohya: %s: %d modules of the file belong to a side this run does not train (%s); they "
                    "are not part of this network and not in the files it saves", source, len(untrained),
                    short_list(untrained, 3))
    if plan.missing:
        log.warning("lyco.kohya: %s has no weights for %d modules of the network, which start from their initial "
                    "values (%s); the file was trained with other targets: %s", source, len(plan.missing),
                    short_list(plan.missing, 3), FIX)
    if plan.alphas:
        pairs = Counter((round(a, 6), round(b, 6)) for a, b in plan.alphas.values())
        desc = ", ".join(f"{n} modules: file {b:g} vs command line {a:g}" for (a, b), n in pairs.most_common())
        log.warning("lyco.kohya: %s: the file's alpha differs from the command line's (%s); the file's alpha is "
                    "used (pass the same --network_alpha / conv_alpha to silence this)", source, desc)
    return {"loaded": len(plan.fresh), "missing": list(plan.missing), "unexpected": list(plan.unexpected),
            "alpha_from_file": len(plan.alphas)}


def load_into(net: Network, tensors: dict[str, torch.Tensor], source: str,
              skipped_sides: tuple[str, ...] = ()) -> dict[str, object]:
    """Check, then load ``tensors`` (kohya keys) into ``net``; returns sd-scripts' info dict."""
    plan = plan_load(net, tensors, source)
    info = report(plan, source, skipped_sides)
    apply_plan(net, plan)
    return info


# ---------------------------------------------------------------------------------------------------------
# the network's state dict in the file's keys

INTERNAL = "net.adapters."
_INTERNAL_KEY = re.compile(r"^(?P<pre>.*?)net\.adapters\.(?P<name>[^.]+)\.")


def file_state(net: Network | None) -> dict[str, torch.Tensor]:
    """The state dict sd-scripts expects from a network: exactly the file's keys and tensors."""
    return net.state_tensors() if net is not None else {}


def to_internal(net: Network, state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Rewrite, in place, the file-format keys under ``prefix`` into the network's own parameter keys."""
    file_keys = {k[len(prefix):]: k for k in state_dict
                 if k.startswith(prefix) and k[len(prefix):].partition(".")[0] in net.adapters}
    if not file_keys:
        return
    plan = plan_load(net, {short: state_dict[full] for short, full in file_keys.items()}, "state dict")
    for full in file_keys.values():
        del state_dict[full]
    for name, theirs in plan.fresh.items():
        ours = net.adapters[name]
        ours.opts = ours.opts.replace(alpha=theirs.opts.alpha, rs_lora=theirs.opts.rs_lora)
        for k, v in theirs.state_dict().items():
            state_dict[f"{prefix}{INTERNAL}{name}.{k}"] = v


def to_file_keys(net: Network | None, keys: list[str]) -> None:
    """Rewrite, in place, missing/unexpected internal keys as the file keys of their modules (for messages)."""
    if net is None:
        return
    out: list[str] = []
    seen: set[str] = set()
    for k in keys:
        m = _INTERNAL_KEY.match(k)
        if m is None:
            out.append(k)
            continue
        name = m.group("name")
        if name in seen:
            continue
        seen.add(name)
        parts = net.adapters[name].export() if name in net.adapters else {}
        out += [f"{m.group('pre')}{name}.{p}" for p in parts] or [k]
    keys[:] = out
