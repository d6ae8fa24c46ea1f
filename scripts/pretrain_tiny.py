"""Pretrain ``lyco-tiny`` (the builtin:tiny model) on the micro-world, from scratch, on CPU.

    nice -n 10 python scripts/pretrain_tiny.py --out src/lyco/data/tiny --work /tmp/tiny-work

Stages (each checkpointed in --work, so a rerun resumes):
  1. render --n-images base-world scenes (seeded, 32×32);
  2. train the AutoencoderKL (MSE + KL, one downsample) on random 16×16 crops (it is convolutional; 4× cheaper)
     and set ``scaling_factor`` from the latent std;
  3. encode the images once (posterior mean and std kept; a latent is sampled per step), then fine-tune the
     decoder alone on full 32×32 images (the latents do not change);
  4. train the UNet2DConditionModel and the CLIPTextModel jointly: epsilon prediction, cosine betas, min-SNR-5
     weighting, 10% caption dropout (for classifier-free guidance), AdamW one-cycle, EMA of the weights;
  5. write the diffusers folder (fp16 UNet/text encoder, fp32 VAE) and a sample grid.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from lyco.world import model as M
from lyco.world import render as R
from lyco.world.text import write_tokenizer
from portable_layout import make_portable  # noqa: E402  (scripts/ is on sys.path)


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    # contiguous NCHW: a permuted (channels-last) input makes every conv and GroupNorm ~3x slower on CPU
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def record(work: str, stage: str, seconds: float) -> None:
    """Add a stage's wall time to --work/times.json (accumulates over resumed runs)."""
    path = os.path.join(work, "times.json")
    times = {}
    if os.path.isfile(path):
        with open(path) as f:
            times = json.load(f)
    times[stage] = round(times.get(stage, 0) + seconds)
    with open(path, "w") as f:
        json.dump(times, f, indent=1)


