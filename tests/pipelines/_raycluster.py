"""A real two-node Ray cluster on one machine: a head and a worker in two network namespaces joined by a veth
pair (iproute2), one CPU each, for the cluster tests and ``bench/ray_cluster_bench.py``.

Only the network is separate: both nodes share the filesystem (so Ray Train's storage path and a SQLite file
serve as shared storage), the process table and the host name. That name resolves to loopback, so each node names
its interface for Gloo (DDP's rendezvous), which a cluster whose host names resolve would not need. The cluster
uses Ray's token authentication with a token of its own, as a secured cluster would, so a token another Ray left
in ~/.ray cannot decide the mode. Teardown goes by namespace: the processes in our two namespaces are ended by
their ids, never with ``ray stop`` (which ends every Ray process on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEAD_IP, WORKER_IP, PORT = "10.77.0.1", "10.77.0.2", 6379
RAY = str(Path(sys.executable).with_name("ray"))
# The GCS declares a silent node dead after about 2 s (Ray's default is about 15 s).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                      "RAY_health_check_failure_threshold": "4"}


def cannot_make_namespaces() -> str | None:
    """Why this machine cannot make network namespaces (not root, no iproute2), or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"cvg-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class RayCluster:
    """Two namespaces (``head_ns``, ``worker_ns``), a Ray head in the first and a worker in the second."""

    def __init__(self, *, object_store_mb: int = 300) -> None:
        tag = str(os.getpid())
        self.head_ns, self.worker_ns = f"cvg-head-{tag}", f"cvg-wkr-{tag}"
        self.veth = (f"cvg{tag}h", f"cvg{tag}w")
        self.root = Path(tempfile.mkdtemp(prefix="cvgray-"))  # short: Ray's socket paths must fit 107 bytes
        self.object_store = str(object_store_mb * 1024 * 1024)
        self.address = f"{HEAD_IP}:{PORT}"
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.worker_starts = 0

    def start(self, *, worker: bool = True) -> RayCluster:
        """The namespaces and the head node (and, with ``worker``, the worker node); undone on failure."""
        try:
            for ns in (self.head_ns, self.worker_ns):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            head_if, worker_if = self.veth
            _ip("link", "add", head_if, "type", "veth", "peer", "name", worker_if)
            for ns, dev, addr in ((self.head_ns, head_if, HEAD_IP), (self.worker_ns, worker_if, WORKER_IP)):
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
            self._ray_start(self.head_ns, ["--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}",
                                           "--include-dashboard=false"], self.root / "h",
                            {**FAST_HEALTH_CHECKS, "GLOO_SOCKET_IFNAME": head_if})
            if worker:
                self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self) -> None:
        """Join (or, after a kill, rejoin as a new node) the worker in its namespace; a fresh temp dir each time."""
        self.worker_starts += 1
        self._ray_start(self.worker_ns, [f"--address={self.address}", f"--node-ip-address={WORKER_IP}"],
                        self.root / f"w{self.worker_starts}", {"GLOO_SOCKET_IFNAME": self.veth[1]})

    def worker_alive(self) -> bool:
        return bool(self.pids(self.worker_ns))

    def kill_worker(self) -> list[int]:
        """SIGKILL every process in the worker's namespace (its raylet and its task workers): the node is lost."""
        pids = self.pids(self.worker_ns)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        self._wait_gone(self.worker_ns, 10)
        return pids

    def running(self, ns: str, task: str) -> bool:
        """Whether a Ray worker in ``ns`` is executing ``task`` now (Ray titles it ``ray::TASK`` while it runs)."""
        for pid in self.pids(ns):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"ray::{task}".encode()):
                    return True
            except OSError:
                continue
        return False

    def popen(self, argv: list[str], *, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A process on the head node (a pipeline driver must run on a cluster node), reaching Ray at ``address``
        with the cluster's token."""
        env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
        return subprocess.Popen(["ip", "netns", "exec", self.head_ns, *argv],
                                env={**env, **self.auth, "CVG_RAY_ADDRESS": self.address}, **kwargs)

    def pids(self, ns: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()] if listed.returncode == 0 else []

    def stop(self) -> None:
        """End every process in both namespaces (TERM, then KILL), delete the namespaces and the temp dir."""
        for ns in (self.worker_ns, self.head_ns):
            for pid in self.pids(ns):
                _signal(pid, signal.SIGTERM)
        for ns in (self.worker_ns, self.head_ns):
            if not self._wait_gone(ns, 3):  # the GCS does not always end on SIGTERM
                for pid in self.pids(ns):
                    _signal(pid, signal.SIGKILL)
                self._wait_gone(ns, 5)
        for ns in (self.worker_ns, self.head_ns):  # an emptied namespace takes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.veth[0]], capture_output=True)  # if it never left this namespace
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_gone(self, ns: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pids(ns):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _ray_start(self, ns: str, args: list[str], temp_dir: Path, extra_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        started = subprocess.run(["ip", "netns", "exec", ns, RAY, "start", *args, "--num-cpus=1",
                                  f"--object-store-memory={self.object_store}", "--disable-usage-stats",
                                  f"--temp-dir={temp_dir}"],
                                 env={**env, **self.auth, **extra_env}, cwd=self.root, capture_output=True, text=True,
                                 timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"ray start in {ns} failed: {started.stderr.strip()[-2000:]}")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
