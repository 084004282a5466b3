"""What the machine has right now, for the studio's gauges: GPUs through NVML (pynvml), or
system RAM and this process's memory when there is no NVIDIA GPU ("CPU mode"); and the memory
free for a run, which the memory forecast (ft_engine/forecast/) compares its estimate with."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import memory
from .errors import UserError
from .units import MIB

log = logging.getLogger(__name__)


@dataclass
class GpuReading:
    index: int
    name: str
    used_mib: float
    total_mib: float
    utilization_percent: float


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AVX512-BF16 or AMX-BF16). Where it has
    them, bf16 matmuls run ~2.2× faster than fp32 (this machine, 2 cores AVX512-BF16:
    ~400 vs ~180 GFLOP/s); where it has not, torch emulates bf16 and it is slower than fp32.
    Read from /proc/cpuinfo (Linux); elsewhere we do not know, and say no."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


# bf16 tensor cores arrived with compute capability 8.0 (Ampere: A100, A10G, L4, RTX 30xx/40xx).
BF16_MIN_CAPABILITY = (8, 0)


def cuda_has_native_bf16(device: int | None = None) -> bool:
    """True when the GPU runs bf16 on tensor cores (compute capability >= 8.0). Not
    torch.cuda.is_bf16_supported(): in torch 2.13 it also answers True on a T4 (7.5), where
    bf16 is emulated without tensor cores and trains several times slower than fp16."""
    import torch
    return torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY


def gpu_readings() -> list[GpuReading]:
    """One reading per NVIDIA GPU; [] when there is none (NVML missing or no driver)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:  # no GPU / no driver: CPU mode, which the gauges say plainly
        log.debug("no NVIDIA GPU: %s", e)
        return []
    try:
        readings = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            name = pynvml.nvmlDeviceGetName(h)
            readings.append(GpuReading(i, name.decode() if isinstance(name, bytes) else name,
                                       mem.used / MIB, mem.total / MIB, float(util.gpu)))
        return readings
    finally:
        pynvml.nvmlShutdown()


def machine_snapshot() -> dict:
    """GPUs (if any), system RAM, and this process's memory now and at its peak."""
    vm = psutil.virtual_memory()
    proc = memory.snapshot()
    gpus = gpu_readings()
    return {
        "mode": "gpu" if gpus else "cpu",
        "gpus": [g.__dict__ for g in gpus],
        "ram_used_mib": round((vm.total - vm.available) / MIB, 1),
        "ram_total_mib": round(vm.total / MIB, 1),
        "process_used_mib": proc["mem_used_mib"],
        "process_peak_mib": proc["mem_peak_mib"],
        "cpu_percent": psutil.cpu_percent(interval=None),
    }


# --- what is available for a run (the forecast's verdict compares with it) -------------------

def available_memory(device: str | None = None) -> tuple[str, int | None, str]:
    """(device, free bytes, label): the GPU with the most free memory (NVML via
    gpu_readings), else the system RAM available (psutil). bytes is None when a
    CUDA forecast is asked for on a machine with no visible NVIDIA GPU."""
    if device in (None, "cuda"):
        gpus = gpu_readings()
        if gpus:
            g = max(gpus, key=lambda r: r.total_mib - r.used_mib)
            free = int((g.total_mib - g.used_mib) * MIB)
            return "cuda", free, f"GPU {g.index} {g.name}: {free / MIB:,.0f} MiB free of {g.total_mib:,.0f} MiB"
        if device == "cuda":
            return "cuda", None, "no NVIDIA GPU visible here (NVML): cannot compare with free GPU memory"
    vm = psutil.virtual_memory()
    free, label = int(vm.available), f"system RAM: {vm.available / MIB:,.0f} MiB available of {vm.total / MIB:,.0f} MiB"
    cap = memory_cap()
    if cap is not None and cap[0] < free:
        free, label = cap[0], f"{cap[1]}: {cap[0] / MIB:,.0f} MiB available"
    return "cpu", free, label


def memory_cap() -> tuple[int, str] | None:
    """(bytes, where from) when this process may use less than the machine's free RAM: a
    container's cgroup limit (Docker, Hugging Face Spaces: psutil sees the host's RAM there),
    or FT_MEMORY_LIMIT_MIB, set by whoever hosts the studio to plan within a smaller budget."""
    caps = []
    env = os.environ.get("FT_MEMORY_LIMIT_MIB", "").strip()
    if env:
        try:
            caps.append((int(float(env) * MIB), f"FT_MEMORY_LIMIT_MIB={env}"))
        except ValueError:
            raise UserError(f"FT_MEMORY_LIMIT_MIB must be a number of MiB such as 8000, got {env!r}") from None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue  # no such cgroup version here
        if limit.isdigit() and int(limit) < (1 << 60):  # "max" or a huge number mean no limit
            caps.append((max(0, int(limit) - int(usage)), "container memory limit"))
        break
    return min(caps) if caps else None


def available_bytes(available) -> int | None:
    """The bytes of `available` as the forecast takes it: bytes, None (unknown), or the tuple
    `available_memory` returns."""
    if isinstance(available, tuple):
        return available[1]
    return available

