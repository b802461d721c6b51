"""RayJob entry points run for real: submitted through Ray's job API to a Ray cluster started with
`ray start` (a head and a worker node), with exactly the entrypoint and runtime environment the
RayJob manifest carries, as KubeRay's submitter submits them (`crops.k8s.raysubmit`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from crops.k8s.client import KubeError, KubeTimeout
from crops.k8s.rayjob import RayJobFailed, RayJobSpec, entrypoint, manifest
from crops.k8s.raysubmit import submit_rayjob

NAMESPACE = "crops"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_options() -> list[str]:
    """Every port a raylet and its agents bind, free ones: two nodes share this host (Ray's
    supported way; `--dashboard-agent-listen-port` would otherwise be 52365 on both)."""
    ports = [
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    ]
    options = [x for p in ports for x in (p, str(_free_port()))]
    return options + [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        "--block",  # this process owns the node: ending it ends the node's processes
    ]


@dataclass
class RayCluster:
    url: str  # the job API: the head's dashboard
    logs: Path


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A real Ray cluster on loopback: `ray start --head` (1 CPU, dashboard with the job API)
    plus a worker node (`ray start --address`, 1 CPU), each in its own short temp dir (unix
    socket paths are short), started from an empty working directory and with no RAY_*
    variable of this process. Only these processes are ended afterwards, never `ray stop`
    (which would end every Ray of this user on the machine)."""
    import psutil
    import requests
    from ray.util.state import list_nodes

    root = Path(tempfile.mkdtemp(prefix="crt-", dir="/tmp"))
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Without RAY_AUTH_MODE, `ray start` (and every worker process it starts later) turns token
    # authentication on as soon as ~/.ray/auth_token exists, which any local `ray.init()` of
    # this user may write at any time: the job API would answer 401 and workers started after
    # that could not join. This loopback-only test cluster runs without it.
    env["RAY_AUTH_MODE"] = "disabled"
    gcs, dashboard = _free_port(), _free_port()
    url = f"http://127.0.0.1:{dashboard}"
    nodes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(root / f"{name}.log", "wb") as log:
            node = subprocess.Popen(
                [ray_bin, "start", *args, f"--temp-dir={root / name}", *_node_options()],
                env=env,
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        nodes.append(node)
        return node

    def wait(name: str, node: subprocess.Popen, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 180
        while node.poll() is None and time.monotonic() < deadline:
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        state = "exited" if node.poll() is not None else "not ready after 180 s"
        pytest.fail(f"ray {name} node {state}:\n{_log_tail(root / f'{name}.log')}")

    try:
        head = start(
            "head",
            "--head",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={_free_port()}",
        )
        wait("head", head, lambda: requests.get(f"{url}/api/jobs/", timeout=5).ok)
        worker = start("worker", f"--address=127.0.0.1:{gcs}")
        alive = [("state", "=", "ALIVE")]
        wait("worker", worker, lambda: len(list_nodes(url, filters=alive, timeout=5)) == 2)
        yield RayCluster(url=url, logs=root)
    finally:  # SIGTERM: `ray start --block` ends its node's processes; what is left is killed
        procs = [psutil.Process(n.pid) for n in nodes if n.poll() is None]
        family = procs + [c for p in procs for c in p.children(recursive=True)]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        _, survivors = psutil.wait_procs(family, timeout=15)
        for p in survivors:  # only processes these nodes started
            p.kill()
        for node in nodes:
            node.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_ambient_ray_address(monkeypatch) -> None:
    """Ray's job client prefers these to its address argument; the tests name the address."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)


def _rayjob(name: str, job: str, line: str) -> dict:
    spec = RayJobSpec(name=name, namespace=NAMESPACE, job=job, image="crops:0.1.0", entrypoint=line)
    return manifest(spec)


@pytest.mark.slow
def test_train_on_the_tiny_world_as_a_submitted_rayjob(
    ray_cluster: RayCluster, mined_fast, tmp_path: Path
) -> None:
    from crops.model.encoders import DualEncoder

    mined, world = mined_fast
    out = tmp_path / "model"
    args = [
        "--samples", mined / "samples.parquet",
        "--videos", world / "videos.parquet",
        "--out", out,
        "--loss", "h-infonce",
        "--encoder", "hash",
        "--workers", 2,  # one per node
        "--max-steps", 5,
        "--storage-path", tmp_path / "checkpoints",
        "--seed", 0,
    ]  # fmt: skip
    job = _rayjob("train-tiny", "train", entrypoint("train", args))
    # RAY_TRAIN_V2_ENABLED reaches the job through the RayJob's runtime environment (the
    # cluster's processes got no RAY_* variable of this process)
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"

    status = submit_rayjob(job, ray_cluster.url, timeout_s=300)

    assert status["jobDeploymentStatus"] == "Complete" and status["jobStatus"] == "SUCCEEDED"
    assert status["jobId"] == f"{NAMESPACE}.train-tiny" and status["reattached"] is False
    assert status["runtimeEnv"]["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert f"modelwrittento{out}" in "".join(status["logTail"].split())  # rich wraps lines
    encoder = DualEncoder.load(out)
    assert encoder.encode_queries(["cat videos"]).shape[0] == 1
    trained = json.loads((out / "training.json").read_text())
    assert trained["metrics"]["global_step"] == 5


@pytest.mark.slow
def test_index_on_the_tiny_world_as_a_submitted_rayjob(
    ray_cluster: RayCluster, tiny_dir: Path, tiny_index, tmp_path: Path
) -> None:
    import numpy as np

    model_dir, _ = tiny_index
    out = tmp_path / "index"
    args = [
        "--model", model_dir,
        "--videos", tiny_dir / "videos.parquet",
        "--out", out,
        "--factory", "Flat",
        # one 0.5-CPU embedding actor: two would take half of each 1-CPU node, and Ray Data's
        # repartition task, which needs a whole CPU, would then wait forever
        "--actors", 1,
        "--batch-size", 256,
        "--no-gpu",
    ]  # fmt: skip
    job = _rayjob("index-tiny", "index", entrypoint("build_index", args))

    status = submit_rayjob(job, ray_cluster.url, timeout_s=120)

    assert status["jobStatus"] == "SUCCEEDED"
    assert (out / "index.faiss").is_file()
    manifest_ = json.loads((out / "manifest.json").read_text())
    assert manifest_["factory"] == "Flat" and manifest_["count"] == 1500
    assert len(np.load(out / "ids.npy")) == 1500
    # the same RayJob again follows the job already there instead of running it twice
    t0 = time.monotonic()
    again = submit_rayjob(job, ray_cluster.url, timeout_s=60)
    assert again["reattached"] is True and again["jobId"] == status["jobId"]
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_mine_synthesises_on_ray_data_actors_as_a_submitted_rayjob(
    ray_cluster: RayCluster, tiny_dir: Path, tmp_path: Path
) -> None:
    """Batch synthesis as the cluster runs it: Ray Data map_batches over an actor holding an
    in-process engine, here llama.cpp with the real packaged SmolLM2-135M on a CPU actor (on
    a GPU cluster: vLLM, one GPU per actor). The driver loads no model."""
    import pyarrow.parquet as pq

    out = tmp_path / "mined"
    args = [
        "--world", tiny_dir,
        "--out", out,
        "--filter-model", "none",
        "--llm-backend", "ray-batch",
        "--llm-engine", "llama.cpp",
        "--llm-gpus-per-actor", 0,
        "--llm-actors", 1,
        "--synth-max-queries", 2,
        "--synth-per-query", 1,
    ]  # fmt: skip
    job = _rayjob("mine-tiny", "mine", entrypoint("mine", args))

    status = submit_rayjob(job, ray_cluster.url, timeout_s=420)

    assert status["jobStatus"] == "SUCCEEDED", status
    report = json.loads((out / "report.json").read_text())
    syn = report["synthesis"]
    assert syn["is_llm"] is True and syn["engine"] == "llama.cpp"
    assert "Ray Data actors" in syn["backend"] and syn["model"].endswith(".gguf")
    assert syn["actors"] == {"count": 1, "gpus_each": 0.0, "cpus_each": 1.0, "batch_size": 16}
    assert syn["unique_queries"] == 2 and syn["replies"] >= 2
    assert syn["succeeded"] + syn["failed"] == 2
    synth = pq.read_table(out / "synth_videos.parquet")
    assert synth.num_rows == syn["videos"] == report["samples"]["by_source"].get("llm", 0)


@pytest.mark.slow
def test_a_failing_entry_point_surfaces_its_own_error(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-samples.parquet"
    line = entrypoint(
        "train", ["--samples", missing, "--videos", tmp_path / "v.parquet", "--out", tmp_path / "m"]
    )
    with pytest.raises(RayJobFailed) as e:
        submit_rayjob(_rayjob("train-broken", "train", line), ray_cluster.url, timeout_s=300)
    assert e.value.reason == "AppFailed"
    # the entry point's own words (rich wraps them at 80 columns, anywhere)
    assert f"--samples{missing}:notfound" in "".join(e.value.message.split())
    assert f"RayJob {NAMESPACE}/train-broken failed" in str(e.value)
    assert "exit code 2" in e.value.message  # Ray's own summary


@pytest.mark.slow
def test_a_job_past_its_time_is_stopped_and_named(ray_cluster: RayCluster) -> None:
    from ray.job_submission import JobSubmissionClient

    job = _rayjob("too-slow", "train", "python -c 'import time; time.sleep(300)'")
    t0 = time.monotonic()
    with pytest.raises(KubeTimeout, match=rf"RayJob {NAMESPACE}/too-slow: .* not done after 3 s"):
        submit_rayjob(job, ray_cluster.url, timeout_s=3, poll_s=0.5)
    assert time.monotonic() - t0 < 30
    client = JobSubmissionClient(ray_cluster.url)
    deadline = time.monotonic() + 60
    while not client.get_job_status(f"{NAMESPACE}.too-slow").is_terminal():
        assert time.monotonic() < deadline, "the job was not stopped"
        time.sleep(0.5)
    assert client.get_job_status(f"{NAMESPACE}.too-slow").value == "STOPPED"


# a closed port (refused at once) and TEST-NET-2 (no route, or silence: connect_timeout_s)
@pytest.mark.parametrize("host", ["127.0.0.1", "198.51.100.1"])
def test_an_unreachable_job_api_is_a_clear_error_not_a_hang(host: str) -> None:
    address = f"http://{host}:{_free_port()}"
    job = _rayjob("train", "train", entrypoint("train", ["--samples", "s.parquet"]))
    t0 = time.monotonic()
    with pytest.raises(KubeError, match=f"RayJob {NAMESPACE}/train: the Ray job API at {address}"):
        submit_rayjob(job, address, timeout_s=600, connect_timeout_s=2)
    assert time.monotonic() - t0 < 5
