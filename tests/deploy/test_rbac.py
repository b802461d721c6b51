"""The RBAC of each ServiceAccount the chart renders, exercised for real on a kube-apiserver: a
token per account, real API calls, 2xx where the account is meant to act and 403 everywhere
else; the A/B account then applies each decision with the real client, as the CronJob would,
and the pipeline's account rolls the next candidate out."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from support.cluster import admin_token, relocate
from support.cluster import rendering as rendered
from support.deploy import (
    KSERVE,
    RAY,
    abtest_options,
    abtest_pod,
    by_kind,
    canaries,
    dropped,
    serve_options,
)

ACCOUNTS = (
    "crops-pipeline",
    "crops-abtest",
    "crops-ray",
    "crops-serve",
    "crops-vllm",
    "crops-logsink",
)


# What each account may do (the contract, written out here rather than read from the chart);
# every other call below must be refused with 403.
ALLOWED = {
    "crops-pipeline": {
        "create rayjob",
        "get rayjob",
        "list rayjobs",
        "watch rayjobs",
        "get rayjob status",
        "delete rayjob",
        "create isvc",
        "get isvc",
        "list isvcs",
        "watch isvcs",
        "patch isvc",
        "update isvc",
        "get isvc status",
    },
    # --apply: patch sets the canary's traffic, update (a replace) promotes or rolls back.
    "crops-abtest": {"get isvc", "list isvcs", "watch isvcs", "patch isvc", "update isvc"},
    "crops-ray": set(),
    "crops-serve": set(),
    "crops-vllm": set(),
    "crops-logsink": set(),  # the sink only receives events and writes files
}


def _calls(
    api_client, ns: str, sa: str, isvc: dict, rayjob: dict, current: Callable[[], dict]
) -> dict[str, Callable]:
    """Real API calls, in order; names match ALLOWED. Deletes target objects the admin made;
    `current` reads the predictor as the admin (a replace must carry its resourceVersion)."""
    from kubernetes import client

    co, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)

    def renamed(obj: dict, name: str) -> dict:
        obj = copy.deepcopy(obj)
        obj["metadata"] = {"name": name, "namespace": ns}
        return obj

    def rolled_back() -> dict:
        """The predictor without its canary, as `crops abtest --apply` replaces it."""
        obj = copy.deepcopy(current())
        obj["spec"].pop("canary", None)
        return obj

    def watch(group: str, version: str, plural: str) -> None:
        resp = co.list_namespaced_custom_object(
            group, version, ns, plural, watch=True, timeout_seconds=1, _preload_content=False
        )
        resp.read()
        resp.release_conn()

    return {
        "create rayjob": lambda: co.create_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], renamed(rayjob, f"rj-{sa}")
        ),
        "get rayjob": lambda: co.get_namespaced_custom_object(*RAY[:2], ns, RAY[2], "crops-train"),
        "list rayjobs": lambda: co.list_namespaced_custom_object(*RAY[:2], ns, RAY[2]),
        "watch rayjobs": lambda: watch(*RAY),
        "get rayjob status": lambda: co.get_namespaced_custom_object_status(
            *RAY[:2], ns, RAY[2], "crops-train"
        ),
        "patch rayjob": lambda: co.patch_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], "crops-train", {"spec": {"suspend": False}}
        ),
        "patch rayjob status": lambda: co.patch_namespaced_custom_object_status(
            *RAY[:2], ns, RAY[2], "crops-train", {"status": {"jobStatus": "SUCCEEDED"}}
        ),
        "delete rayjob": lambda: co.delete_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], "crops-index"
        ),
        "list rayjobs elsewhere": lambda: co.list_namespaced_custom_object(
            *RAY[:2], "default", RAY[2]
        ),
        "create isvc": lambda: co.create_namespaced_custom_object(
            *KSERVE[:2], ns, KSERVE[2], renamed(isvc, f"isvc-{sa}")
        ),
        "get isvc": lambda: co.get_namespaced_custom_object(
            *KSERVE[:2], ns, KSERVE[2], "crops-retrieval"
        ),
        "list isvcs": lambda: co.list_namespaced_custom_object(*KSERVE[:2], ns, KSERVE[2]),
        "watch isvcs": lambda: watch(*KSERVE),
        "patch isvc": lambda: co.patch_namespaced_custom_object(
            *KSERVE[:2],
            ns,
            KSERVE[2],
            "crops-retrieval",
            {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        ),
        "update isvc": lambda: co.replace_namespaced_custom_object(
            *KSERVE[:2], ns, KSERVE[2], "crops-retrieval", rolled_back()
        ),
        "get isvc status": lambda: co.get_namespaced_custom_object_status(
            *KSERVE[:2], ns, KSERVE[2], "crops-retrieval"
        ),
        "patch isvc status": lambda: co.patch_namespaced_custom_object_status(
            *KSERVE[:2], ns, KSERVE[2], "crops-retrieval", {"status": {"url": "http://x"}}
        ),
        "delete isvc": lambda: co.delete_namespaced_custom_object(
            *KSERVE[:2], ns, KSERVE[2], "crops-retrieval"
        ),
        "list secrets": lambda: core.list_namespaced_secret(ns),
        "get secret": lambda: core.read_namespaced_secret("crops-llm", ns),
        "list pods": lambda: core.list_namespaced_pod(ns),
        "list configmaps": lambda: core.list_namespaced_config_map(ns),
        "create rolebinding": lambda: rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": f"escalate-{sa}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            },
        ),
    }


@pytest.mark.parametrize("sa", ACCOUNTS)
def test_each_service_account_can_do_what_it_needs_and_nothing_else(
    sa: str, apiserver, dyn, namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    objs = rendered("helm:default")
    admin = apiserver.api_client()
    # The chart's accounts, roles and bindings, created for real in the test namespace.
    rbac_objs = [o for o in objs if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert {o["metadata"]["name"] for o in rbac_objs if o["kind"] == "ServiceAccount"} == set(
        ACCOUNTS
    )
    for obj in rbac_objs:
        body = relocate(obj, namespace)
        dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"]).create(
            body=body, namespace=namespace
        )
    # What the accounts act on, made by the admin: the chart's own RayJobs and predictor.
    co = client.CustomObjectsApi(admin)
    isvc = relocate(by_kind(objs, "InferenceService")["crops-retrieval"], namespace)
    co.create_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], isvc)
    for job in by_kind(objs, "RayJob").values():
        co.create_namespaced_custom_object(*RAY[:2], namespace, RAY[2], relocate(job, namespace))
    client.CoreV1Api(admin).create_namespaced_secret(
        namespace, {"metadata": {"name": "crops-llm"}, "stringData": {"api-key": "test-only"}}
    )

    as_sa = apiserver.api_client(token=admin_token(admin, sa, namespace))
    outcome = {}

    def current() -> dict:
        return co.get_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], "crops-retrieval")

    assert canaries(current()), "the predictor starts with its canary"
    for name, call in _calls(
        as_sa, namespace, sa, isvc, by_kind(objs, "RayJob")["crops-train"], current
    ).items():
        try:
            call()
            outcome[name] = "ok"
        except ApiException as exc:
            outcome[name] = exc.status
    assert {n for n, o in outcome.items() if o == "ok"} == ALLOWED[sa], outcome
    assert {o for o in outcome.values() if o != "ok"} <= {403}, outcome
    # Refused calls changed nothing: the predictor is still there and still the admin's.
    still = current()
    assert "url" not in (still.get("status") or {})
    assert (canaries(still) == []) is ("update isvc" in ALLOWED[sa])
    rayjobs = {
        j["metadata"]["name"]
        for j in co.list_namespaced_custom_object(*RAY[:2], namespace, RAY[2])["items"]
    }
    assert ("crops-index" in rayjobs) is ("delete rayjob" not in ALLOWED[sa])


@pytest.mark.parametrize("action", ["promote", "rollback", "hold"])
@pytest.mark.parametrize("rendering", ["kustomize:kind", "helm:default", "helm:serverless"])
def test_the_abtest_account_applies_each_decision_and_the_pipeline_rolls_out_the_next(
    rendering: str, action: str, apiserver, dyn, namespace: str, kserve
) -> None:
    """What the CronJob's `--apply` does, with its options, its account's token and the real
    client; then the pipeline's account rolls the next candidate out as a canary again and
    waits for Ready (`kserve` plays the controller)."""
    from kubernetes import client

    from crops.k8s.inference_service import InferenceServiceSpec, deploy
    from crops.k8s.rollout import apply_decision

    objs = rendered(rendering)
    admin = apiserver.api_client()
    for obj in objs:
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            body = relocate(obj, namespace)
            dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"]).create(
                body=body, namespace=namespace
            )
    co = client.CustomObjectsApi(admin)
    isvc = relocate(by_kind(objs, "InferenceService")["crops-retrieval"], namespace)
    co.create_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], isvc)
    kserve.settle()  # the CronJob runs on a service KServe has reconciled
    opts = abtest_options(abtest_pod(objs)["containers"][0]["args"][0])
    standard = opts["--canary-mode"] == "Standard"
    as_abtest = apiserver.api_client(token=admin_token(admin, "crops-abtest", namespace))

    result = apply_decision(
        {"action": action},
        isvc=opts["--isvc"],
        namespace=namespace,
        client=as_abtest,
        mode=opts["--canary-mode"],
    )

    after = co.get_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], opts["--isvc"])
    before, spec = isvc["spec"], after["spec"]
    assert result["patched"] is (action != "hold")
    if action == "hold":
        assert dropped(before, spec) == [] and result["canary_traffic_percent"] == 10
        return
    assert canaries(after) == []
    if action == "promote":
        # The candidate serves all traffic; the stable predictor keeps its replicas.
        candidate = before["canary"][0]["predictor"] if standard else before["predictor"]
        assert serve_options(spec["predictor"]) == serve_options(candidate)
        assert "canaryTrafficPercent" not in spec["predictor"]
        assert spec["predictor"]["minReplicas"] == spec["predictor"]["maxReplicas"] == 1
        assert result["canary_traffic_percent"] is None
    elif standard:
        # Rolled back: the promoted predictor exactly as it was, the canary gone.
        assert dropped(before["predictor"], spec["predictor"]) == []
        assert result["canary_traffic_percent"] is None
    else:
        assert spec["predictor"]["canaryTrafficPercent"] == 0
        assert result["canary_traffic_percent"] == 0

    as_pipeline = apiserver.api_client(token=admin_token(admin, "crops-pipeline", namespace))
    nxt = InferenceServiceSpec(
        name=opts["--isvc"],
        namespace=namespace,
        image="crops:0.1.0",
        model_path="/artifacts/serving/crops-retrieval/next/model",
        index_path="/artifacts/serving/crops-retrieval/next/index",
        mode=opts["--canary-mode"],
    )
    rolled = deploy(nxt, canary_percent=10, client=as_pipeline, wait_s=20)
    assert rolled["status"]["observedGeneration"] == rolled["metadata"]["generation"]
    new = canaries(rolled)[0]["predictor"] if standard else rolled["spec"]["predictor"]
    assert serve_options(new)["--model"] == nxt.model_path
    if standard:
        assert canaries(rolled)[0]["trafficPercent"] == 10
    else:
        assert new["canaryTrafficPercent"] == 10
