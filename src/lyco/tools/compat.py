"""Which clients load an adapter file and compute it exactly, and how to rewrite a file for one client.

The support matrix is data the algorithm classes carry (``AdapterModule.support``, :mod:`lyco.algos.support`): each
module of a file reports its features (``cls.file_features``) and a file's verdict for a client is the worst level
over every feature it uses.  A module no algorithm recognises, or a feature without a row, makes the verdict
``unknown`` rather than a guess.  ``docs/compatibility.md`` prints the table (:func:`markdown_table`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..algos import registry
from ..algos.base import base_params
from ..algos.support import (
    APPROX,
    CLIENT_NOTES,
    CLIENTS,
    DORA_SUPPORT,
    ERROR,
    EXACT,
    IGNORED,
    RANK,
    TESTED_CLIENTS,
    UNKNOWN,
    Support,
    row,
    symbol,
)
from ..errors import ConfigError, FileFormatError, did_you_mean
from ..io.files import group_by_module
from ..network import network_from_tensors
from .lowrank import factor

OK = EXACT
__all__ = ["APPROX", "CLIENTS", "ERROR", "IGNORED", "OK", "UNKNOWN", "Verdict", "features", "group", "matrix",
           "rewrite_for", "verdicts"]

#: features of a whole file rather than of one algorithm's modules
FILE_SUPPORT: Mapping[str, Support] = {
    "sdxl-diffusers-names": row("✔ ≈ ✔ ✔ ✔ ✔ ✘ ✔", "A1111 maps the SDXL up_blocks_0 upsampler to the wrong layer",
                                lycoris_lora="lycoris.kohya matches names against sd-scripts' LDM-layout SDXL UNet, so "
                                "diffusers-layout SDXL names match no module"),
    "unknown-keys": row("✘ ! ✘ ! ! ✘ ! !", "ComfyUI and Forge skip keys they do not know; A1111 aborts the file on an "
                        "unknown key set in a module it matches, InvokeAI on a name it cannot resolve",
                        diffusers="diffusers raises on keys it does not convert",
                        lycoris_lora="lycoris-lora 4.1.3 raises on a module whose name matches a layer but whose keys "
                        "no algorithm knows", PEFT="`lyco convert --to peft` converts lora, loha and lokr modules "
                        "only"),
}


@dataclass(frozen=True)
class Verdict:
    level: str
    reason: str = ""


def matrix() -> dict[str, Support]:
    """Every feature's support row: DoRA, whole-file features and each registered algorithm's own rows."""
    out: dict[str, Support] = {**DORA_SUPPORT, **FILE_SUPPORT}
    for cls in registry.detection_order():
        for feature, support in cls.support.items():
            if feature in out and out[feature] is not support:
                raise RuntimeError(f"support feature {feature!r} is declared twice ({cls.__name__})")
            out[feature] = support
    return out


def features(name: str, parts: dict[str, torch.Tensor]) -> list[str]:
    """The support-matrix features one module uses (``unknown-keys`` when no algorithm recognises it)."""
    cls = registry.detect(parts)
    if cls is None:
        return ["unknown-keys"]
    try:
        return cls.file_features(name, parts)
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError):  # malformed tensors: nothing to promise
        return [f"malformed-{cls.algo}"]


def used_features(groups: dict[str, dict[str, torch.Tensor]], sdxl_diffusers_names: bool = False) -> dict[str, int]:
    """Feature -> number of modules using it (whole-file features count 1)."""
    used: dict[str, int] = {}
    for name in sorted(groups):
        for f in features(name, groups[name]):
            used[f] = used.get(f, 0) + 1
    if sdxl_diffusers_names:
        used["sdxl-diffusers-names"] = 1
    return used


def verdicts(groups: dict[str, dict[str, torch.Tensor]], sdxl_diffusers_names: bool = False) -> dict[str, Verdict]:
    """Per client: the worst level over every module's features, with the reasons."""
    used = used_features(groups, sdxl_diffusers_names)
    table = matrix()
    out = {}
    for client in CLIENTS:
        level, reasons = EXACT, []
        for f, n in sorted(used.items()):
            support = table.get(f)
            lv = support.level(client) if support else UNKNOWN
            if lv != EXACT:
                why = support.why(client) if support else "lyco has no support data for it"
                reasons.append(f"{f} ({n} modules): {why or lv}")
            if RANK[lv] > RANK[level]:
                level = lv
        out[client] = Verdict(level, "; ".join(reasons))
    return out


def client_name(name: str) -> str:
    """A client of the matrix from a loose spelling (``lycoris``, ``comfyui``, ``peft`` ...)."""
    key = name.lower().replace("_", "-")
    for c in CLIENTS:
        if key in (c.lower(), c.lower().split("-")[0]):
            return c
    raise ConfigError(f"unknown client {name!r}{did_you_mean(name, CLIENTS)}; valid: {', '.join(CLIENTS)}")


