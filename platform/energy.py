"""Energy and compute meters: measured where the hardware says, estimated otherwise, and labelled.

Chosen once per process: NVML energy counters per GPU (nvidia-ml-py) when a GPU is visible; RAPL
package energy from the Linux powercap interface when readable; otherwise an **estimate** from CPU
time × ``CVG_WATTS_PER_CORE``. CPU time is read at the widest scope that covers Ray's worker
processes too: this process's cgroup (the pod, in Kubernetes) when readable, else the machine's
/proc/stat, else this process and its children. Every reading carries its method and scope.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import time
from pathlib import Path
from typing import Any

from convergence.platform.settings import get_settings

__all__ = ["Meter", "Reading", "cpu_clock", "describe_meters"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _own_cgroup(controller: str) -> Path | None:
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        _, names, rel = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return Path(rel)
    return None


def _cgroup_v2() -> tuple[str, Any] | None:
    rel = _own_cgroup("")
    if rel is None:
        return None
    path = Path("/sys/fs/cgroup") / rel.relative_to("/") / "cpu.stat"
    if _read(path) is None:
        return None

    def read() -> float:
        for line in (_read(path) or "").splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
        raise OSError("usage_usec missing")

    return f"cgroup v2 {rel}", read


def _cgroup_v1() -> tuple[str, Any] | None:
    rel = _own_cgroup("cpuacct")
    if rel is None:
        return None
    path = Path("/sys/fs/cgroup/cpuacct") / rel.relative_to("/") / "cpuacct.usage"
    if _read(path) is None:
        return None
    return f"cgroup v1 {rel}", lambda: int((_read(path) or "0").strip()) / 1e9


def _proc_stat() -> tuple[str, Any] | None:
    if _read(Path("/proc/stat")) is None:
        return None

    def read() -> float:
        fields = (_read(Path("/proc/stat")) or "").splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / _CLK_TCK

    return "machine (/proc/stat)", read


def _process() -> tuple[str, Any]:
    def read() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    return "this process and its children", read


@functools.cache
def cpu_clock() -> tuple[str, Any]:
    """(scope, read) for the widest readable CPU-seconds counter."""
    for probe in (_cgroup_v2, _cgroup_v1, _proc_stat):
        found = probe()
        if found is not None:
            try:
                found[1]()
                return found
            except (OSError, ValueError, IndexError):
                continue
    return _process()


@functools.cache
def _rapl_domains() -> list[tuple[Path, int]]:
    base = Path("/sys/class/powercap")
    domains = []
    for energy in sorted(base.glob("intel-rapl:*/energy_uj")) if base.is_dir() else []:
        if ":" in energy.parent.name.split("intel-rapl:", 1)[1]:
            continue  # sub-domains (core, uncore) are inside their package's counter
        raw, limit = _read(energy), _read(energy.parent / "max_energy_range_uj")
        if raw is not None and raw.strip().isdigit():
            domains.append((energy, int(limit) if limit and limit.strip().isdigit() else 2**32))
    return domains


def _rapl_joules() -> list[int]:
    return [int((_read(path) or "0").strip()) for path, _ in _rapl_domains()]


@functools.cache
def _nvml() -> Any:
    try:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)] if count else None
    except Exception:  # no package, no driver, no GPU: all mean "not available"
        return None


def _gpu_mj() -> list[int] | None:
    found = _nvml()
    if not found or not found[1]:
        return None
    pynvml, handles = found
    try:
        return [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
    except Exception:
        return None


def describe_meters() -> dict[str, Any]:
    """What metering will use here (for ``cvg doctor``)."""
    scope, _ = cpu_clock()
    gpus = _gpu_mj()
    return {"cpu_scope": scope, "rapl": bool(_rapl_domains()), "nvml_gpus": len(gpus) if gpus else 0,
            "method": "+".join(m for m, on in (("nvml", bool(gpus)), ("rapl", bool(_rapl_domains()))) if on)
                      or "estimate", "watts_per_core": get_settings().watts_per_core}


@dataclasses.dataclass(frozen=True)
class Reading:
    wall_s: float
    cpu_s: float
    gpu_s: float
    kwh: float
    gco2e: float
    peak_mem_mb: float
    method: str  # "rapl", "nvml", "nvml+rapl" (measured) or "estimate"
    measured: bool
    scope: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Meter:
    """Start/stop around a piece of work: ``with Meter() as m: …``; then ``m.reading``."""

    def __init__(self) -> None:
        self.scope, self._cpu = cpu_clock()
        self.reading: Reading | None = None

    def start(self) -> Meter:
        self._t0, self._c0 = time.perf_counter(), self._cpu()
        self._rapl0, self._gpu0 = _rapl_joules(), _gpu_mj()
        return self

    def stop(self) -> Reading:
        settings = get_settings()
        wall, cpu = time.perf_counter() - self._t0, max(self._cpu() - self._c0, 0.0)
        joules, methods = 0.0, []
        if self._gpu0 is not None:
            now = _gpu_mj() or self._gpu0
            joules += sum(b - a for a, b in zip(self._gpu0, now)) / 1000
            methods.append("nvml")
        if self._rapl0:
            for (path, limit), a, b in zip(_rapl_domains(), self._rapl0, _rapl_joules()):
                joules += ((b - a) % limit) / 1e6  # the counter wraps at max_energy_range_uj
            methods.append("rapl")
        else:
            joules += cpu * settings.watts_per_core  # CPU energy estimated when RAPL cannot be read
        gpu_s = wall * len(self._gpu0) if self._gpu0 else 0.0
        kwh = joules / 3.6e6
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        measured = bool(methods) and bool(self._rapl0)
        method = "+".join(methods + ([] if self._rapl0 else ["estimate"]))
        self.reading = Reading(wall, cpu, gpu_s, kwh, kwh * settings.carbon_g_per_kwh, peak, method, measured,
                               self.scope)
        return self.reading

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
