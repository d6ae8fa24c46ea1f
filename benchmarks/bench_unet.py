"""One training step of a whole Stable Diffusion 1.5 model: lyco vs lycoris-lora 4.1.3 vs PEFT vs the frozen model.

The real SD1.5 UNet config and its CLIP ViT-L/14 text encoder config with random weights (nothing is downloaded),
batch 1, the paper's default adapters on the ``attn-mlp`` preset (UNet transformer blocks + text-encoder
attention/MLP; every implementation adapts the same layers, the counts are printed):

    LoRA dim 8 / alpha 4, LoHa dim 4 / alpha 2, LoKr factor 8 full (dim 10000, alpha 1), native fine-tuning (Full)

A step is text encoder + UNet forward, MSE loss, backward, AdamW step.  Every contender of an algorithm is timed
round-robin in one process (medians); the frozen model (forward + backward to its inputs, no optimizer) is in every
group.  Memory: the adapter state (trainable parameters, gradients, optimizer state) plus the step's transient
peak above what is resident (RSS on CPU, max_memory_allocated on CUDA).  Then the cost as the work grows: lyco
LoRA at ranks 4 to 64, and the latent side doubled (4x the UNet tokens).

    python benchmarks/bench_unet.py --quick                  # latent 16x16, 3 reps (2 CPU cores: an hour or more)
    python benchmarks/bench_unet.py                          # latent 32x32, 5 reps
    python benchmarks/bench_unet.py --device cuda            # latent 64x64, bf16 autocast, fp32 adapter weights

A Markdown table with the machine description goes to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import common

import lyco
import lyco.sd

for _name in ("lyco", "LyCORIS", "lycoris", "diffusers", "transformers", "peft"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class Algo:
    lyco: dict
    lycoris: tuple  # (kwargs, dim, alpha)
    peft: tuple | None = None  # (config class, kwargs)


ALGOS = {  # the paper's defaults (Sec. 4)
    "lora": Algo(dict(algo="lora", dim=8, alpha=4), (dict(algo="lora"), 8, 4), ("LoraConfig", dict(r=8, lora_alpha=4))),
    "loha": Algo(dict(algo="loha", dim=4, alpha=2), (dict(algo="loha"), 4, 2), ("LoHaConfig", dict(r=4, alpha=2))),
    "lokr": Algo(dict(algo="lokr", dim=10000, alpha=1, factor=8), (dict(algo="lokr", factor=8), 10000, 1),
                 ("LoKrConfig", dict(r=10000, alpha=1, decompose_factor=8))),
    "full": Algo(dict(algo="full"), (dict(algo="full"), 1, 1)),
}
UNET_CONFIG = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                   attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
TE_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
# lycoris-lora's attn-mlp preset plus the two time-embedding Linears lyco's attn-mlp adapts too: the same layers
LYCORIS_PRESET = """enable_conv = false
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


# ----------------------------------------------------------------------------------------------- models
@contextlib.contextmanager
def _no_random_init():
    """Skip the modules' random initialisers while building (860M parameters); :func:`_init` fills them after."""
    names = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


@torch.no_grad()
def _init(model: nn.Module, gen: torch.Generator) -> None:
    """Weights N(0, 1/fan_in), norms 1/0, other vectors 0: random but with sane activations."""
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif p.dim() >= 2:
                fan_in = p[0].numel() if not isinstance(mod, nn.Embedding) else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                p.zero_()


