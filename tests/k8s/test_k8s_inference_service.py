"""InferenceService client and the A/B job's decision against a real kube-apiserver with
KServe's CRD, each call made with the account that makes it on a cluster (the chart's
crops-pipeline deploys, crops-abtest applies decisions): the safe first deploy (control and
canary), later canaries, both canary mechanisms (Standard `spec.canary`, Serverless
`canaryTrafficPercent`), promote, roll back, hold and their no-ops, and the Ready wait. No
controller runs: the `kserve` fixture plays KServe by patching `/status`."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client as k8s

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
    serving_urls,
    set_canary_traffic,
)
from crops.k8s.rollout import apply_decision
from k8s.test_k8s_rayjob import assert_sent_is_kept

WAIT_S = 20.0  # the player marks a change Ready within a few tenths of a second


def _spec(namespace: str, model: str, mode: str = "Standard") -> InferenceServiceSpec:
    return InferenceServiceSpec(
        name="crops",
        namespace=namespace,
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


def _isvcs(apiserver, namespace: str) -> list[dict]:
    """The InferenceServices in the namespace, read as the admin (what really is there)."""
    co = k8s.CustomObjectsApi(apiserver.api_client())
    return co.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]


@pytest.fixture
def pipeline(accounts):
    """An ApiClient acting as the pipeline's account (crops-pipeline), the chart installed."""
    return accounts.install().client("crops-pipeline")


# ----------------------------------------------------------------------------- the manifest


def test_the_manifest_is_kept_whole_by_the_crd(pipeline, namespace) -> None:
    isvcs = InferenceServiceClient(pipeline)
    spec = _spec(namespace, "v1")
    isvcs.create(spec)
    stored = isvcs.get("crops", namespace)
    assert_sent_is_kept(manifest(spec)["spec"], stored["spec"])
    # KServe's Standard mode under its older name, which every 0.x release understands
    assert stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    pod = stored["spec"]["predictor"]
    # the labels the chart's NetworkPolicies admit, and no API token in the serving pod
    assert pod["labels"]["app.kubernetes.io/component"] == "predictor"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["command"] == ["crops"] and container["args"][:1] == ["serve"]
    assert container["securityContext"]["runAsNonRoot"] is True


# ----------------------------------------------------------------------------- deploy


def test_a_first_deploy_serves_the_control_and_the_candidate_as_a_canary(
    pipeline, kserve, namespace
) -> None:
    """No InferenceService yet: one object, the control as the default predictor and the
    candidate as the canary at canary_percent; deploy returns once KServe says Ready."""
    obj = deploy(
        _spec(namespace, "v2"),
        10,
        control=_spec(namespace, "v1"),
        client=pipeline,
        wait_s=WAIT_S,
    )
    assert _serving(obj) == ("v1", "v2", 10) and mode_of(obj) == "Standard"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]}["Ready"] == "True"
    canary = obj["spec"]["canary"][0]["predictor"]  # named, no autoscaling fields (KServe 0.20)
    assert canary["name"] == "candidate" and "minReplicas" not in canary
    # created once, with both: never a moment with the candidate alone
    assert [(g, _serving({"spec": spec})) for _, g, spec in kserve.seen] == [(1, ("v1", "v2", 10))]
    assert serving_urls(_spec(namespace, "v2")) == {
        "control": f"http://crops-predictor.{namespace}.svc.cluster.local",
        "treatment": f"http://crops-candidate-predictor.{namespace}.svc.cluster.local",
    }


def test_a_later_deploy_rolls_the_candidate_out_beside_the_served_model(
    pipeline, kserve, namespace
) -> None:
    """The service exists: the candidate replaces the canary; the served model stays. The
    wait is for the new spec: the old Ready=True (KServe has not seen it yet) does not count."""
    deploy(_spec(namespace, "v2"), 10, control=_spec(namespace, "v1"), client=pipeline)
    kserve.delay_s = 1.0
    t0 = time.monotonic()
    obj = deploy(
        _spec(namespace, "v3"), 20, control=_spec(namespace, "v9"), client=pipeline, wait_s=WAIT_S
    )
    assert time.monotonic() - t0 >= 1.0  # waited for KServe to observe the new generation
    assert _serving(obj) == ("v1", "v3", 20)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert obj["status"]["canaryStatuses"] == [
        {"name": "candidate", "ready": True, "trafficPercent": 20}
    ]


