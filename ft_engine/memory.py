"""Memory readings that go into every metrics row and into status.json.

On a CUDA device we read the PyTorch allocator (what tensors use) and its reserve; on CPU the
process's resident set (RSS) and its peak (VmHWM). Linux lets a process reset its own VmHWM
(`echo 5 > /proc/self/clear_refs`), so a run's CPU peak is its own and not that of whatever
the process did before (such as loading another model for a chat).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
from pathlib import Path
from typing import Iterator

import psutil

from .units import MIB

log = logging.getLogger(__name__)

# A one-process run trains on the first GPU that CUDA_VISIBLE_DEVICES shows
# (training.OneDeviceArguments); its memory is read there, whatever else (a chat model on another
# GPU) is allocated elsewhere. A process of a run of several trains on GPU LOCAL_RANK.
TRAIN_GPU = 0


def train_gpu() -> int:
    """The GPU this process trains on: TRAIN_GPU, or its local rank in a run of several."""
    return int(os.environ.get("LOCAL_RANK", TRAIN_GPU) or TRAIN_GPU)
# What the training GPU held when the run's measurement began (`reset_peak`): a chat model,
# another model not yet collected. A run's readings are its own, over and above this.
_cuda_baseline = {"allocated": 0, "reserved": 0}

# glibc's mallopt parameters (malloc.h) and its largest dynamic mmap threshold on 64-bit Linux.
_M_MMAP_THRESHOLD = -3
GLIBC_MMAP_THRESHOLD_MAX = 32 * MIB
# Memory-first runs (adamw_lean on a CPU): every block of at least this size gets its own
# mapping, returned to the OS when freed. glibc's default threshold rises with each large free
# up to 32 MiB, after which a step's layer-sized tensors come from its heap, and memory freed
# mid-heap stays resident: the Llama-3.2-1B shape, full fine-tune with adamw_lean at 1x512,
# peaked at 7,279 MiB (6,394 with this; with checkpointing 7,705 and 6,040), at the price of
# page faults: its steps ran ~30% slower (bench/forecast_accuracy.py --only 1b --only 1x512
# --variant lean --variant lean-ckpt, 2026-12-02).
LEAN_MMAP_THRESHOLD = 1 * MIB


def _glibc():
    """The C library when it is glibc (mallopt and malloc_trim exist), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (AttributeError where the C library is not glibc)
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def cpu_blocks_returned_when_freed(threshold: int = LEAN_MMAP_THRESHOLD) -> Iterator[bool]:
    """Within the block, CPU allocations of at least `threshold` bytes are mapped on their own
    and go back to the OS when freed (see LEAN_MMAP_THRESHOLD); after it, the threshold is
    glibc's largest dynamic one, where a long-running process ends up anyway, and freed memory
    is trimmed. Yields False (and changes nothing) where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


def device_kind() -> str:
    import torch  # imported here: the studio reads memory before anything loads torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def reset_peak() -> bool:
    """Start a new peak measurement. Returns False where the OS can't reset the CPU peak,
    in which case the CPU peak covers the whole process lifetime (and is labelled so)."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(train_gpu())
        _cuda_baseline.update(allocated=torch.cuda.memory_allocated(train_gpu()),
                              reserved=torch.cuda.memory_reserved(train_gpu()))
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> int:
    """VmHWM from /proc (resettable), else ru_maxrss (KiB on Linux, lifetime peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux: fall through to getrusage, which every POSIX system has
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def snapshot() -> dict[str, float]:
    """Memory now and peak since `reset_peak`, in MiB, named by what was measured."""
    import sys
    torch = sys.modules.get("torch")  # no torch loaded yet means no CUDA memory in use either
    if torch is not None and torch.cuda.is_available():
        # the peak counters start at what was allocated at reset_peak: take that out, so a
        # model loaded before the run (a chat's) is not counted as the run's
        allocated, reserved = _cuda_baseline["allocated"], _cuda_baseline["reserved"]

        def mib(now: int, before: int) -> float:
            return round(max(now - before, 0) / MIB, 1)
        return {
            "mem_device": "cuda",
            "mem_used_mib": mib(torch.cuda.memory_allocated(train_gpu()), allocated),
            "mem_peak_mib": mib(torch.cuda.max_memory_allocated(train_gpu()), allocated),
            "mem_reserved_mib": mib(torch.cuda.memory_reserved(train_gpu()), reserved),
            "mem_peak_reserved_mib": mib(torch.cuda.max_memory_reserved(train_gpu()), reserved),
            "mem_baseline_mib": round(allocated / MIB, 1),
        }
    rss = psutil.Process().memory_info().rss
    return {
        "mem_device": "cpu",
        "mem_used_mib": round(rss / MIB, 1),
        "mem_peak_mib": round(max(_cpu_peak_bytes(), rss) / MIB, 1),
    }
