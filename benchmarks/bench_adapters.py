"""Training-step speed of adapter layers: lyco vs lycoris-lora 4.1.3 (default and bypass mode) vs PEFT vs the frozen
base.

One process, one run: every row times forward + backward of one SD-shaped layer (frozen base weight, input that
requires grad as inside a network) and reports medians of repeated runs, ratios, and the bytes autograd saves for
backward (a device-independent proxy of training memory; on CUDA the peak allocated memory as well).

    python benchmarks/bench_adapters.py --quick            # ~2 minutes on 2 CPU cores
    python benchmarks/bench_adapters.py                    # the full grid
    python benchmarks/bench_adapters.py --device cuda      # on a GPU

A Markdown table with the machine description goes to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import lyco

sys.path.insert(0, str(Path(__file__).parent))
import common

logging.getLogger("lyco").setLevel(logging.ERROR)
logging.getLogger("LyCORIS").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Shape:
    id: str
    make: object
    x: tuple
    quick: bool = False


SHAPES = [
    Shape("linear-320", lambda: nn.Linear(320, 320), (1, 4096, 320)),
    Shape("linear-640", lambda: nn.Linear(640, 640), (1, 1024, 640)),
    Shape("linear-1280", lambda: nn.Linear(1280, 1280), (1, 2048, 1280), quick=True),
    Shape("kv-768-320", lambda: nn.Linear(768, 320), (2, 77 * 8, 768)),
    Shape("ff-1280-10240", lambda: nn.Linear(1280, 10240), (1, 1024, 1280)),
    Shape("ff-5120-1280", lambda: nn.Linear(5120, 1280), (1, 1024, 5120)),
    Shape("conv3-320x64", lambda: nn.Conv2d(320, 320, 3, padding=1), (1, 320, 64, 64)),
    Shape("conv3-1280x16", lambda: nn.Conv2d(1280, 1280, 3, padding=1), (1, 1280, 16, 16), quick=True),
    Shape("conv1-640x32", lambda: nn.Conv2d(640, 640, 1), (1, 640, 32, 32)),
]

# algorithm id -> (lyco options, lycoris kwargs, peft (config class name, kwargs) or None)
def algos(rank: int) -> dict:
    """id -> (lyco options, lycoris (algo kwargs, dim, alpha), PEFT (config class, kwargs) or None)."""
    r = rank
    return {
        f"lora-r{r}": (dict(algo="lora", dim=r, alpha=r), (dict(algo="lora"), r, r),
                       ("LoraConfig", dict(r=r, lora_alpha=r))),
        f"locon-tucker-r{r}": (dict(algo="lora", dim=r, alpha=r, use_tucker=True),
                               (dict(algo="lora", use_tucker=True), r, r), None),
        f"loha-r{r}": (dict(algo="loha", dim=r, alpha=r), (dict(algo="loha"), r, r),
                       ("LoHaConfig", dict(r=r, alpha=r))),
        "lokr-f8-full": (dict(algo="lokr", dim=10000, factor=8), (dict(algo="lokr", factor=8), 10000, 1), None),
        f"lokr-f-1-r{r}": (dict(algo="lokr", dim=r, alpha=r, factor=-1), (dict(algo="lokr", factor=-1), r, r),
                           ("LoKrConfig", dict(r=r, alpha=r, decompose_factor=-1))),
        f"lokr-f8-both-r{r}": (dict(algo="lokr", dim=r, alpha=r, factor=8, decompose_both=True),
                               (dict(algo="lokr", factor=8, decompose_both=True), r, r), None),
        f"dora-lora-r{r}": (dict(algo="lora", dim=r, alpha=r, dora_wd=True, wd_on_output=True),
                            (dict(algo="lora", dora_wd=True), r, r),
                            ("LoraConfig", dict(r=r, lora_alpha=r, use_dora=True))),
        f"dora-lokr-r{r}": (dict(algo="lokr", dim=r, alpha=r, factor=-1, dora_wd=True, wd_on_output=True),
                            (dict(algo="lokr", factor=-1, dora_wd=True), r, r), None),
        "diag-oft-b32": (dict(algo="diag-oft", dim=32), (dict(algo="diag-oft"), 32, 0), None),
        "boft-b16": (dict(algo="boft", dim=16), (dict(algo="boft"), 16, 0), None),
        "ia3": (dict(algo="ia3"), (dict(algo="ia3"), 1, 1), ("IA3Config", dict(feedforward_modules=[]))),
        "full": (dict(algo="full"), (dict(algo="full"), 1, 1), None),
    }


QUICK_ALGOS = ("lora-r8", "loha-r8", "lokr-f8-full", "lokr-f-1-r8", "dora-lora-r8", "diag-oft-b32")


def _randomize(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.02)


def saved_bytes(fn) -> int:
    """Bytes of tensors autograd keeps for backward during ``fn`` (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except Exception:  # noqa: BLE001
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _step_fn(model: nn.Module, x: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        xi = x.detach().requires_grad_(True)
        y = model(xi)
        y.float().square().mean().backward()
        for p in params:
            p.grad = None

    return step


def time_steps(models: dict[str, nn.Module], x: torch.Tensor, reps: int, warmup: int,
               device: str, clock=time.perf_counter) -> dict[str, tuple[float, int, int] | str]:
    """Median step time, saved-for-backward bytes and (CUDA) peak memory per model (or the name of the exception
    a model raised).  The models are timed round-robin — rep k of every model before rep k+1 of any, the order
    rotated every rep — so drift of a shared machine (frequency, other jobs) hits all of them alike and the
    ratios stay fair."""
    steps = {name: _step_fn(m, x) for name, m in models.items()}
    peaks, failed = {}, {}
    for name, step in list(steps.items()):
        try:
            for _ in range(warmup):
                step()
        except Exception as exc:  # noqa: BLE001 - the reference crashes on some rows; report it, time the rest
            failed[name] = type(exc).__name__
            del steps[name]
            continue
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # order rotated every rep
            step = steps[name]
            t0 = clock()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(clock() - t0)

    def fwd_of(m):
        return lambda: m(x.detach().requires_grad_(True))

    out: dict = {name: (statistics.median(times[name]), saved_bytes(fwd_of(models[name])), peaks[name])
                 for name in steps}
    return {**out, **failed}


def build_lyco(layer, opts):
    m = nn.Sequential(copy.deepcopy(layer))
    m.requires_grad_(False)
    net = lyco.attach(m, **opts)
    _randomize(net.parameters())
    return m


def build_lycoris(layer, spec, bypass):
    from lycoris import LycorisNetwork, create_lycoris
    kw, dim, alpha = spec
    m = nn.Sequential(copy.deepcopy(layer))
    m.requires_grad_(False)
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv2d"], "target_name": [], "module_algo_map": {},
                                 "name_algo_map": {}, "exclude_name": [], "enable_conv": True})
    net = create_lycoris(m, 1.0, linear_dim=dim, linear_alpha=float(alpha), conv_dim=dim, conv_alpha=float(alpha),
                         bypass_mode=bypass, **kw)
    net.apply_to()
    _randomize(net.parameters())
    return m


