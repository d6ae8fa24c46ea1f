"""The training run, top to bottom: config → accelerator → data → models → adapters → optimizer → resume → loop."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import sd
from ..config import AdapterConfig
from ..errors import StateError, TrainingError
from ..io.images import load_rgb
from . import checkpoint as ckpt
from .buckets import Batch, assign, bucket_table, crop_box, make_buckets, plan_epoch
from .config import TrainConfig
from .data import DatasetScan, ImageItem, process_caption, scan_dataset
from .family import encode, loss_fn, sdxl_time_ids, unet_kwargs
from .optim import apply_max_norm, build_optimizer, build_scheduler, param_groups
from .sample import parse_sample_prompt, sample_and_save

log = logging.getLogger("lyco")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


class Run:
    """Everything a training run holds (kept small: the loop below reads top to bottom)."""

    def __init__(self, cfg: TrainConfig, resume: str | None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

        self.cfg = cfg
        n = cfg.network
        find_unused = n.module_dropout > 0 or n.algo == "dylora" or any(
            o.get("algo") == "dylora" for o in list(n.module_algo_map.values()) + list(n.name_algo_map.values()))
        out = Path(cfg.output_dir)
        acc = Accelerator(gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                          mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                          kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])
        holder = [None]
        if acc.is_main_process:
            holder[0] = str(ckpt.prepare_output_dir(out, cfg.overwrite, resume is not None))
        broadcast_object_list(holder)
        self.out = Path(holder[0])
        self.acc = acc
        self.tb = None
        if cfg.log.tensorboard and acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "logs"))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def _config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.resolved(), sort_keys=True).encode()).hexdigest()[:16]


def _image_tensor(item: ImageItem, bucket: tuple[int, int], crop: str, flip: bool, background, rng: random.Random):
    im, _ = load_rgb(item.path, background)
    size, box = crop_box(im.size, bucket, crop, rng)
    im = im.resize(size, Image.LANCZOS).crop(box)
    do_flip = flip and rng.random() < 0.5
    if do_flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(__import__("numpy").asarray(im, dtype="float32")).permute(2, 0, 1) / 127.5 - 1.0
    return t, box, do_flip


class LatentSource:
    """VAE latents of (item, bucket, crop, flip), cached in memory or on disk when the crop is deterministic."""

    def __init__(self, vae: Any, mode: str, cache_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.vae, self.mode, self.dir, self.device, self.dtype = vae, mode, cache_dir, device, dtype
        self.mem: dict[str, torch.Tensor] = {}
        sf = getattr(vae.config, "scaling_factor", 0.18215)
        self.scale, self.shift = sf, getattr(vae.config, "shift_factor", None) or 0.0
        self.vae_id = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.hits = 0

    def key(self, item: ImageItem, bucket, box, flip) -> str:
        raw = f"{item.sha}|{bucket}|{box}|{int(flip)}|{self.vae_id}|{self.dtype}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, dtype=self.vae.dtype)
        lat = self.vae.encode(x).latent_dist.mode()
        return ((lat - self.shift) * self.scale).float()

    def get(self, items: list[ImageItem], bucket, crop: str, flips: list[bool], backgrounds, rngs) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for k, (it, fl, bg, rng) in enumerate(zip(items, flips, backgrounds, rngs)):
            pix, box, did_flip = _image_tensor(it, bucket, crop, fl, bg, rng)
            cacheable = self.mode != "no" and crop == "center" and not fl
            key = self.key(it, bucket, box, did_flip) if cacheable else None
            if key and key in self.mem:
                out[k] = self.mem[key]
                self.hits += 1
                continue
            if key and self.mode == "disk" and (self.dir / f"{key}.pt").is_file():
                try:
                    out[k] = self.mem[key] = torch.load(self.dir / f"{key}.pt", map_location="cpu")
                    self.hits += 1
                    continue
                except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
                    pass
            todo.append((k, pix, key))
        if todo:
            # one image at a time: batched convs round differently by batch size, and a cache filled in a
            # different order (e.g. after a resume) must give bit-identical latents
            lat = [self.encode(p[None])[0].cpu() for _, p, _ in todo]
            for (k, _, key), z in zip(todo, lat):
                out[k] = z
                if key:
                    self.mem[key] = z
                    if self.mode == "disk":
                        self.dir.mkdir(parents=True, exist_ok=True)
                        tmp = self.dir / f"{key}.pt.tmp"
                        torch.save(z.clone(), tmp)
                        os.replace(tmp, self.dir / f"{key}.pt")
        return torch.stack(out)  # type: ignore[arg-type]


def train(cfg: TrainConfig, resume: str | None = None) -> Path:
    """Run training; returns the final adapter file."""
    run = Run(cfg, resume)
    acc = run.acc
    t_cfg, n_cfg = cfg.train, cfg.network
    from accelerate.utils import set_seed
    set_seed(t_cfg.seed)
    main = acc.is_main_process
    world, rank = acc.num_processes, acc.process_index
    device = acc.device

    # ---------------------------------------------------------------- data (fail fast, before the models)
    scans: list[DatasetScan] = [scan_dataset(d) for d in cfg.datasets]
    items: list[ImageItem] = []
    groups = []
    for di, (scan, dcfg) in enumerate(zip(scans, cfg.datasets)):
        base = len(items)
        items.extend(scan.items)
        samples = [base + i for i in scan.epoch_indices()]
        buckets = make_buckets(dcfg.resolution, dcfg.bucket) if dcfg.bucket.enabled else [(dcfg.resolution,) * 2]
        bucket_of = {base + i: (assign(it.size, buckets, dcfg.bucket, dcfg.resolution) if dcfg.bucket.enabled
                                else (dcfg.resolution, dcfg.resolution)) for i, it in enumerate(scan.items)}
        groups.append((di, samples, bucket_of, dcfg.batch_size * world, dcfg.bucket.leftovers))
        if main:
            log.info("lyco: dataset %d (%d px, batch %d x %d processes):\n%s\n buckets:\n%s", di, dcfg.resolution,
                     dcfg.batch_size, world, scan.summary(), bucket_table(bucket_of, samples))
    subset_of = {}
    k = 0
    for di, scan in enumerate(scans):
        for s in scan.subsets:
            for _ in s.items:
                subset_of[k] = (di, s.config)
                k += 1
    plan0 = plan_epoch(groups, t_cfg.seed, 0, world)
    accum = t_cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(plan0) / accum)
    total_steps = t_cfg.steps or steps_per_epoch * int(t_cfg.epochs)
    if main:
        pads = sum(b.padded for b in plan0)
        log.info("lyco: %d images (%d skipped), %d batches per epoch (%d padded items for %d processes), "
                 "effective batch %s x accum %d, %d optimizer steps per epoch, %d steps in all",
                 len(items), sum(len(s.skipped) for s in scans), len(plan0), pads, world,
                 "/".join(str(d.batch_size * world) for d in cfg.datasets), accum, steps_per_epoch, total_steps)

    # ---------------------------------------------------------------- models
    weight_dtype = DTYPES[t_cfg.mixed_precision]
    pipe = sd.load_pipeline(cfg.model.base, prediction_type=cfg.model.prediction_type,
                            tokenizer=cfg.model.tokenizer, tokenizer_2=cfg.model.tokenizer_2)
    info = sd.model_info(pipe, name=cfg.model.base)
    from diffusers import DDPMScheduler
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    pred_type = noise_sched.config.prediction_type
    tes = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
    for m in [pipe.unet, pipe.vae, *tes]:
        m.requires_grad_(False)
        m.eval()
    pipe.unet.to(device, dtype=weight_dtype)
    for te in tes:
        te.to(device, dtype=weight_dtype)
    pipe.vae.to(device, dtype=torch.float32 if cfg.model.vae_fp32 else weight_dtype)
    adapter_cfg = AdapterConfig(**n_cfg.model_dump(exclude={"train_unet", "train_text_encoder"}))
    net = sd.attach(pipe, adapter_cfg, unet=n_cfg.train_unet, text_encoder=n_cfg.train_text_encoder)
    net.to(device)
    net.train()
    sides = Counter(s.root.prefix for s in net._sites.values())
    if main:
        log.info("lyco: %s | %s | matched modules %s | %s", info.describe(), adapter_cfg.algo, dict(sides), net.summary())
    if t_cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for te in tes:
            te.gradient_checkpointing_enable()
    groups_opt = param_groups(net, t_cfg)
    optimizer = build_optimizer(groups_opt, t_cfg.optimizer)
    lr_sched = build_scheduler(optimizer, t_cfg.scheduler, total_steps, steps_per_epoch)
    unet_run = pipe.unet
    te_run = list(tes)
    if n_cfg.train_unet:
        unet_run = acc.prepare(pipe.unet)
    if n_cfg.train_text_encoder:
        te_run = [acc.prepare(te) for te in tes]
    optimizer = acc.prepare(optimizer)
    noise_gen = torch.Generator().manual_seed(t_cfg.seed + 12345)

    # ---------------------------------------------------------------- resume
    global_step, start_epoch, skip_batches, samples_seen = 0, 0, 0, 0
    if resume is not None:
        path = ckpt.find_state(run.out, resume)
        payload, per_rank = ckpt.load_state(path, rank)
        sig = {k: list(v.shape) for k, v in net.state_dict().items()}
        if payload["network_signature"] != sig:
            raise StateError(f"{path}: the saved adapter has a different structure than this config builds "
                             "(network settings changed); start a new run or restore the network settings")
        if payload.get("config_hash") != _config_hash(cfg) and main:
            log.warning("lyco: the config changed since %s (lr, steps or epochs); continuing with the new values", path)
        net.load_state_dict(payload["network"])
        optimizer.load_state_dict(payload["optimizer"])
        lr_sched.load_state_dict(payload["lr_scheduler"])
        global_step, start_epoch = payload["global_step"], payload["epoch"]
        skip_batches, samples_seen = payload["batch_in_epoch"], payload["samples_seen"]
        if per_rank:
            ckpt.set_rng_state(per_rank["rng"], noise_gen)
        if main:
            log.info("lyco: resumed from %s at step %d (epoch %d, batch %d)", path, global_step, start_epoch, skip_batches)

    latents_src = LatentSource(pipe.vae, t_cfg.cache_latents, run.out / "cache" / "latents", device,
                               pipe.vae.dtype)
    text_cache: dict[str, dict] = {}
    cache_text = t_cfg.cache_text and not n_cfg.train_text_encoder
    resolution = cfg.datasets[0].resolution
    prompts = [parse_sample_prompt(p, cfg.sample, resolution, i) for i, p in enumerate(cfg.sample.prompts)]
    save_dtype = SAVE_DTYPES[cfg.save.dtype]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    tag_freq = Counter(t.strip() for it in items for t in it.caption.split(",") if t.strip())

    def metadata(epoch: int) -> dict[str, str]:
        return {
            "ss_output_name": cfg.name, "ss_steps": str(global_step), "ss_epoch": str(epoch),
            "ss_learning_rate": str(t_cfg.lr), "ss_unet_lr": str(t_cfg.unet_lr or t_cfg.lr),
            "ss_text_encoder_lr": str(t_cfg.text_encoder_lr or t_cfg.lr), "ss_seed": str(t_cfg.seed),
            "ss_num_train_images": str(sum(len(s.epoch_indices()) for s in scans)),
            "ss_mixed_precision": t_cfg.mixed_precision, "ss_training_started_at": started,
            "ss_clip_skip": str(cfg.model.clip_skip), "ss_resolution": f"({resolution}, {resolution})",
            "ss_sd_model_name": cfg.model.base, "ss_tag_frequency": json.dumps({"all": dict(tag_freq)}),
            "ss_dataset_dirs": json.dumps({s.name: {"n_repeats": s.repeats, "img_count": len(s.items)}
                                           for sc in scans for s in sc.subsets}),
            "lyco.train_config": json.dumps(cfg.resolved()),
        }

    def export(path: Path, epoch: int) -> None:
        if main:
            net.save(path, dtype=save_dtype, metadata=metadata(epoch))
            log.info("lyco: saved adapter %s", path)

    def save_state(epoch: int, batch_in_epoch: int) -> None:
        payload = {"network": net.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                   "global_step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                   "samples_seen": samples_seen, "config": cfg.resolved(), "config_hash": _config_hash(cfg),
                   "network_signature": {k: list(v.shape) for k, v in net.state_dict().items()}}
        p = ckpt.save_state(run.out / "state", global_step, payload, {"rng": ckpt.rng_state(noise_gen)}, rank, main,
                            acc.wait_for_everyone, cfg.save.keep_last_n_states)
        if main:
            log.info("lyco: saved training state %s", p)
        kill_at = os.environ.get("LYCO_DEBUG_KILL_AT_STEP")  # test hook: simulate a crash right after a state
        if kill_at and int(kill_at) == global_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def do_sample(tag: str) -> None:
        if not prompts:
            return
        acc.wait_for_everyone()
        if main:
            net.eval()
            try:
                path, images = sample_and_save(pipe, prompts, run.out / "samples", tag, device, cfg.model.clip_skip)
                log.info("lyco: samples %s", path)
                if run.tb is not None:
                    for i, (p, im) in enumerate(zip(prompts, images)):
                        run.tb.add_image(f"samples/{i}: {p.prompt[:60]}", np.asarray(im), global_step, dataformats="HWC")
            except Exception as exc:  # noqa: BLE001 - sampling must not kill training unless asked
                if cfg.sample.strict_sampling:
                    raise
                log.error("lyco: sampling failed at step %d (%s: %s); training continues", global_step,
                          type(exc).__name__, exc)
            finally:
                net.train()
        acc.wait_for_everyone()

    if main:
        (run.out / "config.resolved.json").write_text(json.dumps(cfg.resolved(), indent=2))
        log.info("lyco: outputs in %s (adapters), %s (states), %s (samples)", run.out, run.out / "state",
                 run.out / "samples")
    if cfg.sample.at_start and global_step == 0:
        do_sample("step-00000000")

    # ---------------------------------------------------------------- the loop
    bar = tqdm(total=total_steps, initial=global_step, desc="train", disable=not acc.is_local_main_process)
    ema_loss, losses = None, []
    epoch = start_epoch
    t0 = time.perf_counter()
    finished = global_step >= total_steps
    while not finished:
        plan = plan_epoch(groups, t_cfg.seed, epoch, world)
        for b_idx, batch in enumerate(plan):
            if epoch == start_epoch and b_idx < skip_batches:
                continue
            loss = _micro_step(batch, epoch, b_idx, cfg, items, subset_of, latents_src, pipe, te_run, unet_run,
                               noise_sched, noise_gen, pred_type, text_cache, cache_text, acc, optimizer, lr_sched,
                               net, world, rank, device, weight_dtype)
            samples_seen += len(batch.items)
            if not math.isfinite(loss):
                last = ckpt.find_state(run.out, "latest") if (run.out / "state").is_dir() else None
                raise TrainingError(f"the loss became {loss} at step {global_step + 1} (epoch {epoch}); stopped. "
                                    f"The last good state is {last or 'none (no state saved yet)'}. Lower the "
                                    "learning rate, check the data, or use mixed_precision = 'bf16' instead of fp16.")
            losses.append(loss)
            if not acc.sync_gradients:
                continue
            global_step += 1
            if t_cfg.max_norm:
                net_max_norm(net, t_cfg.max_norm)
            step_loss = sum(losses) / len(losses)
            losses.clear()
            ema_loss = step_loss if ema_loss is None else 0.98 * ema_loss + 0.02 * step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}", epoch=epoch)
            if run.tb is not None and global_step % cfg.log.every_n_steps == 0:
                run.tb.add_scalar("loss/step", step_loss, global_step)
                run.tb.add_scalar("loss/ema", ema_loss, global_step)
                run.tb.add_scalar("epoch", epoch, global_step)
                run.tb.add_scalar("perf/steps_per_s", global_step / max(time.perf_counter() - t0, 1e-9), global_step)
                for i, lr in enumerate(lr_sched.get_last_lr()):
                    run.tb.add_scalar(f"lr/group{i}", lr, global_step)
            last_in_epoch = b_idx == len(plan) - 1
            done = global_step >= total_steps
            if cfg.save.every_n_steps and global_step % cfg.save.every_n_steps == 0 and not done:
                export(run.out / f"{cfg.name}-s{global_step:08d}.safetensors", epoch)
                if main:
                    ckpt.rotate_exports(run.out, cfg.name, cfg.save.keep_last_n)
            if cfg.save.state_every_n_steps and global_step % cfg.save.state_every_n_steps == 0 and not done:
                save_state(epoch + (1 if last_in_epoch else 0), 0 if last_in_epoch else b_idx + 1)
            if cfg.sample.every_n_steps and global_step % cfg.sample.every_n_steps == 0:
                do_sample(f"step-{global_step:08d}")
            if done:
                finished = True
                break
        else:
            epoch += 1
            if cfg.save.every_n_epochs and epoch % cfg.save.every_n_epochs == 0 and global_step < total_steps:
                export(run.out / f"{cfg.name}-e{epoch:04d}.safetensors", epoch)
                if main:
                    ckpt.rotate_exports(run.out, cfg.name, cfg.save.keep_last_n)
            if cfg.save.state_every_n_epochs and epoch % cfg.save.state_every_n_epochs == 0:
                save_state(epoch, 0)
            if cfg.sample.every_n_epochs and epoch % cfg.sample.every_n_epochs == 0:
                do_sample(f"epoch-{epoch:04d}")
            continue
    bar.close()
    final = run.out / f"{cfg.name}.safetensors"
    acc.wait_for_everyone()
    export(final, epoch)
    if cfg.sample.prompts and not (cfg.sample.every_n_steps and global_step % cfg.sample.every_n_steps == 0):
        do_sample(f"final-step-{global_step:08d}")
    if run.tb is not None:
        run.tb.close()
    acc.wait_for_everyone()
    acc.end_training()
    return final


def net_max_norm(net, max_norm: float) -> tuple[int, float, float]:
    return apply_max_norm(net, max_norm)


def _micro_step(batch: Batch, epoch: int, b_idx: int, cfg: TrainConfig, items, subset_of, latents_src, pipe, te_run,
                unet_run, noise_sched, noise_gen, pred_type, text_cache, cache_text, acc, optimizer, lr_sched, net,
                world: int, rank: int, device, weight_dtype) -> float:
    t_cfg = cfg.train
    g = len(batch.items)
    per = g // world
    local = batch.items[rank * per:(rank + 1) * per]
    dcfg = cfg.datasets[batch.dataset]
    subs = [subset_of[i][1] for i in local]
    rngs = [random.Random(f"aug/{t_cfg.seed}/{epoch}/{b_idx}/{k}") for k in range(len(local))]
    # noise and timesteps are drawn for the whole global batch on every rank (so N processes = 1 process)
    lat_shape = None
    with acc.accumulate(*[m for m in ([unet_run] if cfg.network.train_unet else []) + (te_run if cfg.network.train_text_encoder else [])]):
        latents = latents_src.get([items[i] for i in local], batch.bucket, dcfg.bucket.crop, [s.flip for s in subs],
                                  [s.background for s in subs], rngs).to(device)
        lat_shape = latents.shape
        noise = torch.randn((g, *lat_shape[1:]), generator=noise_gen)
        if t_cfg.noise_offset:
            noise = noise + t_cfg.noise_offset * torch.randn((g, lat_shape[1], 1, 1), generator=noise_gen)
        timesteps = torch.randint(0, noise_sched.config.num_train_timesteps, (g,), generator=noise_gen)
        noise, timesteps = noise[rank * per:(rank + 1) * per].to(device), timesteps[rank * per:(rank + 1) * per].to(device)
        captions = [process_caption(items[i].caption, s, dcfg, t_cfg.seed, epoch, int(i)) for i, s in zip(local, subs)]
        with acc.autocast():
            cond = _conditioning(pipe, te_run, captions, cfg, device, text_cache, cache_text)
            time_ids = None
            if "text_embeds" in cond:
                bw, bh = batch.bucket
                time_ids = sdxl_time_ids((bh, bw), (0, 0), (bh, bw), len(local), device, cond["text_embeds"].dtype)
            noisy = noise_sched.add_noise(latents, noise, timesteps)
            pred = unet_run(noisy.to(weight_dtype), timesteps, **unet_kwargs(cond, time_ids)).sample
        loss = loss_fn(pred, latents, noise, timesteps, noise_sched, pred_type, t_cfg.min_snr_gamma)
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())
        acc.backward(loss)
        if acc.sync_gradients and t_cfg.max_grad_norm:
            acc.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], t_cfg.max_grad_norm)
        optimizer.step()
        if acc.sync_gradients:
            lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _conditioning(pipe, te_run, captions, cfg, device, cache, use_cache) -> dict:
    if not use_cache:
        return encode(pipe, te_run, captions, cfg.model.clip_skip, device)
    for c in dict.fromkeys(captions):
        if c not in cache:  # one caption at a time, so cached values do not depend on batch composition
            with torch.no_grad():
                enc = encode(pipe, te_run, [c], cfg.model.clip_skip, device)
            cache[c] = {k: v[0].detach() for k, v in enc.items()}
    return {k: torch.stack([cache[c][k] for c in captions]) for k in cache[captions[0]]}
