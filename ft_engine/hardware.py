"""What the machine has right now, for the studio's gauges: GPUs through NVML (pynvml), or
system RAM and this process's memory when there is no NVIDIA GPU ("CPU mode")."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil

from . import memory

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass
class GpuReading:
    index: int
    name: str
    used_mib: float
    total_mib: float
    utilization_percent: float


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
