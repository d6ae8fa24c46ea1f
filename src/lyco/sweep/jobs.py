"""The units of work a sweep hands to an executor, and :func:`execute`, which runs one of them in a child process
(``python -m lyco.sweep.child ...``) with its thread budget and devices, logging to ``<out>/logs/``.

A job is plain picklable data, so a Ray task can run :func:`execute` on any machine that sees the sweep folder;
a retried training job decides again from the run's files whether to start, resume or do nothing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .manifest import log_attempt, now
from .spec import RunSpec
from .state import FINISHED, run_state, train_args, try_lock, write_run_config

#: seconds a job waits for the run lock (a trainer of a killed worker may still be exiting)
LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class TrainJob:
    run: RunSpec
    out: Path

    @property
    def key(self) -> str:
        return self.run.name


@dataclass(frozen=True)
class EvalShardJob:
    index: int
    config_file: Path
    out: Path
    with_base: bool

    @property
    def key(self) -> str:
        return f"eval-shard-{self.index}"


Job = TrainJob | EvalShardJob


@dataclass(frozen=True)
class Resources:
    threads: int
    #: CUDA_VISIBLE_DEVICES for the child; None leaves the environment's (Ray sets it for its tasks)
    devices: str | None = None


@dataclass
class JobResult:
    key: str
    ok: bool
    returncode: int | None = None
    seconds: float = 0.0
    note: str = ""
    devices: str = ""
    skipped: bool = False


def child_env(res: Resources) -> dict[str, str]:
    env = dict(os.environ)
    n = str(res.threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, LYCO_NUM_THREADS=n,
               PYTHONUNBUFFERED="1", LYCO_SWEEP_PARENT=str(os.getpid()), TOKENIZERS_PARALLELISM="false")
    if res.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = res.devices
    return env


class Children:
    """The child processes running now (so an interrupted driver can stop them cleanly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def interrupt_all(self) -> None:
        """SIGINT to every child: a trainer saves a resumable state and exits."""
        with self._lock:
            for p in self._procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)


def _stop(proc: subprocess.Popen, grace_s: float = 120.0) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn(args: list[str], res: Resources, log_file: Path, keep_open: tuple[int, ...] = (),
          children: Children | None = None) -> int:
    """Run ``lyco <args>`` in a child process (its own session: the driver decides when it is interrupted); its
    output is appended to ``log_file``."""
    env = child_env(res)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lyco.sweep.child", *args]
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"\n=== {now()} pid {os.getpid()} threads {res.threads} CUDA_VISIBLE_DEVICES="
                  f"{env.get('CUDA_VISIBLE_DEVICES', '(unset)')}: lyco {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=keep_open,
                                start_new_session=True)
        if children is not None:
            children.add(proc)
        try:
            return proc.wait()
        except BaseException:           # Ctrl-C / SIGTERM in this thread (or a cancelled Ray task): stop the child
            _stop(proc)
            raise
        finally:
            if children is not None:
                children.discard(proc)


def _wait_lock(run: RunSpec):
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        lock = try_lock(run)
        if lock is not None or time.monotonic() > deadline:
            return lock
        time.sleep(1.0)


def execute_train(job: TrainJob, res: Resources, children: Children | None = None) -> JobResult:
    run, t0 = job.run, time.perf_counter()
    devices = res.devices if res.devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    lock = _wait_lock(run)
    if lock is None:
        return JobResult(run.name, False, note=f"another process is training {run.dir} (its lock is held)")
    try:
        st = run_state(run, check_lock=False)
        args = train_args(run, st)
        if args is None:
            ok = st.state == FINISHED
            return JobResult(run.name, ok, skipped=True, note=st.state if ok else st.note, devices=devices)
        write_run_config(run)
        log_attempt(job.out, run.name, event="start", state=st.state, args=args, devices=devices,
                    threads=res.threads, last_state=st.last_state)
        rc = spawn(args, res, job.out / "logs" / f"{run.name}.log", keep_open=(lock.fileno(),), children=children)
        after = run_state(run, check_lock=False)
        ok = rc == 0 and after.state == FINISHED
        secs = time.perf_counter() - t0
        log_attempt(job.out, run.name, event="end", returncode=rc, state=after.state, seconds=round(secs, 2))
        note = "" if ok else (f"lyco train exited with {rc}" if rc else f"ended {after.state}") + \
            f"; see {job.out / 'logs' / (run.name + '.log')}"
        return JobResult(run.name, ok, rc, secs, note, devices)
    finally:
        lock.close()


def execute_shard(job: EvalShardJob, res: Resources, children: Children | None = None) -> JobResult:
    t0 = time.perf_counter()
    args = ["_eval-shard", str(job.config_file)] + (["--with-base"] if job.with_base else [])
    rc = spawn(args, res, job.out / "logs" / f"{job.key}.log", children=children)
    note = "" if rc == 0 else f"exited with {rc}; see {job.out / 'logs' / (job.key + '.log')}"
    devices = res.devices if res.devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return JobResult(job.key, rc == 0, rc, time.perf_counter() - t0, note, devices)


def execute(job: Job, res: Resources, children: Children | None = None) -> JobResult:
    """Run one job to its end (no retries here: executors retry)."""
    if isinstance(job, TrainJob):
        return execute_train(job, res, children)
    return execute_shard(job, res, children)