def test_no_path_sends_all_traffic_to_an_untested_model(
    apiserver, pipeline, kserve, namespace
) -> None:
    v1, v2 = _spec(namespace, "v1"), _spec(namespace, "v2")
    for percent in (None, 100):
        with pytest.raises(ValueError, match="would send all traffic to an untested model"):
            deploy(v2, percent, control=v1, client=pipeline)
    with pytest.raises(ValueError, match=f"InferenceService {namespace}/crops does not exist"):
        deploy(v2, 10, client=pipeline)  # no control to serve beside it
    with pytest.raises(ValueError, match="leave canary_percent unset"):
        deploy(v2, 10, client=pipeline, promote_directly=True)
    with pytest.raises(ValueError, match="wait_s must be > 0"):
        deploy(v2, 10, control=v1, client=pipeline, wait_s=0)
    assert _isvcs(apiserver, namespace) == []  # every refusal came before any write
    # asked for explicitly: the candidate alone, then replacing the served one
    obj = deploy(v1, client=pipeline, promote_directly=True, wait_s=WAIT_S)
    assert _serving(obj) == ("v1", None, None)
    deploy(v2, 10, client=pipeline)
    obj = deploy(_spec(namespace, "v3"), client=pipeline, promote_directly=True, wait_s=WAIT_S)
    assert _serving(obj) == ("v3", None, None)
    with pytest.raises(KubeError, match="runs in Standard mode; the candidate asks for Serverless"):
        deploy(_spec(namespace, "v4", "Serverless"), 10, client=pipeline)


def test_a_canary_that_never_becomes_ready_ends_naming_the_object_and_its_conditions(
    pipeline, kserve, namespace
) -> None:
    kserve.fail = {
        "reason": "ProgressDeadlineExceeded",
        "message": "Readiness probe failed: GET /v1/models/crops: connection refused",
    }
    t0 = time.monotonic()
    with pytest.raises(KubeTimeout) as e:
        deploy(
            _spec(namespace, "v2"), 10, control=_spec(namespace, "v1"), client=pipeline, wait_s=2
        )
    assert time.monotonic() - t0 < 15  # no hang
    message = str(e.value)
    assert f"InferenceService {namespace}/crops created with the control and a 10 % canary" in (
        message
    )
    assert f"InferenceService {namespace}/crops Ready: not done after 2 s" in message
    assert (
        "PredictorReady=False reason=ProgressDeadlineExceeded message=Readiness probe failed: "
        "GET /v1/models/crops: connection refused"
    ) in message
    assert "Ready=False reason=ProgressDeadlineExceeded" in message
    assert "canary candidate (10 %) not ready" in message


# ----------------------------------------------------------------------------- decisions


