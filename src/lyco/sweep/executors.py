"""Executors: where jobs run.  Both retry a failed job (the retry decides again from the run's files, so a
training run resumes from its last state) and go on with the other jobs.

* :class:`LocalExecutor` (default, no extra dependency): ``jobs`` child processes at a time, each with
  ``threads // jobs`` CPU threads and, on a GPU machine, its own ``gpus_per_run`` GPUs (``CUDA_VISIBLE_DEVICES``).
* :class:`RayExecutor` (``pip install 'lyco[ray]'``): every job a Ray core task asking for ``cpus_per_run`` CPUs
  and ``gpus_per_run`` GPUs; the child process inherits the devices Ray assigned.  Ray retries a task whose worker
  died or that failed (``max_retries``).  The sweep folder must be on a filesystem every node sees.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch

from ..errors import ConfigError
from .config import ExecutorConfig
from .jobs import Children, Job, JobResult, Resources, execute

log = logging.getLogger("lyco")
OnResult = Callable[[JobResult], None]


def cpu_budget() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU only
        return []


class LocalExecutor:
    name = "local"

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.jobs = cfg.jobs
        self.retries = cfg.max_retries
        gpus = visible_gpus()
        self.gpus_per_run = cfg.gpus_per_run if cfg.gpus_per_run is not None else (1 if gpus else 0)
        if self.gpus_per_run and len(gpus) < self.gpus_per_run * self.jobs:
            raise ConfigError(f"--jobs {self.jobs} with {self.gpus_per_run} GPU(s) per run needs "
                              f"{self.gpus_per_run * self.jobs} GPUs; this machine has {len(gpus)} "
                              f"({', '.join(gpus) or 'none'}); lower --jobs or gpus_per_run")
        self.gpus = gpus
        self.threads = max(1, (cfg.threads or cpu_budget()) // self.jobs)
        self.hide_gpus = bool(gpus) and self.gpus_per_run == 0

    @property
    def slots(self) -> int:
        return self.jobs

    def final_resources(self) -> Resources:
        """For a step that runs alone after the jobs (the evaluation's metrics): one job's share."""
        return Resources(self.threads, self.gpus[0] if self.gpus_per_run else ("" if self.hide_gpus else None))

    def describe(self) -> str:
        dev = f", {self.gpus_per_run} GPU(s) each" if self.gpus_per_run else ""
        return f"local executor: {self.jobs} job(s) at a time, {self.threads} thread(s) each{dev}"

    def map(self, jobs: Sequence[Job], on_result: OnResult) -> list[JobResult]:
        """Run ``jobs`` (``self.jobs`` at a time), retrying failures; Ctrl-C interrupts the running children
        (a trainer saves its state), starts nothing new and raises KeyboardInterrupt once they have exited."""
        slots: queue.Queue[list[str]] = queue.Queue()
        for i in range(self.jobs):
            slots.put(self.gpus[i * self.gpus_per_run:(i + 1) * self.gpus_per_run])
        stop, children = threading.Event(), Children()

        def work(job: Job) -> JobResult:
            ids = slots.get()
            try:
                devices = ",".join(ids) if self.gpus_per_run else ("" if self.hide_gpus else None)
                res = Resources(self.threads, devices)
                result = execute(job, res, children)
                for attempt in range(self.retries):
                    if result.ok or stop.is_set():
                        break
                    log.warning("lyco sweep: %s failed (%s); retry %d of %d", job.key, result.note, attempt + 1,
                                self.retries)
                    result = execute(job, res, children)
                return result
            finally:
                slots.put(ids)

        results: list[JobResult] = []
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="lyco-sweep")
        futures = {pool.submit(work, j): j for j in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    r = fut.result()
                except Exception as exc:  # noqa: BLE001 - one job's crash must not stop the others
                    r = JobResult(futures[fut].key, False, note=f"{type(exc).__name__}: {exc}")
                on_result(r)
                results.append(r)
        except KeyboardInterrupt:
            stop.set()
            for fut in futures:
                fut.cancel()
            children.interrupt_all()
            log.warning("lyco sweep: interrupted; waiting for the running jobs to save their state")
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)
        return results


class JobFailed(RuntimeError):
    """Raised inside a Ray task so that Ray retries it."""


def _ray_task(job: Job, threads: int) -> JobResult:
    result = execute(job, Resources(threads, None))
    if not result.ok:
        raise JobFailed(f"{job.key}: {result.note}")
    return result


class RayExecutor:
    name = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'lyco[ray]' (or pip install 'ray>=2.9')") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - no cluster at that address, bad address, ...
                raise ConfigError(f"Ray: cannot start or join a cluster at {cfg.address or 'a local instance'} "
                                  f"({type(exc).__name__}: {exc}); start one with 'ray start --head' or leave out "
                                  "--address to start a local instance") from None
        res = ray.cluster_resources()
        self.cpus = cfg.cpus_per_run
        self.gpus_per_run = cfg.gpus_per_run if cfg.gpus_per_run is not None else (1 if res.get("GPU", 0) >= 1 else 0)
        if self.gpus_per_run > res.get("GPU", 0):
            raise ConfigError(f"gpus_per_run = {self.gpus_per_run} but the Ray cluster has {res.get('GPU', 0):g} GPUs")
        by_cpu = int(res.get("CPU", 1) // self.cpus)
        by_gpu = int(res.get("GPU", 0) // self.gpus_per_run) if self.gpus_per_run else by_cpu
        self._slots = max(1, min(by_cpu, by_gpu))
        self.retries = cfg.max_retries

    @property
    def slots(self) -> int:
        return self._slots

    def final_resources(self) -> Resources:
        return Resources(self.cpus, None)

    def describe(self) -> str:
        dev = f", {self.gpus_per_run} GPU(s)" if self.gpus_per_run else ""
        return f"Ray executor: tasks of {self.cpus} CPU(s){dev}, up to {self._slots} at a time, {self.retries} retries"

    def map(self, jobs: Sequence[Job], on_result: OnResult) -> list[JobResult]:
        ray = self.ray
        task = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus_per_run,
                                             max_retries=self.retries, retry_exceptions=True)
        pending = {task.remote(j, self.cpus): j for j in jobs}
        results: list[JobResult] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                r = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - failed after its retries: reported, the rest goes on
                msg = str(exc).strip().splitlines()
                r = JobResult(job.key, False, note=f"failed after {self.retries} retries: {msg[-1] if msg else exc}")
            on_result(r)
            results.append(r)
        return results


def make_executor(cfg: ExecutorConfig) -> LocalExecutor | RayExecutor:
    return RayExecutor(cfg) if cfg.kind == "ray" else LocalExecutor(cfg)
