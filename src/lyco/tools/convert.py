"""``lyco convert IN -o OUT --to kohya|peft|diffusers|ui-safe``: key/format conversion.

* ``peft``: a PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``) per model part; the
  per-module alpha goes into ``alpha_pattern``, so kohya -> peft -> kohya is bit-exact.
* ``kohya``: from a PEFT folder (or a diffusers-format file) back to kohya/LyCORIS keys.
* ``diffusers``: ``unet.<path>.lora_A.weight`` style keys (plain LoRA only; the scale is baked into lora_B).
* ``ui-safe``: rewrites what some UI computes wrongly (output-axis DoRA, DoRA on LoHa/LoKr, LoKr Tucker on convs,
  OFT constraints, GLoRA, IA3, OFT rescale) into exact equivalents every UI reads; rewrites that need the base
  weights (``full`` diffs, SVD) use ``--base``.
Converting between names and module paths needs the model structure: pass ``--base`` (or, in Python, roots).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from ..algos import registry
from ..errors import ConfigError, FileFormatError
from ..inject import Root
from ..io.files import model_hashes, read_file, write_file
from ..network import resolve_names
from ..sd import load_pipeline
from ..sd import roots as sd_roots
from .args import add_common, add_option
from .compat import group, rewrite_for, rewrite_from_base
from .outputs import check_output, staged_folder

log = logging.getLogger("lyco")

PEFT_TYPES = {"lora": "LORA", "loha": "LOHA", "lokr": "LOKR"}
ADDED_FORMAT = "lyco.convert_added_format"  # marks a "format" key added for PEFT/diffusers loaders
PART_DIRS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2",
             "lycoris": "model"}


# ---------------------------------------------------------------------------------------------------- kohya <-> peft
def _path_table(roots: list[Root]) -> dict[str, tuple[Root, str]]:
    return {name: (root, path) for name, (root, path, _) in resolve_names(roots).items()}


def kohya_to_peft(tensors: dict[str, torch.Tensor],
                  roots: list[Root]) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    """{part dir: (PEFT state dict, adapter_config)} for the roots present in the file."""
    table = _path_table(roots)
    out: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}
    for name, parts in group(tensors).items():
        if name not in table:
            raise FileFormatError(f"module '{name}' has no layer in the base model")
        root, path = table[name]
        cls = registry.detect(parts)
        algo = cls.algo if cls else "?"
        if algo not in PEFT_TYPES:
            raise FileFormatError(f"module '{name}' is {algo}; PEFT has no equivalent (convertible: lora, loha, lokr)")
        if algo == "lora" and "lora_mid.weight" in parts:
            raise FileFormatError(f"module '{name}' is Tucker LoCon (lora_mid); PEFT LoRA cannot express it")
        sd, cfg = out.setdefault(PART_DIRS.get(root.prefix, root.prefix), ({}, {"peft_type": PEFT_TYPES[algo],
                                                                              "target_modules": [], "rank_pattern": {},
                                                                              "alpha_pattern": {}}))
        if cfg["peft_type"] != PEFT_TYPES[algo]:
            raise FileFormatError(f"{root.prefix}: a PEFT adapter holds one method, but the file mixes "
                                  f"{cfg['peft_type'].lower()} and {algo}")
        prefix = f"base_model.model.{path}."
        rank = _rank(algo, parts)
        if parts.keys() & {"hada_t1", "lokr_t2"}:
            cfg["_tucker"] = True
        elif algo != "lora" and any(k > 1 for k in getattr(root.module.get_submodule(path), "kernel_size", ())):
            cfg["_plain_kxk"] = True
        for part, t in parts.items():
            if part in ("alpha", "scale"):
                continue
            if part == "dora_scale":
                if algo != "lora" or not (t.dim() == 1 or t.shape[0] > 1):
                    raise FileFormatError(f"module '{name}': only output-axis DoRA on LoRA exports to PEFT "
                                          "(input-axis DoRA has no PEFT equivalent)")
                sd[prefix + "lora_magnitude_vector"] = t.reshape(-1) if t.dim() <= 2 else t.reshape(1, -1, *t.shape[2:])
                cfg["use_dora"] = True
                continue
            key = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(part, part)
            sd[prefix + key] = t
        alpha = float(parts["alpha"].float()) if "alpha" in parts else float(rank)
        if algo == "lokr" and _lokr_full_full(parts):
            alpha = float(rank)  # PEFT applies alpha/r even without a low-rank factor; kohya uses scale 1
        cfg["target_modules"].append(path)
        cfg["rank_pattern"][path] = rank
        cfg["alpha_pattern"][path] = alpha
    for _, cfg in out.values():
        _finish_peft_config(cfg)
    return out


def _lokr_full_full(parts: dict[str, torch.Tensor]) -> bool:
    return "lokr_w1_b" not in parts and "lokr_w2_b" not in parts


def _rank(algo: str, parts: dict[str, torch.Tensor]) -> int:
    if algo == "lora":
        return int(parts["lora_down.weight"].shape[0])
    if algo == "loha":
        return int(parts["hada_w1_b"].shape[0])
    for k in ("lokr_w1_b", "lokr_w2_b"):
        if k in parts:
            return int(parts[k].shape[0])
    w2 = parts["lokr_w2"]
    return int(max(w2.shape[0], w2.shape[1]))  # full W2: PEFT needs r >= max(b, d)/2 to build it full


def _finish_peft_config(cfg: dict) -> None:
    tucker = cfg.pop("_tucker", False)
    if tucker and cfg.pop("_plain_kxk", False):
        raise FileFormatError("PEFT has one use_effective_conv2d flag per adapter, but this file mixes Tucker and "
                              "non-Tucker k×k convs")
    cfg.pop("_plain_kxk", None)
    ranks = list(cfg["rank_pattern"].values())
    r0 = max(set(ranks), key=ranks.count)
    t = cfg["peft_type"]
    cfg.update(r=r0, target_modules=sorted(set(cfg["target_modules"])), task_type=None, inference_mode=False,
               base_model_name_or_path=None, revision=None, modules_to_save=None, layers_to_transform=None,
               layers_pattern=None, init_weights=True)
    alpha0 = 8.0
    if t == "LORA":
        cfg.update(lora_alpha=alpha0, lora_dropout=0.0, fan_in_fan_out=False, bias="none", use_rslora=False,
                   init_lora_weights=True, use_dora=cfg.get("use_dora", False))
        cfg.pop("init_weights")
    elif t == "LOHA":
        cfg.update(alpha=alpha0, rank_dropout=0.0, module_dropout=0.0, use_effective_conv2d=tucker)
    else:
        cfg.update(alpha=alpha0, rank_dropout=0.0, module_dropout=0.0, use_effective_conv2d=tucker,
                   decompose_both=False, decompose_factor=-1)


def peft_to_kohya(parts: dict[str, tuple[dict[str, torch.Tensor], dict]], roots: list[Root]) -> dict[str, torch.Tensor]:
    """kohya/LyCORIS tensors from PEFT state dicts + configs keyed by part dir (see :func:`kohya_to_peft`)."""
    by_dir = {PART_DIRS.get(r.prefix, r.prefix): r for r in roots}
    out: dict[str, torch.Tensor] = {}
    for d, (sd, cfg) in parts.items():
        root = by_dir.get(d)
        if root is None:
            raise FileFormatError(f"PEFT part '{d}' has no matching model part (have: {', '.join(by_dir)})")
        t = cfg.get("peft_type", "LORA")
        if cfg.get("use_rslora"):
            raise FileFormatError(f"{d}: rs-LoRA PEFT adapters are not supported (fold the scale first)")
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in sd.items():
            k = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
            for part in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "hada_w1_a", "hada_w1_b",
                         "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b",
                         "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
                if k.endswith("." + part):
                    modules.setdefault(k[: -len(part) - 1], {})[part] = v
                    break
            else:
                raise FileFormatError(f"{d}: unknown PEFT key {key!r}")
        default_alpha = cfg.get("lora_alpha" if t == "LORA" else "alpha", 8)
        for path, ps in modules.items():
            name = root.name(path)
            for part, v in ps.items():
                if part == "lora_magnitude_vector":
                    out[f"{name}.dora_scale"] = (v.reshape(-1, *([1] * (v.dim() - 1))) if v.dim() > 1
                                                 else v.reshape(-1, 1))
                else:
                    kp = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(part, part)
                    out[f"{name}.{kp}"] = v
            alpha = float(cfg.get("alpha_pattern", {}).get(path, default_alpha))
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def carried_metadata(meta: dict[str, str]) -> dict[str, str]:
    """The metadata a PEFT / diffusers file carries for the way back (``ss_*``, modelspec, ``lyco.*``, tag
    frequencies...; PEFT ignores it), plus the ``format`` key those loaders expect."""
    out = {k: v for k, v in meta.items() if not k.startswith("sshs_")}
    if "format" not in out:
        out["format"] = "pt"
        out[ADDED_FORMAT] = "1"
    return out


def restored_metadata(meta: dict[str, str]) -> dict[str, str]:
    """Inverse of :func:`carried_metadata` (the hashes are recomputed by the writer)."""
    out = dict(meta)
    if out.pop(ADDED_FORMAT, None) is not None:
        out.pop("format", None)
    return out


def write_peft(out_dir: str | os.PathLike, parts: dict[str, tuple[dict[str, torch.Tensor], dict]],
               metadata: dict[str, str] | None = None) -> Path:
    """PEFT folders; ``metadata`` (the kohya file's) rides in each ``adapter_model.safetensors`` header."""
    out = Path(out_dir)
    carried = carried_metadata(metadata or {})
    for d, (sd, cfg) in parts.items():
        target = out if len(parts) == 1 and d == "model" else out / d
        target.mkdir(parents=True, exist_ok=True)
        write_file(target / "adapter_model.safetensors", sd, carried)
        (target / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def read_peft(in_dir: str | os.PathLike, metadata: dict[str, str] | None = None,
              ) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    """PEFT parts of a folder; the carried kohya metadata (if any) is added to ``metadata``."""
    p = Path(in_dir)
    found = {}
    candidates = [p] + sorted(c for c in p.iterdir() if c.is_dir()) if p.is_dir() else []
    for c in candidates:
        if (c / "adapter_config.json").is_file():
            sd, meta = read_file(c / "adapter_model.safetensors")
            found["model" if c == p else c.name] = (sd, json.loads((c / "adapter_config.json").read_text()))
            if metadata is not None:
                for k, v in restored_metadata(meta).items():
                    metadata.setdefault(k, v)
    if not found:
        raise FileFormatError(f"{p}: no PEFT adapter (adapter_config.json + adapter_model.safetensors) found")
    return found


# ---------------------------------------------------------------------------------------------------- diffusers
def kohya_to_diffusers(tensors: dict[str, torch.Tensor], roots: list[Root]) -> dict[str, torch.Tensor]:
    table = _path_table(roots)
    out = {}
    for name, parts in group(tensors).items():
        cls = registry.detect(parts)
        if cls is None or cls.algo != "lora" or parts.keys() & {"lora_mid.weight", "dora_scale"}:
            raise FileFormatError(f"module '{name}': the diffusers format holds plain LoRA/LoCon only "
                                  f"(no Tucker, no DoRA, no {cls.algo if cls else 'unknown'})")
        root, path = table[name]
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        r = down.shape[0]
        s = (float(parts["alpha"]) if "alpha" in parts and float(parts["alpha"]) else r) / r
        d = PART_DIRS.get(root.prefix, root.prefix)
        out[f"{d}.{path}.lora_A.weight"] = down
        out[f"{d}.{path}.lora_B.weight"] = (up.float() * s).to(up.dtype)
    return out


# ---------------------------------------------------------------------------------------------------- ui-safe
def ui_safe(tensors: dict[str, torch.Tensor], base_roots: list[Root] | None = None, dora_rank: int | None = None,
            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rewrite modules that some UI computes wrongly.  Returns (tensors, report lines)."""
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    needs_base: dict[str, str] = {}
    groups = group(tensors)
    for name, parts in groups.items():
        cls = registry.detect(parts)
        algo = cls.algo if cls else "?"
        ds = parts.get("dora_scale")
        dora_out = ds is not None and not (ds.dim() >= 2 and ds.shape[0] == 1 and ds.shape[1] > 1)
        if ds is not None and (dora_out or algo != "lora"):
            needs_base[name] = "output-axis DoRA" if dora_out else f"DoRA on {algo} (InvokeAI rejects it)"
        elif algo == "lokr" and "lokr_t2" in parts:
            out.update({f"{name}.{k}": v for k, v in _lokr_without_tucker(parts).items()})
            notes.append(f"{name}: LoKr Tucker rebuilt as a full lokr_w2 (exact)")
        elif algo in ("diag-oft", "boft"):
            if "rescale" in parts and algo == "diag-oft":
                needs_base[name] = "diag-OFT rescale (ComfyUI ignores it)"
                continue
            fixed = dict(parts)
            constraint = float(parts["alpha"].float()) if "alpha" in parts else 0.0
            if constraint > 0:
                fixed["oft_blocks"] = _fold_constraint(parts["oft_blocks"], constraint, name, tensors)
                fixed["alpha"] = torch.tensor(0.0)
                log.warning("lyco convert: %s: OFT constraint folded into the blocks (exact at the trained values; "
                            "further training without the constraint behaves differently)", name)
                notes.append(f"{name}: OFT constraint {constraint} folded")
            out.update({f"{name}.{k}": v for k, v in fixed.items()})
        elif algo in ("glora", "ia3"):
            needs_base[name] = f"{algo} (not loaded by every UI)"
        else:
            out.update({f"{name}.{k}": v for k, v in parts.items()})
    if needs_base:
        if base_roots is None:
            raise FileFormatError("these modules need the base model to be rewritten exactly (pass --base): "
                                  + "; ".join(f"{n}: {why}" for n, why in list(needs_base.items())[:8]))
        out.update(rewrite_from_base(tensors, needs_base, base_roots, dora_rank or None, notes, source="ui-safe"))
    return out, notes


def _lokr_without_tucker(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    t2, a, b = parts["lokr_t2"].float(), parts["lokr_w2_a"].float(), parts["lokr_w2_b"].float()
    r = t2.shape[0]
    w2 = torch.einsum("pqk,pi,qj->ijk", t2.reshape(r, r, -1), a, b).reshape(a.shape[1], b.shape[1], *t2.shape[2:])
    out = {k: v for k, v in parts.items() if k not in ("lokr_t2", "lokr_w2_a", "lokr_w2_b")}
    out["lokr_w2"] = w2
    if "lokr_w1" in parts:  # both factors full now: loaders use scale 1, so fold alpha/r into W1
        alpha = float(parts["alpha"].float()) if "alpha" in parts and float(parts["alpha"]) else r
        out["lokr_w1"] = parts["lokr_w1"].float() * (alpha / r)
        out["alpha"] = torch.tensor(float(r))
    return out


def _fold_constraint(blocks: torch.Tensor, constraint: float, name: str, tensors: dict) -> torch.Tensor:
    """Unconstrained blocks giving the same rotations: A' = Q'/2 with Q' the COFT-scaled skew matrix."""
    n_out = blocks.shape[-3] * blocks.shape[-1] if blocks.dim() == 3 else blocks.shape[1] * blocks.shape[2]
    tau = constraint * n_out
    q = blocks.float() - blocks.float().transpose(-1, -2)
    norm = float(q.norm()) + 1e-8
    if norm > tau:
        q = q * (tau / norm)
    return q / 2


# ---------------------------------------------------------------------------------------------------- CLI
def _roots_for(base: str | None) -> list[Root] | None:
    if not base:
        return None
    return sd_roots(load_pipeline(base, tokenizer=False))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="kohya .safetensors file, PEFT adapter folder, or diffusers-format file")
    ap.add_argument("-o", "--output", required=True,
                    help="the converted file (.safetensors), or a folder for --to peft")
    ap.add_argument("--to", required=True, choices=("kohya", "peft", "diffusers", "ui-safe"),
                    help="target format (see above)")
    ap.add_argument("--base", help="base model (needed to map names to module paths, and for exact ui-safe rewrites)")
    add_option(ap, "--dora-rank", type=int,
               help="ui-safe: approximate output-axis DoRA by a LoRA of this rank instead of a full diff")
    ap.add_argument("--for", dest="client", help="ui-safe: rewrite for one client instead of every UI (e.g. "
                    "lycoris-lora, ComfyUI, InvokeAI; see docs/compatibility.md)")
    add_common(ap, unmatched=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    check_output(a.output, [a.input, a.base], overwrite=a.overwrite, folder=a.to == "peft",
                 suggest=Path(a.input).with_suffix(".safetensors").name)
    if a.dora_rank is not None and a.dora_rank < 1:
        raise ConfigError(f"--dora-rank {a.dora_rank}: must be at least 1")
    if a.client and a.to != "ui-safe":
        raise ConfigError("--for goes with --to ui-safe")
    roots = _roots_for(a.base)
    if a.to in ("peft", "diffusers", "kohya") and roots is None:
        raise ConfigError(f"--to {a.to} needs --base (module names map to module paths through the model)")
    if a.to == "kohya":
        meta: dict[str, str] = {}
        src = read_peft(a.input, meta) if Path(a.input).is_dir() else _diffusers_parts(a.input, meta)
        assert roots is not None  # checked above
        out = peft_to_kohya(src, roots)
        _write_kohya(a.output, out, meta, keep_config=True)
    else:
        tensors, meta = read_file(a.input)
        if a.to == "peft":
            assert roots is not None  # checked above
            converted = kohya_to_peft(tensors, roots)
            with staged_folder(a.output) as tmp:
                write_peft(tmp, converted, meta)
        elif a.to == "diffusers":
            assert roots is not None  # checked above
            write_file(a.output, kohya_to_diffusers(tensors, roots), carried_metadata(meta))
        else:
            out, notes = (rewrite_for(tensors, a.client, roots, a.dora_rank) if a.client
                          else ui_safe(tensors, roots, a.dora_rank))
            for n in notes:
                print(n)
            _write_kohya(a.output, out, meta)
    print(f"wrote {a.output}")
    return 0


def _diffusers_parts(path: str, metadata: dict[str, str] | None = None,
                     ) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    tensors, meta = read_file(path)
    if metadata is not None:
        metadata.update(restored_metadata(meta))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        d, _, rest = k.partition(".")
        parts.setdefault(d, {})[rest] = v
    return {d: (sd, {"peft_type": "LORA", "lora_alpha": None, "alpha_pattern": {
        key[: -len(".lora_A.weight")]: float(v.shape[0]) for key, v in sd.items() if key.endswith(".lora_A.weight")}})
        for d, sd in parts.items()}


def _write_kohya(path: str, tensors: dict[str, torch.Tensor], meta: dict[str, str], keep_config: bool = False) -> None:
    """Write kohya tensors with the given metadata (hashes recomputed; ``lyco_config`` only when the modules are
    the ones it describes, i.e. not after ui-safe rewrites)."""
    meta = {k: v for k, v in meta.items() if not k.startswith("sshs_") and (keep_config or k != "lyco_config")}
    cast = {k: (v.float() if k.endswith(".alpha") else v).contiguous() for k, v in tensors.items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(cast, meta)
    write_file(path, cast, meta)
