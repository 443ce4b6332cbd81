"""Run ``cvg serve`` as a child process and wait until it is ready: for the demo, the tests and the bench.

Output goes to a log file (a server writing into a pipe nobody reads blocks once the pipe is full);
stopping sends SIGTERM to the process group, so BentoML's workers go too and the prediction log is
flushed by the service's shutdown hook.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from convergence.platform.errors import Unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``with ServerProcess("trading", log=path) as server: httpx.post(server.url + "/predict", …)``;
    ``command=("api",)`` runs ``cvg api`` instead of ``cvg serve FAMILY``."""

    def __init__(self, family: str, *args: str, log: Path, env: dict[str, str] | None = None,
                 port: int | None = None, ready_timeout_s: float = 90, command: tuple[str, ...] | None = None) -> None:
        self.family, self.args, self.log, self.env = family, args, Path(log), env or {}
        self.command = command or ("serve", family)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        import httpx

        cvg = str(Path(sys.executable).with_name("cvg"))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([cvg, *self.command, "--port", str(self.port), *self.args],
                                         env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise Unavailable(f"cvg {' '.join(self.command)} exited with {self.proc.returncode}: {tail[0]}",
                                  hint=f"the server's output is in {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise Unavailable(f"cvg {' '.join(self.command)} was not ready in {self.ready_timeout_s:.0f} s",
                          hint=f"the server's output is in {self.log}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