def one_cycle(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.97 + 0.03


def train_vae(args, imgs: np.ndarray, work: str):
    from diffusers import AutoencoderKL
    path = os.path.join(work, "vae")
    if os.path.isfile(os.path.join(path, "config.json")):
        print("vae: reusing", path, flush=True)
        return AutoencoderKL.from_pretrained(path)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**M.vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = np.random.Generator(np.random.PCG64(args.seed + 1))
    t0 = time.time()
    for step in range(args.vae_steps):
        for pg in opt.param_groups:
            pg["lr"] = args.vae_lr * one_cycle(step, args.vae_steps, 50)
        x = to_tensor(imgs[g.integers(0, len(imgs), args.vae_batch)])
        if args.vae_crop < x.shape[-1]:  # the VAE is convolutional: train on crops, 4x cheaper at 16 px
            oy, ox = (int(o) * 2 for o in g.integers(0, (x.shape[-1] - args.vae_crop) // 2 + 1, 2))
            x = x[:, :, oy:oy + args.vae_crop, ox:ox + args.vae_crop].contiguous()
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = (rec - x).pow(2).sum(dim=(1, 2, 3)).mean()
        kl = post.kl().mean()  # summed over latent elements, mean over the batch
        loss = mse + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            psnr = 10 * math.log10(4.0 / (mse.item() / x[0].numel()))
            print(f"vae {step:5d} mse/px {mse.item() / x[0].numel():.5f} psnr {psnr:.1f} kl {kl.item():.1f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    vae.save_pretrained(path)
    record(work, "vae", time.time() - t0)
    return vae


@torch.no_grad()
def encode_all(vae, imgs: np.ndarray, work: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    path = os.path.join(work, "latents.pt")
    if os.path.isfile(path):
        d = torch.load(path)
        return d["mean"], d["std"], d["scale"]
    vae.eval()
    means, stds = [], []
    for i in range(0, len(imgs), 500):
        post = vae.encode(to_tensor(imgs[i:i + 500])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    scale = float(1.0 / sample.std())
    rec = vae.decode(mean[:256]).sample
    psnr = 10 * math.log10(4.0 / float((rec - to_tensor(imgs[:256])).pow(2).mean()))
    print(f"latents: std {sample.std():.3f} -> scaling_factor {scale:.4f}; posterior std mean {std.mean():.4f}; "
          f"decode(mean) psnr {psnr:.1f} dB", flush=True)
    torch.save({"mean": mean, "std": std, "scale": scale}, path)
    return mean, std, scale


def refine_decoder(args, vae, imgs: np.ndarray, lat_mean: torch.Tensor, lat_std: torch.Tensor, work: str):
    """Fine-tune the decoder alone on full-size images from posterior samples (the encoder, hence the latents
    the UNet learns, stay fixed): fixes the borders and colours that crop training leaves soft."""
    from diffusers import AutoencoderKL
    path = os.path.join(work, "vae_refined")
    if os.path.isfile(os.path.join(path, "config.json")):
        print("decoder: reusing", path, flush=True)
        return AutoencoderKL.from_pretrained(path)
    torch.manual_seed(args.seed + 4)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.dec_lr, weight_decay=0.0)
    g = np.random.Generator(np.random.PCG64(args.seed + 5))
    gen = torch.Generator().manual_seed(args.seed + 6)
    vae.train()
    t0 = time.time()
    for step in range(args.dec_steps):
        for pg in opt.param_groups:
            pg["lr"] = args.dec_lr * one_cycle(step, args.dec_steps, 20)
        idx = torch.from_numpy(g.integers(0, len(imgs), args.dec_batch))
        x = to_tensor(imgs[idx.numpy()])
        z = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        rec = vae.decode(z).sample
        mse = (rec - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        mse.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == args.dec_steps - 1:
            print(f"decoder {step:5d} psnr {10 * math.log10(4.0 / mse.item()):.1f} {time.time() - t0:.0f}s", flush=True)
    vae.eval()
    vae.save_pretrained(path)
    record(work, "decoder", time.time() - t0)
    return vae


def center_latents(vae, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Shift the latent space so every channel has mean 0, exactly: the channel means are folded into the
    biases of quant_conv (encoder side) and post_quant_conv (decoder side), so decode(encode(x)) is unchanged.
    Returns the shifted posterior means and the new scaling factor (1 / std of centred samples)."""
    sample = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    mu = sample.mean(dim=(0, 2, 3))
    c = mu.numel()
    with torch.no_grad():
        vae.quant_conv.bias[:c] -= mu                    # moments = (mean, logvar): shift the mean half
        w = vae.post_quant_conv.weight.reshape(vae.post_quant_conv.weight.shape[0], c)
        vae.post_quant_conv.bias += w @ mu               # decoder sees z + mu again
    centred = mean - mu.view(1, c, 1, 1)
    scale = float(1.0 / (sample - mu.view(1, c, 1, 1)).std())
    print(f"latents centred: channel means {[round(v, 3) for v in mu.tolist()]} removed; scaling_factor {scale:.4f}",
          flush=True)
    return centred, scale


def build_text(work: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    tok_dir = os.path.join(work, "tokenizer")
    write_tokenizer(tok_dir)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    cfg = CLIPTextConfig(**M.text_config(len(tok), tok.bos_token_id, tok.eos_token_id))
    return tok, CLIPTextModel(cfg)


def train_unet(args, scenes, lat_mean, lat_std, scale, work):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    torch.manual_seed(args.seed + 2)
    tok, te = build_text(work)
    unet = UNet2DConditionModel(**M.unet_config(te.config.hidden_size))
    sched = DDPMScheduler(**{k: v for k, v in M.scheduler_config().items() if k not in ("set_alpha_to_one",)})
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    if args.init_from:
        from diffusers import UNet2DConditionModel as _U
        from transformers import CLIPTextModel as _T
        unet.load_state_dict(_U.from_pretrained(os.path.join(args.init_from, "unet")).float().state_dict())
        te.load_state_dict(_T.from_pretrained(os.path.join(args.init_from, "text_encoder")).float().state_dict())
        print("unet/text encoder initialised from", args.init_from, flush=True)
    dev = torch.device(args.device)
    unet.to(dev)
    te.to(dev)
    snr = snr.to(dev)
    sched.alphas_cumprod = sched.alphas_cumprod.to(dev)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    ckpt = os.path.join(work, "unet_ckpt.pt")
    start = 0
    if os.path.isfile(ckpt):
        d = torch.load(ckpt, map_location=dev)
        unet.load_state_dict(d["unet"]); te.load_state_dict(d["te"]); opt.load_state_dict(d["opt"])
        ema = d["ema"]; start = d["step"]
        print("unet: resuming at step", start, flush=True)
    print(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, text encoder "
          f"{sum(p.numel() for p in te.parameters()) / 1e6:.2f}M", flush=True)
    t0 = time.time()
    end = min(args.steps, args.stop_at) if args.stop_at else args.steps
    for step in range(start, end):
        g = np.random.Generator(np.random.PCG64([args.seed, 3, step]))  # per-step stream: resumable
        for pg in opt.param_groups:
            pg["lr"] = args.lr * one_cycle(step, args.steps, args.warmup)
        idx = g.integers(0, len(scenes), args.batch)
        caps = [R.caption(scenes[i], g) if g.random() >= args.cond_drop else "" for i in idx]
        ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
        gen = torch.Generator().manual_seed(int(g.integers(0, 2**62)))
        it = torch.from_numpy(idx)
        z0 = (lat_mean[it] + lat_std[it] * torch.randn(lat_mean[it].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        if args.offset_noise:  # a random per-channel constant: the model must not read the colour off the noise
            noise = noise + args.offset_noise * torch.randn((args.batch, noise.shape[1], 1, 1), generator=gen)
        z0, noise, t = z0.to(dev), noise.to(dev), t.to(dev)   # drawn on the CPU: same data on any device
        zt = sched.add_noise(z0, noise, t)
        cond = te(ids)[0]
        pred = unet(zt, t, cond).sample
        w = torch.clamp(snr[t], max=args.min_snr) / snr[t]
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        if step % 100 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"unet {step:5d} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} {el:.0f}s "
                  f"({el / (step - start + 1):.2f}s/step)", flush=True)
        if (step + 1) % 500 == 0 and step + 1 < args.steps:
            torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(),
                        "ema": ema, "step": step + 1}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    record(work, "unet", time.time() - t0)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.cpu()
    te.cpu()
    return tok, te, unet


def write_model(out: str, vae, unet, te, tok, scale: float) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    vae.register_to_config(scaling_factor=scale)
    # UNet in fp16 (diffusers loads it as fp32); VAE and text encoder in fp32: transformers keeps a checkpoint's
    # dtype, and an fp16 text encoder would hand fp16 embeddings to the fp32 UNet on CPU
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet.half(),
                                   scheduler=DDIMScheduler(**M.scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if os.path.isdir(out):
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves tokenizer.json only; keep CLIP's vocab.json + merges.txt too (older loaders need them)
    src = getattr(tok, "name_or_path", "")
    for name in ("vocab.json", "merges.txt"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, "tokenizer", name))
    make_portable(out)  # text encoder keys, tokenizer.json merges: readable by transformers 4.x too
    unet.float()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({size / 1e6:.2f} MB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "src/lyco/data/tiny"))
    ap.add_argument("--work", default="/tmp/lyco-tiny-work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--vae-batch", type=int, default=48)
    ap.add_argument("--vae-crop", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=0.01)
    ap.add_argument("--dec-steps", type=int, default=400)
    ap.add_argument("--dec-batch", type=int, default=24)
    ap.add_argument("--dec-lr", type=float, default=5e-4)
    ap.add_argument("--only-decoder", action="store_true", help="stop after the decoder refinement")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop after this many steps of the --steps schedule (resumes from a checkpoint if any)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--offset-noise", type=float, default=0.0,
                    help="std of a per-sample, per-channel constant added to the training noise (offset noise)")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    ap.add_argument("--device", default="cpu", help="device of the UNet + text encoder stage (e.g. cuda); the VAE "
                    "stages run on the CPU")
    ap.add_argument("--center-latents", action=argparse.BooleanOptionalAction, default=True,
                    help="fold the latent channel means into the VAE so the diffusion model sees zero-mean latents")
    ap.add_argument("--init-from", default=None,
                    help="initialise the UNet and text encoder from an existing lyco-tiny folder (continue training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    cache = os.path.join(args.work, f"renders_{args.seed}_{args.n_images}.npy")
    scenes = [R.sample_scene(R.scene_rng(args.seed, i)) for i in range(args.n_images)]
    if os.path.isfile(cache):
        imgs = np.load(cache)
    else:
        imgs = np.stack([R.render(s, M.IMAGE_SIZE) for s in scenes])
        np.save(cache, imgs)
    print(f"rendered {len(imgs)} scenes in {time.time() - t0:.0f}s", flush=True)
    vae = train_vae(args, imgs, args.work)
    mean, std, scale = encode_all(vae, imgs, args.work)
    if args.only_decoder:
        refine_decoder(args, vae, imgs, mean, std, args.work)
        return
    vae = refine_decoder(args, vae, imgs, mean, std, args.work)
    if args.center_latents:
        mean, scale = center_latents(vae, mean, std)
    tok, te, unet = train_unet(args, scenes, mean, std, scale, args.work)
    write_model(args.out, vae, unet, te, tok, scale)
    # stage wall times, accumulated in --work/times.json across resumed invocations
    times_path = os.path.join(args.work, "times.json")
    times = {}
    if os.path.isfile(times_path):
        with open(times_path) as f:
            times = json.load(f)
    times["last_invocation"] = round(time.time() - t0)
    card = {"seed": args.seed, "args": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
            "stage_seconds": times, "train_seconds": sum(v for k, v in times.items() if k != "last_invocation")
            or times["last_invocation"], "threads": args.threads, "torch": torch.__version__}
    with open(os.path.join(args.out, "lyco_tiny.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(f"total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
