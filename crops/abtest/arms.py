"""The two arms of a simulated A/B run: where each arm's traffic goes, checked before any.

An arm is a KServe v1 retrieval endpoint. A URL is used as it is, once it answers a readiness
probe; a model folder gets an exact index over the world's videos (unless one is given) and a
`crops serve` subprocess on a free loopback port for the run's lifetime, logging to
``OUT/servers/<arm>.log`` (not under ``OUT/logs``, which is the A/B log prefix). All checks run
before any server starts, and every server is up before any traffic: bad input is an
`AbTestError` naming the option, never a half-run test.

This module owns only the arms; the simulated users live in `crops.abtest.traffic`.
"""

from __future__ import annotations

import http.client
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crops.abtest.layout import ARMS
from crops.serve.process import ServerProcessError, start_server, stop_server, wait_for_url

Progress = Callable[[str, int, int], None]


class AbTestError(ValueError):
    """Bad input found before any traffic is sent (not a world, not a model, endpoint down)."""


def _is_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _probe(url: str, model_name: str, timeout_s: float, attempts: int = 3) -> None:
    """Refuse an endpoint that is down before traffic starts (a readiness endpoint answers 200)."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    base = parts.path.rstrip("/")
    last = "no answer"
    for attempt in range(attempts):
        for path in ("/v2/health/ready", f"/v1/models/{model_name}"):
            conn = conn_cls(parts.hostname, parts.port, timeout=max(timeout_s, 1.0))
            try:
                conn.request("GET", base + path)
                status = conn.getresponse().status
                if status == 200:
                    return
                last = f"GET {path} answered HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
        if attempt + 1 < attempts:
            time.sleep(0.5)
    raise AbTestError(f"endpoint {url} is not reachable or not ready ({last})")


@dataclass
class Arm:
    """A resolved arm: where its traffic goes and where that endpoint came from."""

    name: str
    url: str
    source: Literal["url", "model"]
    model_dir: str | None = None
    index_dir: str | None = None
    model_hash: str | None = None

    def describe(self) -> dict[str, Any]:
        """The arm for the report: stable across reruns (a local server's port is not)."""
        out: dict[str, Any] = {"source": self.source}
        if self.source == "url":
            out["url"] = self.url
        else:
            out |= {"model_dir": self.model_dir, "index": self.index_dir}
            out["model_hash"] = self.model_hash
        return out


def _check_model_dir(path: Path, arm: str) -> None:
    from crops.model.encoders import MANIFEST

    if not path.is_dir():
        raise AbTestError(f"--{arm} {path}: neither an http(s) URL nor an existing model folder")
    if not (path / MANIFEST).is_file():
        raise AbTestError(f"--{arm} {path}: not a CroPS model folder (no {MANIFEST})")


def resolve_arms(
    specs: dict[str, tuple[str, Path | None]],
    *,
    world: Path,
    out: Path,
    model_name: str,
    timeout_s: float,
    server_start_s: float,
    stack: ExitStack,
    progress: Progress | None = None,
) -> list[Arm]:
    """Check both arms, then build indexes and start servers; all before any traffic.

    `specs` maps each arm name (``control``, ``treatment``) to its target (a URL or a model
    folder) and, for a model folder, an optional index. Started servers are stopped when
    `stack` closes. Returns the arms in `ARMS` order.
    """
    from crops.index.build import build_exact_index
    from crops.index.store import model_hash

    for name, (target, index) in specs.items():  # cheap checks first: fail fast
        if _is_url(target):
            if index is not None:
                raise AbTestError(f"--{name}-index goes with a model folder, not a URL")
            _probe(target, model_name, timeout_s)
        else:
            _check_model_dir(Path(target), name)
            if index is not None and not (Path(index) / "manifest.json").is_file():
                raise AbTestError(f"--{name}-index {index}: not a CroPS index folder")
    arms: dict[str, Arm] = {}
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    for name, (target, index) in specs.items():
        if _is_url(target):
            arms[name] = Arm(name, target.rstrip("/"), "url")
            continue
        model_dir = Path(target)
        if index is None:
            if progress:
                progress(f"index {name}", 0, 1)
            videos = Path(world) / "videos.parquet"
            index = build_exact_index(model_dir, videos, Path(out) / "indexes" / name)
            if progress:
                progress(f"index {name}", 1, 1)
        log = Path(out) / "servers" / f"{name}.log"
        args = ["--model", model_dir, "--index", index, "--port", "0", "--host", "127.0.0.1"]
        proc = start_server([*args, "--name", model_name], log)
        stack.callback(stop_server, proc)
        started[name] = proc, log
        arms[name] = Arm(name, "", "model", str(model_dir), str(index), model_hash(model_dir))
    for i, (name, (proc, log)) in enumerate(started.items()):  # both start at once
        if progress:
            progress("servers", i, len(started))
        try:
            arms[name].url = wait_for_url(proc, log, server_start_s)
        except ServerProcessError as exc:
            raise AbTestError(str(exc)) from exc
    if progress and started:
        progress("servers", len(started), len(started))
    return [arms[name] for name in ARMS]


__all__ = ["AbTestError", "Arm", "Progress", "resolve_arms"]
