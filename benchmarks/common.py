"""Shared pieces of the benchmark scripts: machine description, round-robin timing, peak memory, result files.

Timing is always round-robin (rep k of every contender before rep k+1 of any) with medians, so drift of a shared
machine hits every contender alike and the printed ratios stay fair; absolute times are not the point.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RESULTS = Path(__file__).parent / "results"


def machine(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "no GPU used"
    import lyco
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, {gpu}; "
            f"torch {torch.__version__}, lyco {lyco.__version__}, Python {platform.python_version()}")


def load_note() -> str:
    """The machine's load average: on a shared machine absolute times mean little, ratios still do."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return ""
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs at the start"


def cuda_ok(device: str) -> bool:
    """False (with a message) when --device cuda was asked for but no GPU is present: the caller exits cleanly."""
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available here; nothing to benchmark (skipped).")
        return False
    return True


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def round_robin(steps: dict[str, Callable[[], object]], reps: int, warmup: int, device: str = "cpu",
                clock: str = "wall", log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Times of ``reps`` calls of every step, interleaved (rep k of every step before rep k+1 of any, the order
    rotated each rep); ``warmup`` untimed calls each first."""
    tick = CLOCKS[clock]
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for rep in range(reps):
        # rotate the order every rep: no contender always runs right after the same other one
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            fn = steps[name]
            t0 = tick()
            fn()
            sync(device)
            times[name].append(tick() - t0)
        if log:
            log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return times


def median(v: list[float]) -> float:
    return statistics.median(v)


def geo_mean(vals) -> float:
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Give freed heap memory back to the OS so that an RSS baseline is not inflated by earlier steps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def transient_peak(fn: Callable[[], object], device: str) -> int:
    """Bytes a call of ``fn`` needs above what is resident before it: CUDA max_memory_allocated, on CPU the RSS
    sampled every millisecond (after returning freed heap memory to the OS)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    _trim()
    base = peak = _rss()
    done = threading.Event()

    def poll():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak, _rss()) - base


def write_result(name: str, md: str, out: str | Path | None = None) -> Path:
    d = Path(out) if out else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M')}.md"
    path.write_text(md)
    return path


def publish(name: str, lines: list[str], out: str | Path | None = None) -> int:
    """Print the result table and write it to ``results/`` (or ``out``); the script's exit status."""
    md = "\n".join(lines)
    path = write_result(name, md + "\n", out)
    print(md)
    print(f"\nwrote {path}")
    return 0


def header(title: str, device: str, note: str = "") -> list[str]:
    lines = [f"# {title}", "", f"Machine: {machine(device)}",
             f"Date: {dt.datetime.now().isoformat(timespec='minutes')}",
             f"Command: `python {' '.join(sys.argv)}`"]
    load = load_note()
    if load:
        lines.append(f"Load: {load}")
    if note:
        lines += ["", note]
    return lines + [""]
