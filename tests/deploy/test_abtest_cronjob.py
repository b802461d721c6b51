"""The chart's A/B CronJob in its two modes: `abtest.source: logs` (the default) runs
`crops abtest analyze` on the platform's logs, `simulated` (the kind and minikube profiles) runs
`crops abtest` with simulated users; from logs one look a run through the ledger on the
volume, simulated a whole test a run; the decision applied to the InferenceService. An unknown
source fails the render with a message. The logs it reads are where the logsink writes its
request_log; an s3:// prefix takes its credentials from `abtest.env`/`abtest.envFrom`."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml
from helm_python.errors import HelmError
from support.cluster import CHART, merge, render


def profile(*names: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        values = merge(values, yaml.safe_load((CHART / "profiles" / f"{name}.yaml").read_text()))
    return values


def cronjob_pod(values: dict[str, Any]) -> dict[str, Any]:
    (cron,) = [o for o in render(values) if o["kind"] == "CronJob"]
    assert cron["metadata"]["name"] == "crops-abtest"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # one look at a time
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def command_line(pod: dict[str, Any]) -> list[str]:
    """The words of the shell line the container runs (as /bin/sh -c splits them)."""
    (c,) = pod["containers"]
    assert c["command"] == ["/bin/sh", "-c"]
    (script,) = c["args"]
    return shlex.split(script)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


OUT = "/artifacts/abtest/runs/$$(date -u +%Y%m%dT%H%M%SZ)"
APPLY = [
    "--apply",
    "--isvc",
    "crops-retrieval",
    "--namespace",
    "$POD_NAMESPACE",
    "--canary-mode",
    "Standard",
]


def test_by_default_the_cronjob_decides_from_the_logs() -> None:
    pod = cronjob_pod({})
    assert command_line(pod) == [
        "exec",
        "crops",
        "abtest",
        "analyze",
        "--logs",
        "/artifacts/logs",
        "--ledger",
        "/artifacts/abtest/ledger",
        "--out",
        OUT,
        "--treatment-share",
        "0.1",
        "--looks",
        "5",
        "--break-stale-lock",
        *APPLY,
    ]
    env = env_of(pod)
    assert not {"CONTROL_URL", "TREATMENT_URL"} & set(env)  # no endpoint is called
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["artifacts"] == "/artifacts"


@pytest.mark.parametrize("profiles", [("small", "kind"), ("small", "minikube")])
def test_the_laptop_profiles_run_simulated_users(profiles: tuple[str, ...]) -> None:
    assert profile(*profiles)["abtest"]["source"] == "simulated"
    pod = cronjob_pod(profile(*profiles))
    assert command_line(pod) == [
        "exec",
        "crops",
        "abtest",
        "--world",
        "/artifacts/world",
        "--control",
        "$CONTROL_URL",
        "--treatment",
        "$TREATMENT_URL",
        "--out",
        OUT,
        "--treatment-share",
        "0.1",
        "--days",
        "5",
        *APPLY,
    ]
    env = env_of(pod)
    assert env["CONTROL_URL"] == "http://crops-retrieval-predictor.crops.svc.cluster.local"
    assert (
        env["TREATMENT_URL"] == "http://crops-retrieval-candidate-predictor.crops.svc.cluster.local"
    )


def test_simulated_users_in_serverless_mode_use_the_knative_tags() -> None:
    pod = cronjob_pod({"abtest": {"source": "simulated"}, "serving": {"mode": "Serverless"}})
    words = command_line(pod)
    assert words[-2:] == ["--canary-mode", "Serverless"]
    env = env_of(pod)
    assert env["CONTROL_URL"] == "http://prev-crops-retrieval-predictor.crops.svc.cluster.local"
    assert env["TREATMENT_URL"] == "http://latest-crops-retrieval-predictor.crops.svc.cluster.local"


def test_values_reach_the_command_line() -> None:
    values = {
        "storage": {"mountPath": "/data"},
        "logsink": {"enabled": False},  # it writes on the volume; these logs are in s3://
        "abtest": {
            "logs": "s3://platform-logs/search",
            "ledger": "/data/ledger",
            "looks": 7,
            "treatmentShare": 0.25,
            "extraArgs": ["--primary", "long_play_rate"],
        },
    }
    pod = cronjob_pod(values)
    words = command_line(pod)
    opts = dict(zip(words[4::2], words[5::2], strict=False))
    assert opts["--logs"] == "s3://platform-logs/search"
    assert opts["--ledger"] == "/data/ledger"
    assert opts["--out"] == "/data/abtest/runs/$$(date -u +%Y%m%dT%H%M%SZ)"
    assert opts["--looks"] == "7" and opts["--treatment-share"] == "0.25"
    assert words[-2:] == ["--primary", "long_play_rate"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["artifacts"] == "/data"


def logsink_out(objs: list[dict[str, Any]]) -> str:
    (sink,) = [
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "crops-logsink"
    ]
    (c,) = sink["spec"]["template"]["spec"]["containers"]
    return c["args"][c["args"].index("--out") + 1]


@pytest.mark.parametrize(
    ("values", "logs"),
    [
        ({}, "/artifacts/logs"),
        ({"storage": {"mountPath": "/data"}}, "/data/logs"),  # the prefix follows the mount
        ({"abtest": {"logs": "/artifacts/platform/logs"}}, "/artifacts/platform/logs"),
    ],
)
def test_the_cronjob_reads_the_logs_where_the_logsink_writes(values: dict, logs: str) -> None:
    objs = render(values)
    (cron,) = [o for o in objs if o["kind"] == "CronJob"]
    words = command_line(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert words[words.index("--logs") + 1] == logs
    assert logsink_out(objs) == f"{logs}/request_log"  # crops.abtest.layout's request_log


def test_a_log_prefix_off_the_volume_with_the_logsink_fails_the_render() -> None:
    """The sink can only write on the artifacts volume: logs it writes that the analysis never
    reads are refused, with what to do instead."""
    with pytest.raises(
        HelmError, match=r"abtest\.logs is \"s3://b/logs\"; set logsink\.enabled=false"
    ):
        render({"abtest": {"logs": "s3://b/logs"}})
    with pytest.raises(HelmError, match=r"storage\.mountPath /artifacts\), but abtest\.logs"):
        render({"abtest": {"logs": "/elsewhere/logs"}})
    render({"abtest": {"logs": "s3://b/logs"}, "logsink": {"enabled": False}})


def test_s3_credentials_reach_the_container_from_a_secret() -> None:
    """abtest.env and abtest.envFrom are passed through verbatim, after the chart's own."""
    env = [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "crops-logs-s3", "key": "access-key-id"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "crops-logs-s3", "key": "secret-access-key"}},
        },
        {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"},
    ]
    env_from = [{"secretRef": {"name": "crops-logs-env"}}, {"configMapRef": {"name": "s3-cfg"}}]
    values = {
        "logsink": {"enabled": False},
        "abtest": {"logs": "s3://platform-logs/search", "env": env, "envFrom": env_from},
    }
    (c,) = cronjob_pod(values)["containers"]
    names = [e["name"] for e in c["env"]]
    assert names[:3] == ["POD_NAMESPACE", "HOME", "MPLCONFIGDIR"]  # the chart's own first
    assert c["env"][3:] == env
    assert c["envFrom"] == env_from
    words = command_line(cronjob_pod(values))
    assert words[words.index("--logs") + 1] == "s3://platform-logs/search"
    # Not set: no envFrom at all, and only the chart's variables.
    (plain,) = cronjob_pod({})["containers"]
    assert "envFrom" not in plain
    assert [e["name"] for e in plain["env"]] == ["POD_NAMESPACE", "HOME", "MPLCONFIGDIR"]


@pytest.mark.parametrize(
    "bad",
    [
        {"env": [{"value": "no name"}]},
        {"env": {"AWS_REGION": "eu-west-1"}},  # a map, not the EnvVar list
        {"envFrom": [{"secret": {"name": "s"}}]},
    ],
)
def test_the_schema_refuses_a_malformed_env(bad: dict) -> None:
    with pytest.raises(HelmError, match=r"/abtest/env"):
        render({"abtest": bad})


@pytest.mark.parametrize("source", ["simulate", "Logs", ""])
def test_an_unknown_source_fails_the_render(source: str) -> None:
    with pytest.raises(HelmError, match=r'abtest\.source must be "logs" .* or "simulated" .*, got'):
        render({"abtest": {"source": source}})


def test_the_old_days_value_is_refused_not_ignored() -> None:
    with pytest.raises(HelmError, match=r"abtest\.days is now abtest\.looks"):
        render({"abtest": {"days": 5}})
