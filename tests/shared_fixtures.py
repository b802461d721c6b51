"""Shared fixtures: one tiny simulated world per session (seconds), reused read-only.

A pytest plugin, loaded by the root conftest.py for tests/ and components/<name>/tests/ alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console
from support import cluster
from typer.testing import CliRunner

from crops import cli
from crops.world.config import WorldConfig
from crops.world.simulate import simulate
from crops.world.world import World


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny world (seed 1) on disk; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("tiny-world")
    simulate(WorldConfig.for_scale("tiny", seed=1), out)
    return out


@pytest.fixture(scope="session")
def tiny_world(tiny_dir: Path) -> World:
    return World.load(tiny_dir)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def run(monkeypatch):
    """Invoke the real CLI: (exit code, stdout, stderr); wide consoles so rich does not wrap."""
    import sys

    import crops.console as shared

    wide, wide_err = Console(width=400), Console(stderr=True, width=400)
    commands = [m for name, m in sys.modules.items() if name.startswith("crops.cli.")]
    for module in (shared, *commands):
        for name, console in (("console", wide), ("err", wide_err)):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, console)
    monkeypatch.setenv("TERMINAL_WIDTH", "400")  # typer's --help tables
    runner = CliRunner()

    def invoke(*args: object) -> tuple[int, str, str]:
        result = runner.invoke(cli.app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)

    return invoke


@pytest.fixture(scope="session")
def mined_fast(tiny_dir: Path, tiny_world: World, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny world mined without the filter model (knowledge synthesis): (out, world dir)."""
    from crops.mining.config import MineConfig
    from crops.mining.mine import mine
    from crops.mining.synthesis.knowledge import KnowledgeBackend

    out = tmp_path_factory.mktemp("mined-fast")
    mine(tiny_dir, out, MineConfig(filter_model="none"), KnowledgeBackend(tiny_world))
    return out, tiny_dir


@pytest.fixture(scope="session")
def training_data(mined_fast):
    from crops.model.data import load_training_data

    out, world = mined_fast
    return load_training_data(
        out / "samples.parquet", [world / "videos.parquet", out / "synth_videos.parquet"]
    )


@pytest.fixture(scope="session")
def tiny_index(tiny_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """An untrained hash-model folder and a Flat index over the tiny world's videos, built
    directly (no Ray): (model_dir, index_dir). Read-only; copy before changing."""
    from crops.index.build import build_exact_index
    from crops.model.encoders import build_dual_encoder

    root = tmp_path_factory.mktemp("tiny-index")
    model_dir, index_dir = root / "model", root / "index"
    build_dual_encoder("hash", seed=0).save(model_dir)
    build_exact_index(model_dir, tiny_dir / "videos.parquet", index_dir)
    return model_dir, index_dir


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory):
    """A real kube-apiserver + etcd on loopback with the KubeRay and KServe CRDs installed
    (tests/support/apiserver.py; the binary is built once and cached). Stopped at session end."""
    from support.apiserver import start

    server = start(tmp_path_factory.mktemp("apiserver"))
    yield server
    server.stop()


@pytest.fixture
def namespace(apiserver) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    import uuid

    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(apiserver.api_client()).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    return name


class Accounts:
    """The chart's ServiceAccounts, Roles, RoleBindings and platform ConfigMap, installed in a
    test namespace; tokens, clients and kubeconfig files acting as one of those accounts."""

    def __init__(self, apiserver, namespace: str, tmp_path: Path) -> None:
        self.apiserver, self.namespace, self.tmp_path = apiserver, namespace, tmp_path
        self.admin = apiserver.api_client()

    def install(self, values: dict | None = None) -> Accounts:
        """Render the chart (with `values`) into the namespace and create its accounts, roles,
        bindings and the crops-platform ConfigMap, as a release would."""
        cluster.install(self.apiserver, self.namespace, values)
        return self

    def token(self, account: str) -> str:
        return cluster.token(self.apiserver, account, self.namespace)

    def client(self, account: str):
        """An ApiClient acting as `account` (a TokenRequest token, as a pod gets)."""
        return cluster.as_account(self.apiserver, account, self.namespace)

    def kubeconfig(self, account: str) -> Path:
        """A kubeconfig file for `account`'s token: the test server's URL and CA."""
        path = self.tmp_path / f"kubeconfig-{account}.yaml"
        return cluster.kubeconfig_for(self.apiserver, account, self.namespace, path)

    def act_as(self, account: str, monkeypatch: pytest.MonkeyPatch) -> Path:
        """Make `crops.k8s.client.api_client()` (the default kubeconfig) act as `account`: the
        code under test runs as it would in a pod with that account."""
        return cluster.run_as(monkeypatch, self.apiserver, account, self.namespace, self.tmp_path)


@pytest.fixture
def accounts(apiserver, namespace, tmp_path) -> Accounts:
    """The chart's accounts, roles, bindings and platform ConfigMap in the test namespace
    (`accounts.install(values)` first); clients and kubeconfigs acting as each account."""
    return Accounts(apiserver, namespace, tmp_path)


@pytest.fixture
def kserve(apiserver, namespace):
    """KServe played in the test namespace (see KServePlayer); stopped after the test."""
    player = cluster.KServePlayer(apiserver.api_client(), namespace).start()
    yield player
    player.stop()


@pytest.fixture
def platform(apiserver, namespace: str, tmp_path: Path, monkeypatch) -> Path:
    """The chart installed in `namespace` with the artifacts volume at a local folder (the
    task's and the RayJob's mount); the tasks run as crops-pipeline. Returns the mount.
    (The cluster paths of the components, components/<name>/tests/test_cluster.py.)"""
    mount = tmp_path / "artifacts"
    mount.mkdir()
    cluster.install(apiserver, namespace, {"storage": {"mountPath": str(mount)}})
    cluster.run_as(monkeypatch, apiserver, "crops-pipeline", namespace, tmp_path)
    return mount
