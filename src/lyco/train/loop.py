"""The training run as phases: build → restore → (micro_step → after_step → after_epoch)… → finish.

:class:`Trainer` is what is built once (config, accelerator, output folder, data plan, models, optimizer, schedule,
noise generator, caches, logs); :class:`Progress` is what a training state saves and a resume restores.  Every
phase is a plain function of the two; :func:`train` calls them in order.
"""
from __future__ import annotations

import json
import logging
import random
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import sd
from ..config import AdapterConfig
from ..errors import StateError
from ..network import needs_find_unused
from . import checkpoint as ckpt
from .buckets import Batch
from .cache import LatentSource, TextCache
from .config import TrainConfig
from .data import process_caption
from .family import loss_fn, sdxl_time_ids, unet_kwargs
from .log import RunLog
from .metadata import RunFacts, kohya_metadata
from .optim import apply_max_norm, build_optimizer, build_scheduler, param_groups
from .outputs import config_hash, finished_run, latest_state, prepare_output_dir, write_finished
from .plan import DataPlan, plan_data
from .sample import SamplePrompt, parse_sample_prompt, sample_and_save
from .signals import StopOnSignal, TrainingInterrupted

log = logging.getLogger("lyco")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}

#: ``callback(event, trainer, progress)``; events: ``"step"`` (after an optimizer step's exports, state and samples),
#: ``"state"`` (a training state was written), ``"epoch"`` (after an epoch's exports, state and samples).
Callback = Callable[[str, "Trainer", "Progress"], None]


@dataclass
class Models:
    pipe: Any
    net: Any                      # the lyco Network attached to the pipeline
    unet: Any                     # the UNet as it runs (DDP-wrapped when trained)
    text_encoders: list[Any]      # as they run (DDP-wrapped when trained)
    trained: list[Any]            # the modules gradient accumulation syncs
    noise_sched: Any
    weight_dtype: torch.dtype


@dataclass
class Trainer:
    """What a run builds once."""

    cfg: TrainConfig
    acc: Any
    out: Path
    data: DataPlan
    models: Models
    optimizer: Any
    lr_sched: Any
    noise_gen: torch.Generator
    latents: LatentSource
    text: TextCache
    log: RunLog
    facts: RunFacts
    prompts: list[SamplePrompt]
    callbacks: tuple[Callback, ...] = ()

    @property
    def main(self) -> bool:
        return bool(self.acc.is_main_process)

    @property
    def net(self) -> Any:
        return self.models.net

    def emit(self, event: str, p: Progress) -> None:
        for cb in self.callbacks:
            cb(event, self, p)


@dataclass
class Progress:
    """Where the run is; ``step``, ``epoch``, ``batch`` and ``samples_seen`` go into every training state."""

    step: int = 0                 # optimizer steps done
    epoch: int = 0                # epochs done (= index of the current one)
    batch: int = 0                # batches of the current epoch consumed
    samples_seen: int = 0
    epoch_done: bool = False      # the current epoch's last batch is consumed; its end-of-epoch actions are pending
    state_step: int | None = field(default=None, compare=False)  # step of the last state written or restored

    def position(self) -> tuple[int, int]:
        """(epoch, batch) a resume continues from."""
        return (self.epoch + 1, 0) if self.epoch_done else (self.epoch, self.batch)


@dataclass(frozen=True)
class Slot:
    """A batch of the plan with its place in the epoch."""

    batch: Batch
    index: int
    last: bool


