"""Memory readings that go into every metrics row and into status.json.

On a CUDA device we read the PyTorch allocator (what tensors use) and its reserve; on CPU the
process's resident set (RSS) and its peak (VmHWM). Linux lets a process reset its own VmHWM
(`echo 5 > /proc/self/clear_refs`), so a run's CPU peak is its own and not that of whatever
the process did before (such as loading another model for a chat).
"""

from __future__ import annotations

import resource
from pathlib import Path

import psutil

MIB = 1024 * 1024


def device_kind() -> str:
    import torch  # imported here: the studio reads memory before anything loads torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def reset_peak() -> bool:
    """Start a new peak measurement. Returns False where the OS can't reset the CPU peak,
    in which case the CPU peak covers the whole process lifetime (and is labelled so)."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
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
        return {
            "mem_device": "cuda",
            "mem_used_mib": round(torch.cuda.memory_allocated() / MIB, 1),
            "mem_peak_mib": round(torch.cuda.max_memory_allocated() / MIB, 1),
            "mem_reserved_mib": round(torch.cuda.memory_reserved() / MIB, 1),
            "mem_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / MIB, 1),
        }
    rss = psutil.Process().memory_info().rss
    return {
        "mem_device": "cpu",
        "mem_used_mib": round(rss / MIB, 1),
        "mem_peak_mib": round(max(_cpu_peak_bytes(), rss) / MIB, 1),
    }
