"""A real kube-apiserver (v1.20) with etcd on loopback, for the integration tests.

Mirrors ../shared/tools/k8s: the binary is built once from Debian's source package by
`build-kube-apiserver.sh` and cached (CROPS_KUBE_CACHE, default ~/.cache/crops/k8s), then each test
session starts a throw-away etcd + apiserver on free loopback ports with `start-apiserver.sh`
and installs the upstream KubeRay and KServe CRDs with `install-crds.py`. No controllers run:
tests play the operator by patching `/status`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CROPS_SHARED", REPO.parent / "shared"))
TOOLS = SHARED / "tools" / "k8s"
CRDS = SHARED / "crds"
CACHE = Path(os.environ.get("CROPS_KUBE_CACHE", Path.home() / ".cache" / "crops" / "k8s"))


def ensure_binary() -> Path:
    """The cached kube-apiserver, built (about 5 minutes, once) if missing; etcd installed."""
    binary = CACHE / "kube-apiserver"
    if not TOOLS.is_dir():
        raise RuntimeError(f"{TOOLS} not found: put the shared folder beside the repository")
    if not os.access(binary, os.X_OK) or shutil.which("etcd") is None:
        # The script installs etcd-server and skips the build when the binary is there.
        subprocess.run(["bash", str(TOOLS / "build-kube-apiserver.sh"), str(CACHE)], check=True)
    return binary


def _free_port_pair() -> tuple[int, int]:
    """Two free loopback ports p and p+10 for etcd (client, peer), and one for the apiserver."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10 < 65535 and all(_is_free(p) for p in (port, port + 10)):
            return port, _any_free_port()
    raise RuntimeError("no free loopback ports for etcd")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    """A running apiserver: its kubeconfig, URL, CA file and the admin token."""

    workdir: Path
    kubeconfig: Path
    url: str
    ca_file: Path
    token: str

    def api_client(self, token: str | None = None):
        """A kubernetes ApiClient for the admin (default) or for a given bearer token."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": f"Bearer {token or self.token}"}
        return client.ApiClient(cfg)

    def stop(self) -> None:
        for pid_file in self.workdir.glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def start(workdir: Path) -> ApiServer:
    """Start etcd + apiserver in `workdir` on free ports and install the CRDs."""
    binary = ensure_binary()
    etcd_port, api_port = _free_port_pair()
    env = {**os.environ, "ETCD_PORT": str(etcd_port), "API_PORT": str(api_port)}
    proc = subprocess.run(
        ["bash", str(TOOLS / "start-apiserver.sh"), str(workdir), str(binary)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        log = (workdir / "apiserver.log").read_text()[-3000:] if workdir.exists() else ""
        raise RuntimeError(f"kube-apiserver did not start: {proc.stderr}\n{log}")
    kubeconfig = Path(proc.stdout.strip().splitlines()[-1])
    cfg = yaml.safe_load(kubeconfig.read_text())
    server = ApiServer(
        workdir=workdir,
        kubeconfig=kubeconfig,
        url=cfg["clusters"][0]["cluster"]["server"],
        ca_file=Path(cfg["clusters"][0]["cluster"]["certificate-authority"]),
        token=cfg["users"][0]["user"]["token"],
    )
    try:
        crds = sorted(str(p) for p in CRDS.glob("*.yaml"))
        subprocess.run(
            [sys.executable, str(TOOLS / "install-crds.py"), str(kubeconfig), *crds],
            check=True,
            capture_output=True,
            text=True,
        )
        _wait_for_resources(server)
    except Exception:
        server.stop()
        raise
    return server


def _wait_for_resources(server: ApiServer, timeout_s: float = 30.0) -> None:
    """Established CRDs take a moment to appear in discovery; wait for both groups."""
    from kubernetes import client

    api = client.ApisApi(server.api_client())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = {g.name for g in api.get_api_versions().groups}
        if {"ray.io", "serving.kserve.io"} <= groups:
            return
        time.sleep(0.2)
    raise RuntimeError("the CRDs' API groups did not appear in discovery")