def test_standard_mode_canary_promote_rollback_and_their_no_ops(
    accounts, kserve, namespace
) -> None:
    as_pipeline = accounts.install().client("crops-pipeline")
    as_abtest = accounts.client("crops-abtest")
    isvcs = InferenceServiceClient(as_abtest)
    deploy(_spec(namespace, "v2"), 10, control=_spec(namespace, "v1"), client=as_pipeline)
    assert _serving(set_canary_traffic("crops", namespace, 50, client=as_abtest)) == (
        "v1",
        "v2",
        50,
    )
    kserve.settle()  # (the A/B job decides long after KServe has caught up)

    held = apply_decision({"action": "hold"}, isvc="crops", namespace=namespace, client=as_abtest)
    assert held == {
        "action": "hold",
        "isvc": "crops",
        "namespace": namespace,
        "patched": False,
        "canary_traffic_percent": 50,
    }
    assert _serving(isvcs.get("crops", namespace)) == ("v1", "v2", 50)

    out = apply_decision({"action": "promote"}, isvc="crops", namespace=namespace, client=as_abtest)
    assert out["patched"] and out["canary_traffic_percent"] is None and "noop" not in out
    kserve.settle()
    promoted = isvcs.get("crops", namespace)
    assert _serving(promoted) == ("v2", None, None)
    assert promoted["spec"]["predictor"]["name"] == "candidate"  # retargeted, not restarted
    assert promoted["spec"]["predictor"]["minReplicas"] == 1  # the stable one's scaling stays

    # no canary now: promote and rollback change nothing and say so
    for action, verb in (("promote", "promote"), ("rollback", "roll back")):
        out = apply_decision(
            {"action": action}, isvc="crops", namespace=namespace, client=as_abtest
        )
        assert out["patched"] is False and out["canary_traffic_percent"] is None
        assert out["noop"] == (
            f"InferenceService {namespace}/crops has no canary to {verb} "
            "(spec.canary is empty): nothing changed"
        )
    after = isvcs.get("crops", namespace)
    assert after["metadata"]["resourceVersion"] == promoted["metadata"]["resourceVersion"]

    deploy(_spec(namespace, "v3"), 10, client=as_pipeline)
    apply_decision({"action": "rollback"}, isvc="crops", namespace=namespace, client=as_abtest)
    assert _serving(isvcs.get("crops", namespace)) == ("v2", None, None)


def test_serverless_first_deploy_creates_the_control_then_rolls_the_candidate_out(
    accounts, kserve, namespace
) -> None:
    """Knative makes revisions: the control is created and Ready first, then the candidate is
    the next revision with canaryTrafficPercent; the A/B arms are the prev- and latest- tags."""
    as_pipeline = accounts.install().client("crops-pipeline")
    as_abtest = accounts.client("crops-abtest")
    isvcs = InferenceServiceClient(as_abtest)
    v1, v2 = _spec(namespace, "v1", "Serverless"), _spec(namespace, "v2", "Serverless")
    obj = deploy(v2, 10, control=v1, client=as_pipeline, wait_s=WAIT_S)
    # KServe keeps the last rolled-out revision for the rest: the predictor is the new one.
    assert _serving(obj) == ("v2", None, 10) and mode_of(obj) == "Serverless"
    assert "canary" not in obj["spec"]
    assert [(g, _serving({"spec": spec})) for _, g, spec in kserve.seen] == [
        (1, ("v1", None, None)),  # the control alone, Ready before the candidate came
        (2, ("v2", None, 10)),
    ]
    assert obj["status"]["components"]["predictor"]["traffic"] == [
        {"tag": "prev", "percent": 90},
        {"tag": "latest", "percent": 10},
    ]
    assert serving_urls(v2) == {
        "control": f"http://prev-crops-predictor.{namespace}.svc.cluster.local",
        "treatment": f"http://latest-crops-predictor.{namespace}.svc.cluster.local",
    }

    apply_decision({"action": "rollback"}, isvc="crops", namespace=namespace, client=as_abtest)
    assert _serving(isvcs.get("crops", namespace)) == ("v2", None, 0)

    set_canary_traffic("crops", namespace, 25, client=as_abtest)
    kserve.settle()
    apply_decision({"action": "promote"}, isvc="crops", namespace=namespace, client=as_abtest)
    promoted = isvcs.get("crops", namespace)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    out = apply_decision({"action": "promote"}, isvc="crops", namespace=namespace, client=as_abtest)
    assert out["patched"] is False
    assert out["noop"].startswith(f"InferenceService {namespace}/crops has no canary to promote")


def test_the_mode_can_be_forced_by_configuration(accounts, namespace) -> None:
    """An object without the annotation is steered the way configuration says."""
    as_pipeline = accounts.install().client("crops-pipeline")
    as_abtest = accounts.client("crops-abtest")
    body = manifest(_spec(namespace, "v1"))
    del body["metadata"]["annotations"]
    k8s.CustomObjectsApi(as_pipeline).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    forced = InferenceServiceClient(as_abtest, mode="Serverless")
    obj = forced.set_canary_traffic("crops", namespace, 30)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 30
    # forced Standard finds no spec.canary: nothing to promote, and nothing changes
    out = InferenceServiceClient(as_abtest, mode="Standard").promote("crops", namespace)
    assert out["patched"] is False and "has no canary to promote" in out["noop"]
    with pytest.raises(ValueError, match="mode must be"):
        InferenceServiceClient(as_abtest, mode="Knative")
    for percent in (-1, 101, 12.5, True):
        with pytest.raises(ValueError, match="0..100"):
            set_canary_traffic("crops", namespace, percent, client=as_abtest)


