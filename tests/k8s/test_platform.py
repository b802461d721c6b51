"""One description of the platform: the chart, and everything built from it.

The chart (charts/crops) is the only hand-written description. These tests render it with every
value set and profile, build each object that the code creates at run time (RayJobs, the
InferenceService with its canary, the vLLM Deployment and Service) from the same values through
`crops.k8s.platform`, and fail on any difference; the generated kustomize tree and the packaged
platform.json must equal a fresh rendering of the chart. The predictors' default payload-log URL
is the chart's logsink Service, in the chart and at run time alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cluster import CHART_VALUES, chart_values, render

from crops.k8s import inference_service as isvc
from crops.k8s.client import KubeError
from crops.k8s.platform import CONFIGMAP, LOGSINK, Platform
from crops.k8s.rayjob import RayJobSpec
from crops.k8s.rayjob import manifest as rayjob_manifest
from crops.k8s.vllm import VllmSpec, deployment, service

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "crops"
SCRIPT = REPO / "scripts" / "render_manifests.py"
VALUE_SETS: dict[str, dict[str, Any]] = {
    **{name: chart_values(name) for name in CHART_VALUES},
    "kind": {
        **yaml.safe_load((CHART / "profiles" / "small.yaml").read_text()),
        "image": {"pullPolicy": "Never"},
    },
    # A team's own values: another user, image, GPU taint and release.
    "custom": {
        "image": {"repository": "ml/crops", "tag": "2.0.0"},
        "securityContext": {"runAsUser": 4242, "runAsGroup": 4343, "fsGroup": 4444},
        "gpu": {"enabled": True, "tolerations": [{"key": "gpu", "operator": "Exists"}]},
        "storage": {"artifacts": {"name": "team-artifacts"}, "mountPath": "/data"},
        "serving": {"requestLog": {"url": "http://broker.logging.svc.cluster.local/requests"}},
    },
    # The logsink on another port (the predictors' default logger URL follows it), and none.
    "logsink-port": {"ports": {"logsink": 9090}},
    "no-logsink": {"logsink": {"enabled": False}},
}


def one(objs: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def platform_of(objs: list[dict]) -> Platform:
    doc = json.loads(one(objs, "ConfigMap", CONFIGMAP)["data"]["platform.json"])
    return Platform.from_document(doc)


def differences(chart: Any, built: Any, path: str = "") -> list[str]:
    """Every path where the chart's object and the built one differ."""
    if isinstance(chart, dict) and isinstance(built, dict):
        out = []
        for key in sorted(set(chart) | set(built)):
            if key not in built:
                out.append(f"{path}.{key}: only in the chart")
            elif key not in chart:
                out.append(f"{path}.{key}: only in the built object")
            else:
                out += differences(chart[key], built[key], f"{path}.{key}")
        return out
    if isinstance(chart, list) and isinstance(built, list) and len(chart) == len(built):
        return [p for i, (a, b) in enumerate(zip(chart, built, strict=True)) for p in
                differences(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if chart == built else [f"{path}: chart {chart!r}, built {built!r}"]


def built_rayjob(chart_job: dict, platform: Platform) -> dict:
    """The RayJob the code builds for the chart job's entrypoint and size."""
    spec = chart_job["spec"]
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    gpus = platform.values.gpu.rayWorkerGpus if platform.values.gpu.enabled else 0
    job = RayJobSpec(
        name=chart_job["metadata"]["name"],
        namespace=platform.namespace,
        job=chart_job["metadata"]["labels"]["app.kubernetes.io/component"],
        entrypoint=spec["entrypoint"],
        workers=workers,
        worker_gpus=gpus,
    )
    return rayjob_manifest(job, platform)


@pytest.mark.parametrize("values", VALUE_SETS, ids=str)
def test_run_time_objects_equal_the_charts(values: str) -> None:
    objs = render(VALUE_SETS[values])
    p = platform_of(objs)
    problems: list[str] = []
    for name in ("crops-train", "crops-index"):
        chart = one(objs, "RayJob", name)["spec"]
        built = built_rayjob(one(objs, "RayJob", name), p)["spec"]
        chart = {k: v for k, v in chart.items() if k != "suspend"}  # templates start suspended
        for side in (chart, built):
            side["runtimeEnvYAML"] = yaml.safe_load(side["runtimeEnvYAML"])
        problems += [f"RayJob {name}{d}" for d in differences(chart, built)]

    model = p.values.llm.model
    for kind, built in (
        ("Deployment", deployment(VllmSpec(namespace=p.namespace, model=model), p)),
        ("Service", service(VllmSpec(namespace=p.namespace, model=model), p)),
    ):
        chart = one(objs, kind, "crops-vllm")
        chart_spec = {k: v for k, v in chart["spec"].items() if k != "replicas"}  # chart scales
        built_spec = {k: v for k, v in built["spec"].items() if k != "replicas"}
        problems += [f"{kind} crops-vllm{d}" for d in differences(chart_spec, built_spec)]

    serving = VALUE_SETS[values].get("serving", {})
    mode = serving.get("mode", "Standard")
    chart_isvc = one(objs, "InferenceService", "crops-retrieval")
    control = isvc.InferenceServiceSpec(
        name="crops-retrieval",
        namespace=p.namespace,
        model_path="/artifacts/model",
        index_path="/artifacts/index",
        mode=mode,
    )
    candidate = control.model_copy(
        update={
            "model_path": "/artifacts/candidate/model",
            "index_path": "/artifacts/candidate/index",
        }
    )
    if mode == "Standard":
        built_isvc = isvc.manifest(control, p, canary=candidate)
    else:  # Knative: the candidate is the next revision of spec.predictor
        built_isvc = isvc.manifest(control, p)
        built_isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10
    problems += [
        f"InferenceService{d}" for d in differences(chart_isvc["spec"], built_isvc["spec"])
    ]
    problems += [
        f"InferenceService annotations{d}"
        for d in differences(
            chart_isvc["metadata"]["annotations"], built_isvc["metadata"]["annotations"]
        )
    ]
    assert problems == []


def test_a_drift_is_caught() -> None:
    """The comparison is not vacuous: a chart with another seccomp profile or label differs."""
    objs = render({})
    p = platform_of(objs)
    job = one(objs, "RayJob", "crops-train")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    head["metadata"]["labels"]["app.kubernetes.io/component"] = "ray-head"
    head["spec"]["securityContext"].pop("fsGroup")
    found = differences(job["spec"], built_rayjob(job, p)["spec"])
    assert any("labels.app.kubernetes.io/component" in d for d in found), found
    assert any(d.endswith("securityContext.fsGroup: only in the built object") for d in found)
    # A predictor logging elsewhere than the run-time default (the logsink) differs too.
    pred = one(objs, "InferenceService", "crops-retrieval")["spec"]["predictor"]
    pred["logger"]["url"] = "http://crops-logsink.crops.svc.cluster.local:80"
    spec = isvc.InferenceServiceSpec(
        name="crops-retrieval", model_path="/artifacts/model", index_path="/artifacts/index"
    )
    found = differences(pred, isvc.predictor(spec, p))
    assert found == [
        ".logger.url: chart 'http://crops-logsink.crops.svc.cluster.local:80', built "
        "'http://crops-logsink.crops.svc.cluster.local:8080'"
    ], found


def logsink_service_url(objs: list[dict]) -> str:
    """The in-cluster URL of the rendered logsink Service, from the object itself."""
    svc = one(objs, "Service", LOGSINK)
    (port,) = svc["spec"]["ports"]
    meta = svc["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local:{port['port']}"


@pytest.mark.parametrize(
    ("values", "namespace"),
    [({}, "crops"), ({"ports": {"logsink": 9090}}, "ml-team")],
    ids=["default", "other-port-and-namespace"],
)
def test_the_default_logger_url_is_the_logsink_service_in_chart_and_code(
    values: dict, namespace: str
) -> None:
    """serving.requestLog.url unset: the chart's predictors, and those built at run time from
    the release's ConfigMap or from the packaged defaults, log to the logsink's Service."""
    objs = render(values, namespace=namespace)
    url = logsink_service_url(objs)
    chart_isvc = one(objs, "InferenceService", "crops-retrieval")
    loggers = [chart_isvc["spec"]["predictor"]["logger"]]
    loggers += [c["predictor"]["logger"] for c in chart_isvc["spec"]["canary"]]
    assert {lg["url"] for lg in loggers} == {url}
    p = platform_of(objs)
    assert p.namespace == namespace and p.logsink_url == p.request_log_url == url
    spec = isvc.InferenceServiceSpec(
        name="crops-retrieval", namespace=namespace, model_path="/m", index_path="/i"
    )
    assert isvc.predictor(spec, p)["logger"] == loggers[0]
    assert isvc.canary_predictor(spec, p)["logger"] == loggers[0]
    if not values:  # the packaged defaults, moved to the namespace, say the same
        assert Platform.default(namespace).request_log_url == url


def test_an_explicit_url_wins_and_no_logsink_means_no_logging() -> None:
    spec = isvc.InferenceServiceSpec(name="crops-retrieval", model_path="/m", index_path="/i")
    own = "http://collector.logging.svc.cluster.local/events"
    for values, want in (
        ({"serving": {"requestLog": {"url": own}}}, own),
        ({"serving": {"requestLog": {"url": own}}, "logsink": {"enabled": False}}, own),
        ({"logsink": {"enabled": False}}, None),
    ):
        objs = render(values)
        pred = one(objs, "InferenceService", "crops-retrieval")["spec"]["predictor"]
        built = isvc.predictor(spec, platform_of(objs))
        assert (pred.get("logger") or {}).get("url") == want, values
        assert (built.get("logger") or {}).get("url") == want, values
        sinks = [
            o for o in objs if LOGSINK in o["metadata"]["name"] and o["kind"] != "ServiceAccount"
        ]
        assert bool(sinks) is values.get("logsink", {}).get("enabled", True), values


def test_a_release_from_before_the_logsink_builds_predictors_without_one() -> None:
    """A ConfigMap written by an older chart (no logsink values) means no sink: no logger."""
    doc = json.loads((REPO / "crops" / "k8s" / "platform.json").read_text())
    del doc["values"]["logsink"], doc["values"]["ports"]["logsink"]
    p = Platform.from_document(doc)
    assert p.logsink_url is None and p.request_log_url == ""
    spec = isvc.InferenceServiceSpec(name="crops-retrieval", model_path="/m", index_path="/i")
    assert "logger" not in isvc.predictor(spec, p)


def test_the_generated_manifests_and_platform_json_match_the_chart() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert Platform.default() == platform_of(render({}))


def test_the_chart_pins_the_ray_the_project_installs() -> None:
    import ray

    assert Platform.default().values.ray.rayVersion == ray.__version__


def test_a_bad_platform_description_is_refused() -> None:
    doc = json.loads((REPO / "crops" / "k8s" / "platform.json").read_text())
    doc["values"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ValueError, match="runAsUser"):
        Platform.from_document(doc)


def test_the_platform_is_read_from_the_cluster_with_the_pipeline_account(
    accounts, namespace: str
) -> None:
    """The pipeline's account reads the release's ConfigMap; a missing one is named."""
    with pytest.raises(KubeError, match=f"ConfigMap {namespace}/crops-platform not found"):
        Platform.from_cluster(namespace, client=accounts.admin)
    accounts.install({"image": {"tag": "9.9.9"}})
    got = Platform.from_cluster(namespace, client=accounts.client("crops-pipeline"))
    assert got.image == "crops:9.9.9" and got.namespace == namespace
    with pytest.raises(KubeError, match="403"):
        Platform.from_cluster(namespace, client=accounts.client("crops-serve"))


def test_a_task_without_the_artifacts_volume_is_told_which_one(tmp_path) -> None:
    """Staging a RayJob or publishing a model needs the volume where the pods mount it."""
    from crops.k8s.rayjob import staging_root

    p = Platform.default("ml")
    with pytest.raises(KubeError, match="PVC ml/crops-artifacts\\) is not mounted at /artifacts"):
        staging_root(p, "k", "train")
    values = p.values.model_copy(
        update={"storage": p.values.storage.model_copy(update={"mountPath": str(tmp_path)})}
    )
    mounted = p.model_copy(update={"values": values})
    assert staging_root(mounted, "k", "train") == tmp_path / "runs" / "k" / "train"