def build_peft(layer, spec):
    import peft
    name, kw = spec
    cls = getattr(peft, name)
    m = nn.Sequential(copy.deepcopy(layer))
    cfg = cls(target_modules=["0"], **kw)
    m = peft.inject_adapter_in_model(cfg, m)
    for n, p in m.named_parameters():
        p.requires_grad_(".0.base_layer" not in n and not n.endswith("0.weight") and not n.endswith("0.bias"))
    _randomize([p for p in m.parameters() if p.requires_grad])
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~2 minute subset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ranks", default="8", help="comma-separated ranks (full grid: 8,16,32)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--shapes", default=None, help="comma-separated shape ids")
    ap.add_argument("--algos", default=None, help="comma-separated algorithm ids")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (steadier on a machine shared with other jobs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--note", default="", help="a line for the result file (e.g. that the machine was shared)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available here; nothing to benchmark (skipped).")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ranks = [int(r) for r in args.ranks.split(",")]
    reps = args.reps or (5 if args.quick else 9)
    warmup = 1 if args.quick else 2
    shapes = [s for s in SHAPES if (not args.quick or s.quick)]
    if args.shapes:
        shapes = [s for s in SHAPES if s.id in args.shapes.split(",")]
    rows = []
    print(common.machine(device))
    for rank in ranks:
        table = algos(rank)
        names = [a for a in table if (not args.quick or a in QUICK_ALGOS)]
        if args.algos:
            names = [a for a in table if a in args.algos.split(",")]
        for shape in shapes:
            torch.manual_seed(0)
            layer = shape.make().to(device)
            layer.requires_grad_(False)
            x = torch.randn(*shape.x, device=device)
            base_model = nn.Sequential(copy.deepcopy(layer))
            for name in names:
                lyco_opts, lycoris_kw, peft_spec = table[name]
                is_conv = isinstance(layer, nn.Conv2d)
                if name.startswith(("ia3",)) and is_conv:
                    continue
                row = {"rank": rank, "shape": shape.id, "algo": name}
                models = {"base": base_model}
                try:
                    models["lyco"] = build_lyco(layer, lyco_opts).to(device)
                except lyco.LycoError as exc:
                    row["lyco_err"] = str(exc)[:60]
                for mode, bypass in (("lycoris", False), ("lycoris_bypass", True)):
                    try:
                        models[mode] = build_lycoris(layer, lycoris_kw, bypass).to(device)
                    except Exception as exc:  # noqa: BLE001 - the reference may crash on some rows
                        row[mode + "_err"] = f"{type(exc).__name__}"
                if peft_spec is not None and not (is_conv and peft_spec[0] == "LoKrConfig"):
                    try:
                        models["peft"] = build_peft(layer, peft_spec).to(device)
                    except Exception as exc:  # noqa: BLE001
                        row["peft_err"] = f"{type(exc).__name__}"
                for mode, res in time_steps(models, x, reps, warmup, device, clock).items():
                    if isinstance(res, str):
                        row[mode + "_err"] = res
                    else:
                        row[mode], row[mode + "_saved"], row[mode + "_peak"] = res
                rows.append(row)
                print(_fmt_row(row), flush=True)
    md = report(rows, device, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    path = out / f"adapters-{device}-{'quick-' if args.quick else ''}{stamp}.md"
    path.write_text(md)
    print(f"\nwrote {path}")
    return 0


def _ms(v):
    return f"{v * 1e3:.1f}" if isinstance(v, float) else "—"


def _fmt_row(r) -> str:
    def ratio(a, b):
        return f"{r[a] / r[b]:.2f}" if a in r and b in r else "—"
    best = _best_ref(r)
    vs_best = f"{r['lyco'] / best:.2f}" if best and "lyco" in r else "—"
    return (f"{r['shape']:<15} {r['algo']:<18} base {_ms(r['base'])} ms | lyco {_ms(r.get('lyco'))} | lycoris "
            f"{_ms(r.get('lycoris'))} / bypass {_ms(r.get('lycoris_bypass'))} | peft {_ms(r.get('peft'))} | "
            f"lyco/lycoris {ratio('lyco', 'lycoris')} | lyco/best-correct {vs_best} | "
            f"lyco/base {ratio('lyco', 'base')}")


def _best_ref(r) -> float | None:
    """lycoris-lora's best *correct* mode.  Its bypass silently drops DoRA, rotates the biased output for diag-OFT
    (so bypass != merge whenever the layer has a bias) and contracts the batch axis for BOFT: for those rows only
    its default (rebuild) mode is correct."""
    c = [r.get("lycoris")]
    if not r["algo"].startswith(("dora", "diag-oft", "boft")):
        c.append(r.get("lycoris_bypass"))
    c = [v for v in c if isinstance(v, float)]
    return min(c) if c else None


def _in_issue17_scope(r) -> bool:
    """The layer paths issue 17 sets targets for: LoKr with a low-rank second block on Linear, LoHa, DoRA."""
    algo, rank = r["algo"], r["rank"]
    if not 8 <= rank <= 16:
        return False
    if algo.startswith(("loha", "dora")):
        return True
    return algo.startswith(("lokr-f-1", "lokr-f8-both")) and not r["shape"].startswith("conv")


def _geo(vals):
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def report(rows, device, args) -> str:
    lines = [f"# Adapter training-step benchmark ({device}{', quick' if args.quick else ''})", "",
             f"Machine: {common.machine(device)}", f"Date: {dt.datetime.now().isoformat(timespec='minutes')}",
             f"Command: `python {' '.join(sys.argv)}`", *([args.note] if args.note else []), "",
             f"Times are medians of a forward+backward step (ms, clock: {args.clock}), every implementation of a row "
             "timed round-robin. `saved` = MB autograd keeps for backward.", "",
             "| shape | algorithm | base | lyco | lycoris default | lycoris bypass | PEFT | lyco/lycoris default | "
             "lyco/lycoris best correct | lyco/base | saved MB lyco / lycoris |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = _best_ref(r)
        sv = (f"{r.get('lyco_saved', 0) / 2**20:.1f} / {r.get('lycoris_saved', 0) / 2**20:.1f}"
              if "lycoris_saved" in r else f"{r.get('lyco_saved', 0) / 2**20:.1f} / —")
        lines.append("| " + " | ".join([
            r["shape"], r["algo"], _ms(r["base"]), _ms(r.get("lyco")) if "lyco" in r else r.get("lyco_err", "—"),
            _ms(r.get("lycoris")) if "lycoris" in r else r.get("lycoris_err", "—"),
            _ms(r.get("lycoris_bypass")) if "lycoris_bypass" in r else r.get("lycoris_bypass_err", "—"),
            _ms(r.get("peft")) if "peft" in r else r.get("peft_err", "—"),
            f"{r['lyco'] / r['lycoris']:.2f}" if "lyco" in r and "lycoris" in r else "—",
            f"{r['lyco'] / best:.2f}" if "lyco" in r and best else "—",
            f"{r['lyco'] / r['base']:.2f}" if "lyco" in r else "—", sv]) + " |")
    core = [r for r in rows if "lyco" in r and "lycoris" in r
            and r["algo"].split("-")[0] in ("lora", "loha", "lokr", "dora", "diag")]
    small_loha = [r for r in rows if "lyco" in r and r["algo"].startswith("loha") and r["rank"] <= 16]
    lines += ["", "## Targets", "",
              f"- geometric mean lyco / lycoris default (LoRA, LoHa, LoKr, DoRA, OFT rows): "
              f"**{_geo([r['lyco'] / r['lycoris'] for r in core]):.2f}** (target ≤ 0.5)",
              "- geometric mean lyco / frozen base: "
              f"**{_geo([r['lyco'] / r['base'] for r in rows if 'lyco' in r]):.2f}** (target ≤ 1.3)",
              f"- LoHa lyco / base (rank ≤ 16): **{_geo([r['lyco'] / r['base'] for r in small_loha]):.2f}** "
              "(target ≤ 1.5)"]
    misses = [r for r in rows if "lyco" in r and _best_ref(r) and r["lyco"] > 1.05 * _best_ref(r)]
    lines.append(f"- rows where lyco > 1.05 × lycoris-lora's best correct mode: {len(misses)}"
                 + ("".join(f"\n  - {r['shape']} {r['algo']}: {r['lyco'] / _best_ref(r):.2f}" for r in misses)))
    scope = [r for r in rows if "lyco" in r and _in_issue17_scope(r)]
    if scope:
        miss_best = [r for r in scope if _best_ref(r) and r["lyco"] > _best_ref(r)]
        miss_base = [r for r in scope if r["lyco"] > 1.25 * r["base"]]
        lines.append(f"- LoKr with a low-rank block on Linear, LoHa and DoRA at rank 8-16 ({len(scope)} rows): "
                     f"{len(scope) - len(miss_best)} at ≤ 1.0× lycoris-lora's best correct mode, "
                     f"{len(scope) - len(miss_base)} at ≤ 1.25× the frozen base"
                     + "".join(f"\n  - {r['shape']} {r['algo']}: {r['lyco'] / _best_ref(r):.2f}× best correct, "
                               f"{r['lyco'] / r['base']:.2f}× base"
                               for r in {id(r): r for r in miss_best + miss_base}.values()))
    mem = [r for r in rows if "lyco_saved" in r and "lycoris_saved" in r
           and r["lyco_saved"] > r["lycoris_saved"] * 1.01]
    lines.append(f"- rows where lyco saves more for backward than lycoris default: {len(mem)}"
                 + ("".join(f"\n  - {r['shape']} {r['algo']}: {r['lyco_saved'] / 2**20:.1f} vs "
                            f"{r['lycoris_saved'] / 2**20:.1f} MB" for r in mem)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