def _exact_for(client: str, feats: list[str]) -> bool:
    table = matrix()
    return all(f in table and table[f].level(client) == EXACT for f in feats)


def rewrite_for(tensors: dict[str, torch.Tensor], client: str, base_roots=None, dora_rank: int | None = None,
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rewrite every module ``client`` does not compute exactly into one it does (returns tensors, report lines).

    Exact rewrites from the file alone come first (an algorithm's ``portable_parts``); otherwise the module's exact
    ΔW is computed from the base model (``base_roots``) and written as a ``full`` diff, or as a LoRA of rank
    ``dora_rank`` (reported with its error) when the client has no full-diff loader or ``dora_rank`` is given."""
    client = client_name(client)
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    needs_base: dict[str, str] = {}
    for name, parts in group_by_module(tensors).items():
        feats = features(name, parts)
        cls = registry.detect(parts)
        if _exact_for(client, feats) or cls is None:
            out.update({f"{name}.{k}": v for k, v in parts.items()})
            if cls is None:
                notes.append(f"{name}: unrecognised keys kept as they are ({', '.join(sorted(parts))})")
            continue
        portable = cls.portable_parts(parts)
        if portable is not None and _exact_for(client, cls.file_features(name, portable)):
            out.update({f"{name}.{k}": v for k, v in portable.items()})
            notes.append(f"{name}: {', '.join(feats)} rewritten exactly from the file")
            continue
        needs_base[name] = ", ".join(f for f in feats if not _exact_for(client, [f]))
    if needs_base:
        out.update(_rewrite_with_base(tensors, needs_base, client, base_roots, dora_rank, notes))
    return out, notes


def _rewrite_with_base(tensors, needs: dict[str, str], client: str, base_roots, dora_rank: int | None,
                       notes: list[str]) -> dict[str, torch.Tensor]:
    if base_roots is None:
        raise FileFormatError(f"these modules need the base model to be rewritten exactly for {client} (pass --base): "
                              + "; ".join(f"{n}: {why}" for n, why in list(needs.items())[:8]))
    as_lora = dora_rank is not None or not _exact_for(client, ["full"])
    if as_lora and not (dora_rank and _exact_for(client, ["lora"])):
        raise FileFormatError(f"{client} has no exact loader for {', '.join(sorted(set(needs.values())))}; pass "
                              "--dora-rank N to approximate those modules by a LoRA of rank N")
    return rewrite_from_base(tensors, needs, base_roots, dora_rank if as_lora else None, notes, source="rewrite")


def rewrite_from_base(tensors: Mapping[str, torch.Tensor], needs: Mapping[str, str], base_roots: Any,
                      lora_rank: int | None, notes: list[str], source: str) -> dict[str, torch.Tensor]:
    """Each module of ``needs`` (name -> why) rewritten from its exact ΔW on the base model: a ``full`` diff, or a
    LoRA of rank ``lora_rank`` (its relative error reported in ``notes``)."""
    sub = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in needs}
    net = network_from_tensors(sub, base_roots, source=source)
    out: dict[str, torch.Tensor] = {}
    try:
        for name, site in net._sites.items():
            W, b = base_params(site.wrapper.raw_layer())
            with torch.no_grad():
                W2, _ = site.wrapper.adapter.adapted_weight(W, b, 1.0)
            delta = W2.float() - W.float()
            if lora_rank:
                f = factor(delta, "fixed", lora_rank, svd="full")
                out.update(f.locon_tensors(name, tuple(delta.shape)))
                notes.append(f"{name}: {needs[name]} -> LoRA rank {f.rank}, relative error {f.rel_error:.3e}")
            else:
                out[f"{name}.diff"] = delta
                notes.append(f"{name}: {needs[name]} -> exact full diff")
    finally:
        net.detach()
    return out


def markdown_table() -> str:
    """The support matrix as docs/compatibility.md shows it: the table, what each column means, and why."""
    table = matrix()
    head = "| feature | " + " | ".join(CLIENTS) + " |\n|---|" + "---|" * len(CLIENTS) + "\n"
    rows = [f"| `{f}` | " + " | ".join(symbol(s.level(c)) for c in CLIENTS) + " |" for f, s in sorted(table.items())]
    columns = [f"- **{c}**: {CLIENT_NOTES[c]}" + (" — checked by `tests/test_compat_claims.py`" if c in TESTED_CLIENTS
                                                   else "") for c in CLIENTS if c in CLIENT_NOTES]
    why = []
    for f, s in sorted(table.items()):
        extra = "".join(f" {c}: {n}." for c, n in s.notes.items())
        if s.reason or extra:
            why.append(f"- `{f}`: {s.reason}{'.' if s.reason else ''}{extra}")
    return head + "\n".join(rows) + "\n\n" + "\n".join(columns) + "\n\n" + "\n".join(why) + "\n"


group = group_by_module
