"""Energy meters: the estimate on a real CPU-bound workload; RAPL and NVML where the hardware is."""

from __future__ import annotations

import os
import time

import pytest

from convergence.platform import energy
from convergence.platform.energy import Meter
from convergence.platform.settings import get_settings


def _burn(seconds: float) -> None:
    """A real CPU-bound workload on this thread."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += sum(i * i for i in range(2000))


def test_estimate_follows_the_cpu_time_the_os_reports() -> None:
    readings = []
    for seconds in (0.3, 0.9):
        t0 = os.times()
        with Meter() as meter:
            _burn(seconds)
        t1 = os.times()
        own = (t1.user + t1.system) - (t0.user + t0.system)
        r = meter.reading
        assert r is not None and r.cpu_s > 0 and r.kwh > 0 and r.gco2e > 0 and r.wall_s > 0
        # The meter's scope (cgroup or machine) contains this process, so it sees at least our CPU time,
        # and no more than every core busy for the whole interval.
        assert own * 0.9 <= r.cpu_s <= r.wall_s * (os.cpu_count() or 1) * 1.1 + 0.05
        if not energy._rapl_domains() and not r.method.startswith("nvml"):
            assert r.method == "estimate" and not r.measured
            assert r.kwh == pytest.approx(r.cpu_s * get_settings().watts_per_core / 3.6e6)
        readings.append(r)
    assert readings[1].cpu_s > readings[0].cpu_s and readings[1].kwh > readings[0].kwh  # monotonic in work
    assert readings[0].gco2e == pytest.approx(readings[0].kwh * get_settings().carbon_g_per_kwh)


def test_process_scope_counts_this_process() -> None:
    scope, read = energy._process()
    before = read()
    _burn(0.2)
    assert read() - before >= 0.18 and "process" in scope


def test_rapl_when_readable() -> None:
    if not energy._rapl_domains():
        pytest.skip("no readable RAPL counters under /sys/class/powercap on this machine")
    with Meter() as meter:
        _burn(0.3)
    assert meter.reading is not None and meter.reading.measured and "rapl" in meter.reading.method
    assert meter.reading.kwh > 0


def test_nvml_when_a_gpu_is_present() -> None:
    if not energy._gpu_mj():
        pytest.skip("no NVIDIA GPU with NVML energy counters visible here")
    with Meter() as meter:
        time.sleep(0.2)
    assert meter.reading is not None and "nvml" in meter.reading.method and meter.reading.gpu_s > 0


def test_describe_says_what_is_measured() -> None:
    info = energy.describe_meters()
    measured = bool(energy._rapl_domains()) or bool(energy._gpu_mj())
    assert (info["method"] == "estimate") is not measured  # an estimate is never presented as a measurement
    assert info["cpu_scope"] == energy.cpu_clock()[0]
    with Meter() as meter:
        pass
    assert meter.reading is not None and meter.reading.measured == bool(energy._rapl_domains())
