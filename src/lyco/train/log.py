"""What a run reports while it trains: TensorBoard scalars, progress output and the loss.

* The loss stays on the device: each micro-step's loss tensor is kept and all of them are read back at once
  (one device sync) at *log steps* — every ``log.print_every_n_steps`` steps and before anything is written
  (state, adapter, samples) or the run ends.  TensorBoard still gets the loss of every ``log.every_n_steps``-th
  step, written when it is read.  A non-finite loss stops the run at the first log step after it.
* Progress: a tqdm bar when stderr is a terminal; otherwise (a log file, a scheduler) one line per log step.
* Third-party libraries are quiet unless ``--verbose``: no transformers/diffusers warnings or loading bars.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..errors import TrainingError
from .outputs import latest_state

log = logging.getLogger("lyco")


def auto_print_every(total_steps: int) -> int:
    """About 20 progress lines a run, at least one every 100 steps."""
    return min(100, max(1, total_steps // 20))


class LossLog:
    """Micro-step losses kept as device tensors until :meth:`read` (one sync for all of them)."""

    def __init__(self) -> None:
        self.micro: list[torch.Tensor] = []
        self.pending: list[tuple[int, int, list[torch.Tensor]]] = []  # (step, epoch, its micro-step losses)

    def add(self, loss: torch.Tensor) -> None:
        self.micro.append(loss.detach())

    def end_step(self, step: int, epoch: int) -> None:
        self.pending.append((step, epoch, self.micro))
        self.micro = []

    def read(self) -> tuple[list[tuple[int, float]], tuple[int, int, float] | None]:
        """(step, mean loss) of each pending step, and the first non-finite (step, epoch, value) if any."""
        if not self.pending:
            return [], None
        flat = torch.stack([x for _, _, xs in self.pending for x in xs]).tolist()
        out, k, bad = [], 0, None
        for step, epoch, xs in self.pending:
            vals = flat[k:k + len(xs)]
            k += len(xs)
            bad = bad or next(((step, epoch, v) for v in vals if not math.isfinite(v)), None)
            out.append((step, sum(vals) / len(vals)))
        self.pending.clear()
        return out, bad


class RunLog:
    """TensorBoard, progress output and the loss readback of one run (every process holds one)."""

    def __init__(self, cfg: Any, acc: Any, out: Path, total: int) -> None:
        self.acc, self.out, self.total = acc, out, total
        self.every = cfg.log.every_n_steps
        self.print_every = cfg.log.print_every_n_steps or auto_print_every(total)
        self.show = acc.is_local_main_process
        self.tb = None
        if cfg.log.tensorboard and acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "logs"))
        self.losses = LossLog()
        self.ema: float | None = None
        self.bar: Any = None
        self._redirect: Any = None
        self.start_step, self.t0 = 0, time.perf_counter()

    def open(self, step: int) -> None:
        """Start the progress output at ``step`` (after a resume, the bar and the rate continue from there)."""
        self.start_step, self.t0 = step, time.perf_counter()
        if self.show and sys.stderr.isatty():
            self.bar = tqdm(total=self.total, initial=step, desc="train", dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar instead of breaking it
            self._redirect.__enter__()

    def rate(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.t0, 1e-9)

    def step(self, step: int, epoch: int, lrs: list[float]) -> None:
        """One optimizer step done: scalars that need no sync now, the loss at log steps."""
        self.losses.end_step(step, epoch)
        if self.tb is not None and step % self.every == 0:
            self.tb.add_scalar("epoch", epoch, step)
            self.tb.add_scalar("perf/steps_per_s", self.rate(step), step)
            for i, lr in enumerate(lrs):
                self.tb.add_scalar(f"lr/group{i}", lr, step)
        if self.bar is not None:
            self.bar.update(1)
        if step % self.print_every == 0 or step == self.total:
            self.flush()
            self._report(step, epoch, lrs)

    def flush(self) -> None:
        """Read the pending losses (a device sync); stop on a non-finite loss with the last good state."""
        values, bad = self.losses.read()
        if self.acc.num_processes > 1:
            flag = torch.tensor([0 if bad is None else 1], device=self.acc.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bad or ((values[-1][0] if values else 0, -1, float("nan")) if int(flag.item()) else None)
        if bad is not None:
            step, epoch, value = bad
            raise TrainingError(f"the loss became {value} at step {step} (epoch {epoch}); stopped. The last good "
                                f"state is {latest_state(self.out) or 'none (no state saved yet)'}. Lower the "
                                "learning rate, check the data, or use mixed_precision = 'bf16' instead of fp16.")
        for step, value in values:
            self.ema = value if self.ema is None else 0.98 * self.ema + 0.02 * value
            if self.tb is not None and step % self.every == 0:
                self.tb.add_scalar("loss/step", value, step)
                self.tb.add_scalar("loss/ema", self.ema, step)

    def _report(self, step: int, epoch: int, lrs: list[float]) -> None:
        if self.ema is None or not self.show:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.ema:.4f}", lr=f"{lrs[0]:.2e}", epoch=epoch)
            return
        rate = self.rate(step)
        left = (self.total - step) / rate if rate > 0 else 0.0
        log.info("lyco: step %d/%d (epoch %d): loss %.4f (ema), lr %.2e, %.2f steps/s, %s left", step, self.total,
                 epoch, self.ema, lrs[0], rate, time.strftime("%H:%M:%S", time.gmtime(left)))

    def image(self, tag: str, image: Any, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
