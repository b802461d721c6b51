"""InferenceService client and the A/B job's decision against a real kube-apiserver with
KServe's CRD: both canary mechanisms (Standard `spec.canary`, Serverless
`canaryTrafficPercent`), promote, roll back, hold, and the Ready wait (the test plays KServe)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client as k8s
from test_k8s_rayjob import assert_sent_is_kept

from crops.evaluate.abtest import apply_decision
from crops.k8s.client import KubeError, KubeTimeout
from crops.k8s.inference_service import (
    GROUP,
    PLURAL,
    VERSION,
    InferenceServiceClient,
    InferenceServiceSpec,
    canary_percent,
    deploy,
    manifest,
    mode_of,
    set_canary_traffic,
)


def _spec(namespace: str, model: str, mode: str = "Standard") -> InferenceServiceSpec:
    return InferenceServiceSpec(
        name="crops",
        namespace=namespace,
        image="crops:0.1.0",
        model_path=f"/artifacts/{model}/model",
        index_path=f"/artifacts/{model}/index",
        mode=mode,
    )


def _model_of(predictor: dict) -> str:
    args = predictor["containers"][0]["args"]
    return args[args.index("--model") + 1].split("/")[2]


def _serving(obj: dict) -> tuple[str, str | None, int | None]:
    """(model of spec.predictor, model of the canary or None, canary share or None)."""
    spec = obj["spec"]
    if spec.get("canary"):
        return (
            _model_of(spec["predictor"]),
            _model_of(spec["canary"][0]["predictor"]),
            (spec["canary"][0]["trafficPercent"]),
        )
    return _model_of(spec["predictor"]), None, canary_percent(obj)


def test_the_manifest_is_kept_whole_by_the_crd(apiserver, namespace) -> None:
    isvcs = InferenceServiceClient(apiserver.api_client())
    spec = _spec(namespace, "v1")
    isvcs.create(spec)
    stored = isvcs.get("crops", namespace)
    assert_sent_is_kept(manifest(spec)["spec"], stored["spec"])
    assert stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    pod = stored["spec"]["predictor"]
    # the labels the chart's NetworkPolicies admit, and no API token in the serving pod
    assert pod["labels"]["app.kubernetes.io/component"] == "predictor"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["command"] == ["crops"] and container["args"][:1] == ["serve"]
    assert container["securityContext"]["runAsNonRoot"] is True


def test_standard_mode_canary_promote_and_rollback(apiserver, namespace) -> None:
    api = apiserver.api_client()
    isvcs = InferenceServiceClient(api)
    deploy(_spec(namespace, "v1"), canary_percent=None, client=api)
    assert _serving(isvcs.get("crops", namespace)) == ("v1", None, None)

    obj = deploy(_spec(namespace, "v2"), canary_percent=10, client=api)
    assert _serving(obj) == ("v1", "v2", 10) and mode_of(obj) == "Standard"
    canary = obj["spec"]["canary"][0]["predictor"]  # named, no autoscaling fields (KServe 0.20)
    assert canary["name"] == "candidate" and "minReplicas" not in canary
    assert _spec(namespace, "v2").canary_url == (
        f"http://crops-candidate-predictor.{namespace}.svc.cluster.local"
    )
    assert _serving(set_canary_traffic("crops", namespace, 50, client=api)) == ("v1", "v2", 50)

    held = apply_decision({"action": "hold"}, isvc="crops", namespace=namespace, client=api)
    assert held == {
        "action": "hold",
        "isvc": "crops",
        "namespace": namespace,
        "patched": False,
        "canary_traffic_percent": 50,
    }
    assert _serving(isvcs.get("crops", namespace)) == ("v1", "v2", 50)

    out = apply_decision({"action": "promote"}, isvc="crops", namespace=namespace, client=api)
    assert out["patched"] and out["canary_traffic_percent"] is None
    promoted = isvcs.get("crops", namespace)
    assert _serving(promoted) == ("v2", None, None)
    assert promoted["spec"]["predictor"]["name"] == "candidate"  # retargeted, not restarted
    assert promoted["spec"]["predictor"]["minReplicas"] == 1  # the stable one's scaling stays

    deploy(_spec(namespace, "v3"), canary_percent=10, client=api)
    apply_decision({"action": "rollback"}, isvc="crops", namespace=namespace, client=api)
    assert _serving(isvcs.get("crops", namespace)) == ("v2", None, None)
    with pytest.raises(KubeError, match="has no canary to roll back"):
        isvcs.rollback("crops", namespace)


def test_serverless_mode_canary_promote_and_rollback(apiserver, namespace) -> None:
    api = apiserver.api_client()
    isvcs = InferenceServiceClient(api)
    deploy(_spec(namespace, "v1", "Serverless"), canary_percent=None, client=api)
    obj = deploy(_spec(namespace, "v2", "Serverless"), canary_percent=10, client=api)
    # KServe keeps the last rolled-out revision for the rest: the predictor is the new one.
    assert _serving(obj) == ("v2", None, 10) and mode_of(obj) == "Serverless"
    assert "canary" not in obj["spec"]

    apply_decision({"action": "rollback"}, isvc="crops", namespace=namespace, client=api)
    assert _serving(isvcs.get("crops", namespace)) == ("v2", None, 0)

    set_canary_traffic("crops", namespace, 25, client=api)
    apply_decision({"action": "promote"}, isvc="crops", namespace=namespace, client=api)
    promoted = isvcs.get("crops", namespace)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    with pytest.raises(KubeError, match="has no canary to promote"):
        isvcs.promote("crops", namespace)


def test_the_mode_can_be_forced_by_configuration(apiserver, namespace) -> None:
    """An object without the annotation is steered the way configuration says."""
    api = apiserver.api_client()
    body = manifest(_spec(namespace, "v1"))
    del body["metadata"]["annotations"]
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    forced = InferenceServiceClient(api, mode="Serverless")
    obj = forced.set_canary_traffic("crops", namespace, 30)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 30
    with pytest.raises(KubeError, match="no canary"):  # forced Standard finds no spec.canary
        InferenceServiceClient(api, mode="Standard").promote("crops", namespace)
    with pytest.raises(ValueError, match="mode must be"):
        InferenceServiceClient(api, mode="Knative")


@pytest.mark.parametrize("percent", [-1, 101, 12.5, True])
def test_bad_percents_are_refused(apiserver, namespace, percent) -> None:
    with pytest.raises(ValueError, match="0..100"):
        set_canary_traffic("crops", namespace, percent, client=apiserver.api_client())


def test_a_stale_write_is_refused_not_lost(apiserver, namespace) -> None:
    """Promotion replaces with the read resourceVersion: a concurrent change wins (409)."""
    api = apiserver.api_client()
    isvcs = InferenceServiceClient(api)
    deploy(_spec(namespace, "v1"), canary_percent=None, client=api)
    deploy(_spec(namespace, "v2"), canary_percent=10, client=api)
    stale = isvcs.get("crops", namespace)
    set_canary_traffic("crops", namespace, 20, client=api)
    stale["spec"]["predictor"] = stale["spec"].pop("canary")[0]["predictor"]
    with pytest.raises(KubeError, match="HTTP 409") as e:
        isvcs._replace(stale, "promoting the canary")
    assert e.value.status == 409
    assert _serving(isvcs.get("crops", namespace)) == ("v1", "v2", 20)


def test_wait_ready_follows_the_ready_condition(apiserver, namespace) -> None:
    api = apiserver.api_client()
    isvcs = InferenceServiceClient(api)
    isvcs.create(_spec(namespace, "v1"))
    raw = k8s.CustomObjectsApi(api)

    def kserve(status: str, reason: str = "") -> None:
        cond = {"type": "Ready", "status": status}
        if reason:  # (kube-apiserver 1.20 reads an empty string here as null and refuses it)
            cond |= {"reason": reason, "message": reason.lower()}
        raw.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "crops", {"status": {"conditions": [cond]}}
        )

    kserve("False", "PredictorNotReady")
    with pytest.raises(KubeTimeout, match="Ready=False reason=PredictorNotReady"):
        isvcs.wait_ready("crops", namespace, timeout_s=0.6)

    timer = threading.Timer(0.5, kserve, args=("True",))
    timer.start()
    obj = isvcs.wait_ready("crops", namespace, timeout_s=15)
    timer.join()
    assert obj["status"]["conditions"][0]["status"] == "True"


def test_missing_objects_and_unreachable_servers_are_named(apiserver, namespace) -> None:
    api = apiserver.api_client()
    with pytest.raises(KubeError, match=f"InferenceService {namespace}/ghost failed: HTTP 404"):
        apply_decision({"action": "promote"}, isvc="ghost", namespace=namespace, client=api)
    from kubernetes.client import ApiClient, Configuration

    cfg = Configuration()
    cfg.host = "https://127.0.0.1:1"
    cfg.retries = 0
    t0 = time.monotonic()
    with pytest.raises(KubeError, match="unreachable"):
        InferenceServiceClient(ApiClient(cfg)).get("crops", namespace)
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_the_abtest_cli_applies_its_decision_to_the_cluster(
    run, apiserver, namespace, tiny_dir, tiny_world, tmp_path
) -> None:
    """`crops abtest --apply` (the CronJob's command) on two endpoints, then the object."""
    from fake_kserve import FakeKServeEndpoint

    api = apiserver.api_client()
    deploy(_spec(namespace, "v1"), canary_percent=None, client=api)
    deploy(_spec(namespace, "v2"), canary_percent=10, client=api)
    flaky = FakeKServeEndpoint(tiny_world, fail_share=0.3)
    with FakeKServeEndpoint(tiny_world) as good, flaky:
        code, stdout, stderr = run(
            "abtest",
            "--world",
            tiny_dir,
            "--control",
            good.url,
            "--treatment",
            flaky.url,
            "--treatment-share",
            "0.5",
            "--days",
            "2",
            "--min-users-per-arm",
            "30",
            "--max-p99-ms",
            "60000",
            "--out",
            tmp_path / "R",
            "--apply",
            "--isvc",
            "crops",
            "--namespace",
            namespace,
            "--kubeconfig",
            apiserver.kubeconfig,
        )
    assert code == 0, stderr
    report = json.loads((tmp_path / "R" / "ab_report.json").read_text())
    assert report["decision"]["action"] == "rollback"  # the error-rate guardrail
    assert f"InferenceService {namespace}/crops: canary rolled back" in stdout
    obj = InferenceServiceClient(api).get("crops", namespace)
    assert _serving(obj) == ("v1", None, None)


def test_the_abtest_cli_refuses_a_missing_kubeconfig_before_the_test(
    run, tiny_dir, tmp_path
) -> None:
    code, _, stderr = run(
        "abtest",
        "--world",
        tiny_dir,
        "--control",
        "http://127.0.0.1:9",
        "--treatment",
        "http://127.0.0.1:9",
        "--out",
        tmp_path / "R",
        "--apply",
        "--isvc",
        "crops",
        "--namespace",
        "ns",
        "--kubeconfig",
        tmp_path / "nope.yaml",
    )
    assert code == 2 and "no usable Kubernetes configuration" in stderr
    assert not (tmp_path / "R").exists()