def build_base(device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    gen = torch.Generator().manual_seed(0)
    with _no_random_init():
        unet = UNet2DConditionModel(**UNET_CONFIG)
        te = CLIPTextModel(CLIPTextConfig(**TE_CONFIG))
    for m in (unet, te):
        _init(m, gen)
        m.requires_grad_(False)
        m.to(device=device, dtype=dtype)
    return te, unet


def share(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``model`` (no extra weight memory)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def attach_lyco(te, unet, opts: dict):
    net = lyco.sd.attach(SimpleNamespace(unet=unet, text_encoder=te), lyco.AdapterConfig(**opts))
    return net, len(net.adapters)


def attach_lycoris(te, unet, spec: tuple, bypass: bool, preset: str):
    from lycoris.kohya import create_network
    kw, dim, alpha = spec
    net = create_network(1.0, dim, float(alpha), None, te, unet, preset=preset, bypass_mode=bypass, **kw)
    net.apply_to(te, unet, True, True)
    device = next(unet.parameters()).device
    net.to(device)
    return net, len(net.text_encoder_loras) + len(net.unet_loras)


def attach_peft(te, unet, spec: tuple, names: dict[str, list[str]]):
    import peft
    cls_name, kw = spec
    n = 0
    for key, model in (("te", te), ("unet", unet)):
        cfg = getattr(peft, cls_name)(target_modules=names[key], **kw)
        peft.inject_adapter_in_model(cfg, model)
        n += sum(1 for m in model.modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer))
    return None, n


def adapted_names(net) -> dict[str, list[str]]:
    """Module paths lyco adapted, per side (to give PEFT exactly the same layers)."""
    out: dict[str, list[str]] = {"te": [], "unet": []}
    for name in net.names():
        site = net.site(name)
        out["te" if site.root.prefix.startswith("lora_te") else "unet"].append(site.path)
    return out


# ----------------------------------------------------------------------------------------------- one step
@dataclass
class Inputs:
    ids: torch.Tensor
    latents: torch.Tensor
    target: torch.Tensor


def make_inputs(latent: int, device: str, dtype: torch.dtype) -> Inputs:
    g = torch.Generator().manual_seed(1)
    return Inputs(ids=torch.randint(0, TE_CONFIG["vocab_size"], (1, 77), generator=g).to(device),
                  latents=torch.randn(1, 4, latent, latent, generator=g).to(device, dtype),
                  target=torch.randn(1, 4, latent, latent, generator=g).to(device))


@dataclass
class Contender:
    """One model under test: the text encoder and UNet (with or without adapters) and its optimizer."""
    te: nn.Module
    unet: nn.Module
    net: nn.Module | None = None  # a network object holding the adapter parameters outside the models (lycoris)
    n_adapted: int = 0
    amp: torch.dtype | None = None
    params: list[torch.Tensor] = field(default_factory=list)
    opt: torch.optim.Optimizer | None = None

    def __post_init__(self):
        mods = [self.te, self.unet] + ([self.net] if self.net is not None else [])
        params = {id(p): p for p in itertools.chain(*(m.parameters() for m in mods)) if p.requires_grad}
        self.params = list(params.values())
        if self.params:
            self.opt = torch.optim.AdamW(self.params, lr=1e-4)

    def step(self, inp: Inputs) -> None:
        lat = inp.latents.detach().requires_grad_(not self.params)
        ctx = torch.autocast(lat.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with ctx:
            h = self.te(inp.ids)[0]
            out = self.unet(lat, 500, encoder_hidden_states=h).sample
        F.mse_loss(out.float(), inp.target).backward()
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Trainable parameters + their gradients + optimizer state."""
        n = 2 * sum(p.numel() * p.element_size() for p in self.params)
        if self.opt is not None:
            for st in self.opt.state.values():
                n += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
        return n


def frozen(te, unet, amp) -> Contender:
    """The model alone; its step runs backward to the latents and to the text encoder's token embeddings, so that
    it goes through both models like a training step (without any weight gradient)."""
    t = share(te)
    emb = next(m for m in t.modules() if type(m).__name__ == "CLIPTextEmbeddings")
    emb.register_forward_hook(lambda mod, args, out: out.detach().requires_grad_(True))
    return Contender(t, share(unet), amp=amp)


def build_group(algo: str, te, unet, amp, preset_file: str, only: set[str]) -> tuple[dict[str, Contender], dict]:
    spec = ALGOS[algo]
    out: dict[str, Contender] = {}
    errors: dict[str, str] = {}
    lyco_net = None
    # PEFT adapts the layers lyco adapted: it reads lyco_net, which the first contender sets
    makers = (("lyco", lambda t, u: attach_lyco(t, u, spec.lyco)),
              ("lycoris default", lambda t, u: attach_lycoris(t, u, spec.lycoris, False, preset_file)),
              ("lycoris bypass", lambda t, u: attach_lycoris(t, u, spec.lycoris, True, preset_file)),
              ("PEFT", lambda t, u: attach_peft(t, u, spec.peft, adapted_names(lyco_net))))
    for name, make in makers:
        if name not in only or (name == "PEFT" and (spec.peft is None or lyco_net is None)):
            continue
        t, u = share(te), share(unet)
        try:
            net, n = make(t, u)
        except Exception as exc:  # noqa: BLE001 - a reference may not support a case: report it, time the rest
            errors[name] = f"{type(exc).__name__}: {str(exc)[:80]}"
            continue
        if name == "lyco":
            lyco_net = net
        out[name] = Contender(t, u, net=net if name.startswith("lycoris") else None, n_adapted=n, amp=amp)
    return out, errors


# ----------------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Timing:
    reps: int
    warmup: int
    device: str
    clock: str

    def run(self, steps: dict) -> dict[str, list[float]]:
        return common.round_robin(steps, self.reps, self.warmup, self.device, self.clock, log=print)


def measure(contenders: dict[str, Contender], inp: Inputs, timing: Timing):
    steps = {k: (lambda c=c: c.step(inp)) for k, c in contenders.items()}
    times = timing.run(steps)
    res = {}
    for k, c in contenders.items():
        peak = common.transient_peak(steps[k], timing.device)
        res[k] = dict(time=common.median(times[k]), state=c.state_bytes(), peak=peak, n=c.n_adapted)
    return res


def _mb(b: int) -> str:
    return f"{b / 2**20:,.0f}"


def algo_table(results: dict[str, dict], errors: dict[str, dict]) -> list[str]:
    lines = ["| algorithm | contender | adapted layers | step (s) | / frozen | lyco / this | adapter state MB | "
             "step peak MB |", "|---|---|---|---|---|---|---|---|"]
    for algo, res in results.items():
        fz, ly = res["frozen"]["time"], res.get("lyco", {}).get("time")
        for k, r in res.items():
            lines.append(f"| {algo} | {k} | {r['n'] if k != 'frozen' else '—'} | {r['time']:.2f} | "
                         f"{r['time'] / fz:.2f} | {ly / r['time']:.2f} | {_mb(r['state'])} | {_mb(r['peak'])} |"
                         if ly else f"| {algo} | {k} | — | {r['time']:.2f} | {r['time'] / fz:.2f} | — | — | — |")
        for k, e in errors.get(algo, {}).items():
            lines.append(f"| {algo} | {k} | — | {e} | | | | |")
    return lines


def targets(results: dict[str, dict]) -> list[str]:
    lines = ["", "## Targets", ""]
    refs = ("lycoris default", "lycoris bypass", "PEFT")
    misses = []
    for algo, res in results.items():
        best = min((res[k]["time"] for k in refs if k in res), default=None)
        if best and "lyco" in res and res["lyco"]["time"] > best:
            misses.append(f"{algo}: {res['lyco']['time'] / best:.2f}")
    lines.append(f"- rows where lyco is slower than the best reference: {len(misses)}"
                 + (f" ({', '.join(misses)})" if misses else "") + " (target 0)")
    g = common.geo_mean([r["lyco"]["time"] / r["lycoris default"]["time"] for r in results.values()
                         if "lyco" in r and "lycoris default" in r])
    lines.append(f"- geometric mean lyco / lycoris-lora default mode: **{g:.2f}** (target ≤ 0.6)")
    for algo, r in results.items():
        if "lyco" in r:
            lim = 1.5 if algo == "loha" else 1.3
            lines.append(f"- {algo}: lyco / frozen **{r['lyco']['time'] / r['frozen']['time']:.2f}** (target ≤ {lim})")
    return lines


def scaling(te, unet, inp_small: Inputs, inp_big: Inputs, ranks, timing: Timing, amp) -> list[str]:
    """lyco LoRA step / frozen step as the rank grows, and the step time as the UNet's tokens grow 4x."""
    lines = ["", "## Cost as the work grows", ""]
    group = {"frozen": frozen(te, unet, amp)}
    for r in ranks:
        t, u = share(te), share(unet)
        attach_lyco(t, u, dict(algo="lora", dim=r, alpha=r / 2))
        group[f"lyco LoRA r{r}"] = Contender(t, u, amp=amp)
    print("scaling: ranks")
    times = timing.run({k: (lambda c=c: c.step(inp_small)) for k, c in group.items()})
    fz = common.median(times["frozen"])
    lines += ["| contender | step (s) | / frozen | adapter parameters |", "|---|---|---|---|"]
    for k, c in group.items():
        n = sum(p.numel() for p in c.params)
        lines.append(f"| {k} | {common.median(times[k]):.2f} | {common.median(times[k]) / fz:.3f} | {n:,} |")
    r8 = group.get("lyco LoRA r8") or list(group.values())[1]
    side = (inp_small.latents.shape[-1], inp_big.latents.shape[-1])
    print(f"scaling: latent {side[0]} -> {side[1]}")
    steps = {}
    for label, inp in ((f"{side[0]}x{side[0]}", inp_small), (f"{side[1]}x{side[1]}", inp_big)):
        steps[f"frozen @ {label}"] = lambda inp=inp: group["frozen"].step(inp)
        steps[f"lyco LoRA @ {label}"] = lambda inp=inp: r8.step(inp)
    times = timing.run(steps)
    med = {k: common.median(v) for k, v in times.items()}
    a, b = (f"{s}x{s}" for s in side)
    lines += ["", f"UNet tokens ×4 (latent {a} → {b}; the text encoder's 77 tokens unchanged):", "",
              "| contender | step @ " + a + " (s) | step @ " + b + " (s) | ratio (4 = linear) |", "|---|---|---|---|"]
    for who in ("frozen", "lyco LoRA"):
        lines.append(f"| {who} | {med[f'{who} @ {a}']:.2f} | {med[f'{who} @ {b}']:.2f} | "
                     f"{med[f'{who} @ {b}'] / med[f'{who} @ {a}']:.2f} |")
    lines.append(f"| lyco / frozen | {med[f'lyco LoRA @ {a}'] / med[f'frozen @ {a}']:.3f} | "
                 f"{med[f'lyco LoRA @ {b}'] / med[f'frozen @ {b}']:.3f} | |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="latent 16x16, 3 reps, ranks 4/16/64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="cuda: bf16 (default) or fp16 autocast; cpu: fp32")
    ap.add_argument("--latent", type=int, default=None, help="latent side (default 16 quick, 32 cpu, 64 cuda)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--contenders", default="lyco,lycoris default,lycoris bypass,PEFT")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--clock", choices=sorted(common.CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (steadier on a machine shared with other jobs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="", help="a line for the result file (e.g. that the machine was shared)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = args.device
    if not common.cuda_ok(device):
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    latent = args.latent or (16 if args.quick else 64 if device == "cuda" else 32)
    reps = args.reps or (3 if args.quick else 5)
    amp = None
    if device == "cuda":
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype or "bf16"]
    timing = Timing(reps, args.warmup, device, args.clock)
    print(common.machine(device))
    print(f"building the SD1.5 UNet + CLIP-L text encoder (random weights), latent {latent}x{latent}")
    te, unet = build_base(device, torch.float32)
    inp = make_inputs(latent, device, torch.float32)
    results: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        preset_file = str(Path(tmp) / "attn-mlp-lyco.toml")
        Path(preset_file).write_text(LYCORIS_PRESET)
        for algo in args.algos.split(","):
            print(f"== {algo}")
            group, errors[algo] = build_group(algo, te, unet, amp, preset_file, set(args.contenders.split(",")))
            group = {"frozen": frozen(te, unet, amp), **group}
            print("adapted layers: " + ", ".join(f"{k} {c.n_adapted}" for k, c in group.items() if k != "frozen"))
            results[algo] = measure(group, inp, timing)
            for k, r in results[algo].items():
                print(f"  {k:<16} {r['time']:8.2f} s  x{r['time'] / results[algo]['frozen']['time']:.3f} frozen  "
                      f"state {_mb(r['state'])} MB  peak {_mb(r['peak'])} MB", flush=True)
            del group
    note = (f"Latent {latent}×{latent} (batch 1, 77 text tokens), {reps} timed reps after {args.warmup} warm-up, "
            f"clock: {args.clock}. " + ("bf16/fp16 autocast, fp32 adapter weights. " if amp else "fp32. ")
            + "Step = text encoder + UNet forward, MSE loss, backward, AdamW step (frozen: forward + backward to the "
            "inputs, no optimizer). adapter state = trainable parameters + gradients + AdamW state; step peak = "
            "transient memory of one step above what is resident (RSS on CPU, max_memory_allocated on CUDA).")
    lines = common.header(f"Whole-model training step: SD1.5 UNet + CLIP-L text encoder ({device}"
                          f"{', quick' if args.quick else ''})", device,
                          (args.note + "\n\n" if args.note else "") + note)
    lines += algo_table(results, errors) + targets(results)
    if not args.no_scaling:
        big = make_inputs(latent * 2 if not args.quick else latent, device, torch.float32)
        small = inp if not args.quick else make_inputs(latent // 2, device, torch.float32)
        ranks = (4, 16, 64) if args.quick else (4, 8, 16, 32, 64)
        lines += scaling(te, unet, small, big, ranks, timing, amp)
    return common.publish(f"unet-{device}{'-quick' if args.quick else ''}", lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