def test_a_stale_write_is_refused_not_lost(accounts, kserve, namespace) -> None:
    """Promotion replaces with the read resourceVersion: a concurrent change wins (409)."""
    as_pipeline = accounts.install().client("crops-pipeline")
    as_abtest = accounts.client("crops-abtest")
    isvcs = InferenceServiceClient(as_abtest)
    deploy(_spec(namespace, "v2"), 10, control=_spec(namespace, "v1"), client=as_pipeline)
    stale = isvcs.get("crops", namespace)
    set_canary_traffic("crops", namespace, 20, client=as_abtest)
    stale["spec"]["predictor"] = stale["spec"].pop("canary")[0]["predictor"]
    with pytest.raises(KubeError, match="HTTP 409") as e:
        isvcs._replace(stale, "promoting the canary")
    assert e.value.status == 409
    assert _serving(isvcs.get("crops", namespace)) == ("v1", "v2", 20)


def test_wait_ready_follows_the_ready_condition_of_the_current_generation(
    apiserver, pipeline, namespace
) -> None:
    isvcs = InferenceServiceClient(pipeline)
    created = isvcs.create(_spec(namespace, "v1"))
    raw = k8s.CustomObjectsApi(apiserver.api_client())  # the test plays KServe

    def kserve(status: str, observed: int, reason: str = "") -> None:
        cond = {"type": "Ready", "status": status}
        if reason:  # (kube-apiserver 1.20 reads an empty string here as null and refuses it)
            cond |= {"reason": reason, "message": reason.lower()}
        raw.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "crops",
            {"status": {"observedGeneration": observed, "conditions": [cond]}},
        )

    generation = created["metadata"]["generation"]
    kserve("False", generation, "PredictorNotReady")
    with pytest.raises(KubeTimeout, match="Ready=False reason=PredictorNotReady"):
        isvcs.wait_ready("crops", namespace, timeout_s=0.6)
    # Ready, but for an older spec: not yet
    kserve("True", generation - 1)
    with pytest.raises(KubeTimeout, match=f"has not observed generation {generation} yet"):
        isvcs.wait_ready("crops", namespace, timeout_s=0.6)

    timer = threading.Timer(0.5, kserve, args=("True", generation))
    timer.start()
    obj = isvcs.wait_ready("crops", namespace, timeout_s=15)
    timer.join()
    assert obj["status"]["conditions"][0]["status"] == "True"


def test_missing_objects_and_unreachable_servers_are_named(accounts, namespace) -> None:
    as_abtest = accounts.install().client("crops-abtest")
    with pytest.raises(KubeError, match=f"InferenceService {namespace}/ghost failed: HTTP 404"):
        apply_decision({"action": "promote"}, isvc="ghost", namespace=namespace, client=as_abtest)
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
    run, accounts, kserve, namespace, tiny_dir, tiny_world, tmp_path
) -> None:
    """`crops abtest --apply` (the CronJob's command, as crops-abtest) on two endpoints."""
    from fakes.fake_kserve import FakeKServeEndpoint

    as_pipeline = accounts.install().client("crops-pipeline")
    deploy(_spec(namespace, "v2"), 10, control=_spec(namespace, "v1"), client=as_pipeline)
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
            accounts.kubeconfig("crops-abtest"),
        )
    assert code == 0, stderr
    report = json.loads((tmp_path / "R" / "ab_report.json").read_text())
    assert report["decision"]["action"] == "rollback"  # the error-rate guardrail
    assert f"InferenceService {namespace}/crops: canary rolled back" in stdout
    obj = InferenceServiceClient(as_pipeline).get("crops", namespace)
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