# ----------------------------------------------------------------------------------------------- build
def _accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    n = cfg.network
    find_unused = needs_find_unused(n)
    return Accelerator(gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                       mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def load_models(cfg: TrainConfig, acc: Any) -> Models:
    """The pipeline, frozen and cast to the training dtype, with the adapters attached (fp32)."""
    from diffusers import DDPMScheduler
    device, weight_dtype, n = acc.device, DTYPES[cfg.train.mixed_precision], cfg.network
    pipe = sd.load_pipeline(cfg.model.base, prediction_type=cfg.model.prediction_type,
                            tokenizer=cfg.model.tokenizer, tokenizer_2=cfg.model.tokenizer_2)
    info = sd.model_info(pipe, name=cfg.model.base)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    tes = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
    for m in [pipe.unet, pipe.vae, *tes]:
        m.requires_grad_(False)
        m.eval()
    pipe.unet.to(device, dtype=weight_dtype)
    for te in tes:
        te.to(device, dtype=weight_dtype)
    pipe.vae.to(device, dtype=torch.float32 if cfg.model.vae_fp32 else weight_dtype)
    adapter_cfg = AdapterConfig(**n.model_dump(exclude={"train_unet", "train_text_encoder"}))
    net = sd.attach(pipe, adapter_cfg, unet=n.train_unet, text_encoder=n.train_text_encoder)
    net.to(device)
    net.train()
    if acc.is_main_process:
        sides = dict(Counter(s.root.prefix for s in net._sites.values()))
        log.info("lyco: %s | %s | matched modules %s | %s", info.describe(), adapter_cfg.algo, sides, net.summary())
        check_resolution(cfg, info.resolution, 2 ** (len(pipe.vae.config.block_out_channels) - 1))
    if cfg.train.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for te in tes:
            te.gradient_checkpointing_enable()
    return Models(pipe, net, pipe.unet, tes, [], noise_sched, weight_dtype)


def check_resolution(cfg: TrainConfig, native: int, vae_factor: int) -> None:
    """Warn about training sizes the VAE cannot encode exactly, or far from the model's native size."""
    for i, d in enumerate(cfg.datasets):
        sides = {d.resolution} | ({d.bucket.step} if d.bucket.enabled else set())
        if any(s % vae_factor for s in sides):
            what = f"resolution {d.resolution}" + (f" / bucket.step {d.bucket.step}" if d.bucket.enabled else "")
            log.warning("lyco: datasets[%d]: %s is not a multiple of %d (the VAE's downsampling): images are cut "
                        "to the next multiple; use e.g. resolution = %d", i, what, vae_factor,
                        max(vae_factor, round(d.resolution / vae_factor) * vae_factor))
        if not 0.75 <= d.resolution / native <= 1.5:
            log.warning("lyco: datasets[%d].resolution = %d is far from the model's native %d px: the model learns "
                        "a new size along with the concept (slower, often worse); use resolution = %d unless "
                        "you mean it", i, d.resolution, native, native)


def _prepare(cfg: TrainConfig, acc: Any, m: Models, data: DataPlan) -> tuple[Any, Any]:
    """Optimizer and LR schedule; the trained modules and the optimizer go through ``accelerator.prepare``."""
    optimizer = build_optimizer(param_groups(m.net, cfg.train), cfg.train.optimizer)
    lr_sched = build_scheduler(optimizer, cfg.train.scheduler, data.total_steps, data.steps_per_epoch)
    if cfg.network.train_unet:
        m.unet = acc.prepare(m.pipe.unet)
        m.trained.append(m.unet)
    if cfg.network.train_text_encoder:
        m.text_encoders = [acc.prepare(te) for te in m.text_encoders]
        m.trained.extend(m.text_encoders)
    return acc.prepare(optimizer), lr_sched


def _output_dir(cfg: TrainConfig, acc: Any, resume: str | None) -> Path:
    from accelerate.utils import broadcast_object_list
    holder: list[Any] = [None]
    if acc.is_main_process:
        holder[0] = str(prepare_output_dir(Path(cfg.output_dir), cfg.overwrite, resume is not None))
    broadcast_object_list(holder)
    return Path(holder[0])


def build(cfg: TrainConfig, resume: str | None, callbacks: tuple[Callback, ...] = ()) -> Trainer:
    """Everything a run needs, validated before anything is written: data, models, adapters, optimizer; then
    the output folder."""
    from accelerate.utils import set_seed
    acc = _accelerator(cfg)
    set_seed(cfg.train.seed)
    data = plan_data(cfg, acc.num_processes, acc.is_main_process)   # fail fast: before any model loads
    models = load_models(cfg, acc)
    optimizer, lr_sched = _prepare(cfg, acc, models, data)
    noise_gen = torch.Generator().manual_seed(cfg.train.seed + 12345)
    out = _output_dir(cfg, acc, resume)                                # only now is anything written
    vae = models.pipe.vae
    latents = LatentSource(vae, cfg.train.cache_latents, out / "cache" / "latents", acc.device, vae.dtype)
    text = TextCache(cfg.train.cache_text and not cfg.network.train_text_encoder, cfg.model.clip_skip, acc.device)
    resolution = cfg.datasets[0].resolution
    prompts = [parse_sample_prompt(s, cfg.sample, resolution, i) for i, s in enumerate(cfg.sample.prompts)]
    return Trainer(cfg, acc, out, data, models, optimizer, lr_sched, noise_gen, latents, text,
                   RunLog(cfg, acc, out, data.total_steps), RunFacts.of(data.scans), prompts, tuple(callbacks))


# ----------------------------------------------------------------------------------------------- resume
def restore(t: Trainer, resume: str | None) -> Progress:
    """A fresh :class:`Progress`, or the one of the state to resume from (with adapter, optimizer, schedule and RNG).

    ``--resume latest`` with no complete state yet starts from step 0 (so the same command can be relaunched)."""
    p = Progress()
    if resume is None:
        return p
    if resume == "latest" and latest_state(t.out) is None:
        if t.main:
            log.warning("lyco: --resume latest: no complete training state in %s yet; starting from step 0", t.out)
        return p
    path = ckpt.find_state(t.out, resume)
    payload, per_rank = ckpt.load_state(path, t.acc.process_index)
    if payload["network_signature"] != {k: list(v.shape) for k, v in t.net.state_dict().items()}:
        raise StateError(f"{path}: the saved adapter has a different structure than this config builds "
                         "(network settings changed); start a new run or restore the network settings")
    if payload.get("config_hash") != config_hash(t.cfg) and t.main:
        log.warning("lyco: the config changed since %s (lr, steps or epochs); continuing with the new values", path)
    t.net.load_state_dict(payload["network"])
    t.optimizer.load_state_dict(payload["optimizer"])
    t.lr_sched.load_state_dict(payload["lr_scheduler"])
    p = Progress(payload["global_step"], payload["epoch"], payload["batch_in_epoch"], payload["samples_seen"])
    p.state_step = p.step
    if per_rank:
        ckpt.set_rng_state(per_rank["rng"], t.noise_gen)
    if t.main:
        log.info("lyco: resumed from %s at step %d (epoch %d, batch %d)", path, p.step, p.epoch, p.batch)
    return p


# ----------------------------------------------------------------------------------------------- the loop
def begin(t: Trainer, p: Progress) -> None:
    """Write the resolved config, say where outputs go, sample before training (fresh runs)."""
    if t.main:
        (t.out / "config.resolved.json").write_text(json.dumps(t.cfg.resolved(), indent=2))
        log.info("lyco: outputs in %s (adapters), %s (states), %s (samples)", t.out, t.out / "state",
                 t.out / "samples")
    if t.cfg.sample.at_start and p.step == 0:
        sample(t, p, "step-00000000")
    t.log.open(p.step)


def epoch_batches(t: Trainer, p: Progress) -> Iterator[Slot]:
    """The batches still to train, epoch after epoch (a resumed run continues mid-epoch)."""
    skip = p.batch
    while p.step < t.data.total_steps:
        plan = t.data.epoch(p.epoch)
        for i, batch in enumerate(plan):
            if i >= skip:
                yield Slot(batch, i, i == len(plan) - 1)
        skip = 0


def _noise(t: Trainer, shape: torch.Size, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps for the whole global batch (drawn on every process, so N processes = 1 process); this
    process's share."""
    tc, rank = t.cfg.train, t.acc.process_index
    noise = torch.randn((g, *shape[1:]), generator=t.noise_gen)
    if tc.noise_offset:
        noise = noise + tc.noise_offset * torch.randn((g, shape[1], 1, 1), generator=t.noise_gen)
    timesteps = torch.randint(0, t.models.noise_sched.config.num_train_timesteps, (g,), generator=t.noise_gen)
    per = g // t.acc.num_processes
    return noise[rank * per:(rank + 1) * per].to(t.acc.device), timesteps[rank * per:(rank + 1) * per].to(t.acc.device)


def _loss(t: Trainer, batch: Batch, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
          captions: list[str]) -> torch.Tensor:
    m, tc = t.models, t.cfg.train
    with t.acc.autocast():
        cond = t.text.conditioning(m.pipe, m.text_encoders, captions)
        time_ids = None
        if "text_embeds" in cond:
            bw, bh = batch.bucket
            time_ids = sdxl_time_ids((bh, bw), (0, 0), (bh, bw), len(captions), t.acc.device, cond["text_embeds"].dtype)
        noisy = m.noise_sched.add_noise(latents, noise, timesteps)
        pred = m.unet(noisy.to(m.weight_dtype), timesteps, **unet_kwargs(cond, time_ids)).sample
    return loss_fn(pred, latents, noise, timesteps, m.noise_sched, m.noise_sched.config.prediction_type,
                   tc.min_snr_gamma)


def micro_step(t: Trainer, p: Progress, slot: Slot) -> None:
    """Forward and backward of one batch (this process's share); the optimizer steps when accumulation syncs."""
    batch, tc, acc = slot.batch, t.cfg.train, t.acc
    per = len(batch.items) // acc.num_processes
    local = batch.items[acc.process_index * per:(acc.process_index + 1) * per]
    d, subs = t.data.dataset(batch), [t.data.subset_of[i] for i in local]
    rngs = [random.Random(f"aug/{tc.seed}/{p.epoch}/{slot.index}/{k}") for k in range(len(local))]
    with acc.accumulate(*t.models.trained):
        latents = t.latents.get([t.data.items[i] for i in local], batch.bucket, d.bucket.crop, subs, rngs)
        latents = latents.to(acc.device)
        noise, timesteps = _noise(t, latents.shape, len(batch.items))
        captions = [process_caption(t.data.items[i].caption, s, d, tc.seed, p.epoch, int(i))
                    for i, s in zip(local, subs)]
        loss = _loss(t, batch, latents, noise, timesteps, captions)
        acc.backward(loss)
        if acc.sync_gradients and tc.max_grad_norm:
            acc.clip_grad_norm_([q for q in t.net.parameters() if q.requires_grad], tc.max_grad_norm)
        t.optimizer.step()
        if acc.sync_gradients:
            t.lr_sched.step()
        t.optimizer.zero_grad(set_to_none=True)
    t.log.losses.add(loss)
    p.samples_seen += len(batch.items)
    p.batch, p.epoch_done = slot.index + 1, slot.last


def _every(n: int | None, k: int) -> bool:
    return bool(n) and k % n == 0  # type: ignore[operator]


def after_step(t: Trainer, p: Progress) -> None:
    """An optimizer step is done: max-norm, logs, and the step's exports, state and samples."""
    p.step += 1
    cfg = t.cfg
    if cfg.train.max_norm:
        apply_max_norm(t.net, cfg.train.max_norm)
    t.log.step(p.step, p.epoch, t.lr_sched.get_last_lr())
    done = p.step >= t.data.total_steps
    if _every(cfg.save.every_n_steps, p.step) and not done:
        export(t, p, f"{cfg.name}-s{p.step:08d}")
    if _every(cfg.save.state_every_n_steps, p.step) and not done:
        save_state(t, p)
    if _every(cfg.sample.every_n_steps, p.step):
        sample(t, p, f"step-{p.step:08d}")
    t.emit("step", p)


def after_epoch(t: Trainer, p: Progress) -> None:
    """An epoch is done: the epoch's exports, state and samples."""
    p.epoch, p.batch, p.epoch_done = p.epoch + 1, 0, False
    cfg = t.cfg
    if _every(cfg.save.every_n_epochs, p.epoch) and p.step < t.data.total_steps:
        export(t, p, f"{cfg.name}-e{p.epoch:04d}")
    if _every(cfg.save.state_every_n_epochs, p.epoch):
        save_state(t, p)
    if _every(cfg.sample.every_n_epochs, p.epoch):
        sample(t, p, f"epoch-{p.epoch:04d}")
    t.emit("epoch", p)


# ----------------------------------------------------------------------------------------------- outputs
def export(t: Trainer, p: Progress, name: str, epoch: int | None = None) -> Path:
    """Write the adapter as ``<name>.safetensors`` (main process), after checking the loss is still finite."""
    t.log.flush()
    path = t.out / f"{name}.safetensors"
    if t.main:
        meta = kohya_metadata(t.cfg, t.facts, p.step, p.epoch if epoch is None else epoch)
        t.net.save(path, dtype=SAVE_DTYPES[t.cfg.save.dtype], metadata=meta)
        log.info("lyco: saved adapter %s", path)
        if name != t.cfg.name:
            ckpt.rotate_exports(t.out, t.cfg.name, t.cfg.save.keep_last_n)
    return path


def save_state(t: Trainer, p: Progress) -> Path:
    """A crash-safe training state of the current step (every process writes its RNG state)."""
    t.log.flush()
    epoch, batch = p.position()
    sd_net = t.net.state_dict()
    payload = {"network": sd_net, "optimizer": t.optimizer.state_dict(), "lr_scheduler": t.lr_sched.state_dict(),
               "global_step": p.step, "epoch": epoch, "batch_in_epoch": batch, "samples_seen": p.samples_seen,
               "config": t.cfg.resolved(), "config_hash": config_hash(t.cfg),
               "network_signature": {k: list(v.shape) for k, v in sd_net.items()}}
    path = ckpt.save_state(t.out / "state", p.step, payload, {"rng": ckpt.rng_state(t.noise_gen)},
                           t.acc.process_index, t.main, t.acc.wait_for_everyone, t.cfg.save.keep_last_n_states)
    p.state_step = p.step
    if t.main:
        log.info("lyco: saved training state %s", path)
    t.emit("state", p)
    return path


def sample(t: Trainer, p: Progress, tag: str) -> None:
    """Sample images with the live adapter on the main process (a failure is logged unless strict_sampling)."""
    if not t.prompts:
        return
    t.acc.wait_for_everyone()
    if t.main:
        t.net.eval()
        try:
            path, images = sample_and_save(t.models.pipe, t.prompts, t.out / "samples", tag, t.acc.device,
                                           t.cfg.model.clip_skip)
            log.info("lyco: samples %s", path)
            for i, (sp, im) in enumerate(zip(t.prompts, images)):
                t.log.image(f"samples/{i}: {sp.prompt[:60]}", im, p.step)
        except Exception as exc:  # sampling must not kill training unless asked
            if t.cfg.sample.strict_sampling:
                raise
            log.error("lyco: sampling failed at step %d (%s: %s); training continues", p.step, type(exc).__name__, exc)
        finally:
            t.net.train()
    t.acc.wait_for_everyone()


def interrupt(t: Trainer, p: Progress, signum: int) -> None:
    """Stop on a signal: write a state (unless this step's was just written) and raise TrainingInterrupted."""
    state = None
    if p.step > 0:
        state = latest_state(t.out) if p.state_step == p.step else save_state(t, p)
    t.log.close()
    raise TrainingInterrupted(signum, p.step, t.data.total_steps, t.out, state)


def finish(t: Trainer, p: Progress) -> Path:
    """The final adapter, the final samples, ``finished.json`` (last)."""
    t.acc.wait_for_everyone()
    final = export(t, p, t.cfg.name, epoch=p.position()[0])
    if t.cfg.sample.prompts and not _every(t.cfg.sample.every_n_steps, p.step):
        sample(t, p, f"final-step-{p.step:08d}")
    t.log.close()
    if t.main:
        write_finished(t.out, t.cfg.name, final, config_hash(t.cfg))
    t.acc.wait_for_everyone()
    t.acc.end_training()
    return final


def train(cfg: TrainConfig, resume: str | None = None, *, callbacks: tuple[Callback, ...] = ()) -> Path:
    """Run training; returns the final adapter file.  ``resume``: ``"latest"`` or a state folder."""
    finished = finished_run(cfg, resume)
    if finished is not None:
        return finished
    t = build(cfg, resume, callbacks)
    p = restore(t, resume)
    with StopOnSignal(announce=t.acc.is_local_main_process) as stop:
        try:
            begin(t, p)
            if signum := stop.requested(t.acc):
                interrupt(t, p, signum)
            for slot in epoch_batches(t, p):
                micro_step(t, p, slot)
                if t.acc.sync_gradients:
                    after_step(t, p)
                    if p.step >= t.data.total_steps:
                        break
                if slot.last:
                    after_epoch(t, p)
                if t.acc.sync_gradients and (signum := stop.requested(t.acc)):
                    interrupt(t, p, signum)
        except KeyboardInterrupt:  # a second Ctrl-C
            t.log.close()
            raise TrainingInterrupted(signal.SIGINT, p.step, t.data.total_steps, t.out, latest_state(t.out),
                                      aborted=True) from None
    return finish(t, p)
