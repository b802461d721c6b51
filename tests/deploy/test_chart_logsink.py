"""The chart's logsink: `crops logsink` as a Deployment of one replica with its Service, its own
ServiceAccount (no token), the artifacts volume mounted read-write, writing
`<the log prefix>/request_log` where the A/B CronJob reads, probed on `/healthz`, reachable from
the predictors only (NetworkPolicy allow-logsink; tests/deploy/test_netpol.py evaluates it against
every pod). The predictors' default logger URL is its Service (tests/k8s/test_platform.py holds the
chart and the run-time builders to it). The container's command line is run for real: the
probes' path answers on the port the Service targets.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helm_python.errors import HelmError
from support.cluster import RENDERINGS, render
from support.cluster import rendering as rendered

NAME = "crops-logsink"


def one(objs: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def sink_container(objs: list[dict]) -> dict:
    (c,) = one(objs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return c


def options(container: dict) -> dict[str, str]:
    """The options of the container's `crops logsink` command line."""
    assert container["command"] == ["crops"] and container["args"][0] == "logsink"
    args = container["args"][1:]
    return dict(zip(args[::2], args[1::2], strict=True))


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_logsink_runs_as_its_own_account_and_writes_on_the_artifacts_volume(
    rendering: str,
) -> None:
    objs = rendered(rendering)
    deployment = one(objs, "Deployment", NAME)
    assert deployment["spec"]["replicas"] == 1  # the pairing state is in one process's memory
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two at once
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "logsink"
    assert labels["app.kubernetes.io/part-of"] == "crops"
    # Its own account, which calls no API: no token in the pod nor on the account.
    assert pod["serviceAccountName"] == NAME
    assert pod["automountServiceAccountToken"] is False
    assert one(objs, "ServiceAccount", NAME)["automountServiceAccountToken"] is False
    assert not [o for o in objs if o["kind"] == "RoleBinding" and NAME in str(o.get("subjects"))]
    # The artifacts volume, read-write (the predictors mount it read-only).
    c = sink_container(objs)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["artifacts"]["mountPath"] == "/artifacts"
    assert not mounts["artifacts"].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"] == {"claimName": "crops-artifacts"}
    opts = options(c)
    assert opts["--out"] == "/artifacts/logs/request_log"
    # Probed on its health endpoint, on the port it listens on.
    port = int(opts["--port"])
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["image"].startswith("crops:")
    # The Service sends its port to that port, of these pods.
    svc = one(objs, "Service", NAME)
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == port and svc_port["port"] == 8080
    assert svc["spec"]["selector"].items() <= labels.items()
    # Only the predictors reach it.
    policy = one(objs, "NetworkPolicy", "allow-logsink")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/part-of": "crops",
                    "app.kubernetes.io/component": "predictor",
                }
            }
        }
    ]


def test_values_reach_the_logsink() -> None:
    values = {
        "storage": {"mountPath": "/data", "artifacts": {"name": "team-artifacts"}},
        "ports": {"logsink": 9090},
        "roles": {"logsink": {"component": "sink", "serviceAccount": "team-sink"}},
        "logsink": {"extraArgs": ["--model-hash", "crops-retrieval-predictor=abc"]},
        "image": {"repository": "ml/crops", "tag": "2.0.0"},
    }
    objs = render(values)
    pod = one(objs, "Deployment", NAME)["spec"]["template"]["spec"]
    c = sink_container(objs)
    assert options(c) == {
        "--out": "/data/logs/request_log",
        "--host": "0.0.0.0",
        "--port": "9090",
        "--model-hash": "crops-retrieval-predictor=abc",
    }
    assert c["image"] == "ml/crops:2.0.0"
    assert pod["serviceAccountName"] == "team-sink"
    assert {"name": "artifacts", "mountPath": "/data"} in c["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "team-artifacts"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
    (svc_port,) = one(objs, "Service", NAME)["spec"]["ports"]
    assert svc_port["port"] == svc_port["targetPort"] == 9090
    policy = one(objs, "NetworkPolicy", "allow-logsink")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "sink"}
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_disabled_there_is_no_logsink_and_no_logger() -> None:
    objs = render({"logsink": {"enabled": False}})
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert (
        not {
            ("Deployment", NAME),
            ("Service", NAME),
            ("NetworkPolicy", "allow-logsink"),
        }
        & kinds
    )
    isvc = one(objs, "InferenceService", "crops-retrieval")["spec"]
    assert "logger" not in isvc["predictor"]
    assert "logger" not in isvc["canary"][0]["predictor"]


def test_values_the_logsink_cannot_work_with_fail_the_render() -> None:
    # A response alone has no query to log, a request alone no answer.
    with pytest.raises(HelmError, match=r'serving\.requestLog\.mode "request": the logsink'):
        render({"serving": {"requestLog": {"mode": "request"}}})
    # Logging to a collector of one's own, any mode is the user's business.
    render({"serving": {"requestLog": {"mode": "request", "url": "http://c.x.svc/"}}})
    with pytest.raises(HelmError, match="resources"):
        render({"logsink": {"resources": None}})
    with pytest.raises(HelmError, match="logsink"):
        render({"logsink": {"enabled": "yes"}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_containers_command_line_answers_its_probes(tmp_path: Path) -> None:
    """`crops logsink` with the chart's arguments (the volume moved to a temporary folder, a free
    port): the probes' path answers 200 on that port, and SIGTERM flushes and ends it."""
    c = sink_container(render({}))
    opts = options(c)
    port = _free_port()
    args = list(c["args"])
    args[args.index("--out") + 1] = str(tmp_path / opts["--out"].removeprefix("/artifacts/"))
    args[args.index("--port") + 1] = str(port)
    probe = c["readinessProbe"]["httpGet"]
    log = tmp_path / "sink.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crops.cli", *args], stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        status = None
        while status != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                status = httpx.get(f"http://127.0.0.1:{port}{probe['path']}", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down (the sink flushes), then re-raises the signal it caught.
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
        assert "request log: 0 row(s)" in log.read_text()  # the writer's closing summary
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "logs" / "request_log").is_dir()
