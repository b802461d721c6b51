"""`crops serve` as a child process: start it, learn its URL, stop it.

The A/B job, the tests and the serving benchmark all need a real server beside them. The child
writes to a log file, not a pipe (a full pipe would block the server), and with `--port 0` it
announces the port it bound ("serving NAME at URL: POST ..."), so parallel servers never race
for a port.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

_READY = re.compile(r"serving \S+ at (http://\S+): POST")


class ServerProcessError(RuntimeError):
    """The server exited or did not announce itself in time; the message has its log's tail."""


def start_server(args: list[str], log: Path, exe: list[str] | None = None) -> subprocess.Popen:
    """Start `crops serve ARGS` (by default `python -m crops.cli serve`) logging to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*(exe or [sys.executable, "-m", "crops.cli"]), "serve", *map(str, args)]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def wait_for_url(proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> str:
    """The URL the server announces once it listens with its model loaded."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _READY.search(log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
            tail = log.read_text(errors="replace")[-2000:]
            raise ServerProcessError(f"`crops serve` ({log}) {why}:\n{tail}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; a no-op for a process that already ended."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """`with ServerProcess(args, log) as url:` a running `crops serve`, stopped on exit."""

    def __init__(
        self, args: list[str], log: Path, timeout_s: float = 120.0, exe: list[str] | None = None
    ) -> None:
        self.args, self.log, self.timeout_s, self.exe = args, log, timeout_s, exe
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        self.proc = start_server(self.args, self.log, self.exe)
        try:
            return wait_for_url(self.proc, self.log, self.timeout_s)
        except BaseException:
            stop_server(self.proc)
            raise

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_server(self.proc)


__all__ = ["ServerProcess", "ServerProcessError", "start_server", "stop_server", "wait_for_url"]
