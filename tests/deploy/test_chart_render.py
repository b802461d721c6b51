"""The deploy artefacts as rendered: kustomize overlays and the Helm chart, and the Dockerfiles.

Every rendering (three overlays, four chart value sets) is parsed and checked for the
properties the platform promises (requests and limits, non-root, read-only root filesystems,
no inline secrets, RayJob lifecycle fields, pinned images without registry hosts, GPU only
where asked, one InferenceService whose canary the A/B CronJob steers, vLLM probes that send
the API key from the environment); the chart refuses values that would break them.

The server-side dry run of the same renderings is tests/deploy/test_dry_run.py, the accounts'
rights tests/deploy/test_rbac.py, the kind script tests/deploy/test_scripts.py.
"""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from support.cluster import RENDERINGS
from support.cluster import rendering as rendered
from support.deploy import (
    abtest_command,
    abtest_pod,
    by_kind,
    canaries,
    deployment_mode,
    pod_specs,
    quantity,
    serve_options,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "crops"
RAY_VERSION = "2.60.0"


# Every kind the artefacts may contain; a new kind must be added here (and to pod_specs if it
# runs pods) before the checks below accept it.
KNOWN_KINDS = {
    "Namespace",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "CronJob",
    "RayJob",
    "InferenceService",
    "NetworkPolicy",
}


# ------------------------------------------------------------------ the checks


def registry_host(image: str) -> str | None:
    """The registry host an image reference names, if any: Docker's rule, a first path part
    with a '.' or a ':' (a port), or 'localhost'."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def pod_problems(obj: dict) -> list[str]:
    """What breaks the pod promises: resources, non-root, read-only root with a writable /tmp,
    no privilege escalation, pinned images without a registry host."""
    problems = []
    for where, pod in pod_specs(obj):
        name = f"{obj['kind']}/{obj['metadata']['name']} {where}"
        pod_sec = pod.get("securityContext") or {}
        if (pod_sec.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        tmp_volumes = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
        containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
        if not containers:
            problems.append(f"{name}: no containers")
        for c in containers:
            cname = f"{name} container {c.get('name')}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        problems.append(f"{cname}: no {r} {part}")
            for r, lim in (res.get("limits") or {}).items():
                req = (res.get("requests") or {}).get(r)
                if req is not None and quantity(req) > quantity(lim):
                    problems.append(f"{cname}: {r} request {req} above limit {lim}")
            sec = c.get("securityContext") or {}
            if sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot")) is not True:
                problems.append(f"{cname}: runAsNonRoot is not true")
            if sec.get("runAsUser", pod_sec.get("runAsUser")) in (None, 0):
                problems.append(f"{cname}: no non-zero runAsUser")
            if sec.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cname}: root filesystem is writable")
            if sec.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cname}: privilege escalation allowed")
            if "ALL" not in ((sec.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cname}: capabilities not dropped")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            if mounts.get("/tmp") not in tmp_volumes:
                problems.append(f"{cname}: /tmp is not a writable emptyDir")
            image = c.get("image", "")
            if registry_host(image):
                problems.append(f"{cname}: image {image} names a registry host")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{cname}: image {image} is not pinned to a tag")
            if not c.get("imagePullPolicy"):
                problems.append(f"{cname}: no imagePullPolicy")
    return problems


SECRETISH = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.I)


def secret_problems(objs: list[dict]) -> list[str]:
    """Secrets with values, and secret-looking environment variables given inline."""
    problems = [
        f"Secret/{o['metadata']['name']} holds values"
        for o in objs
        if o["kind"] == "Secret" and (o.get("data") or o.get("stringData"))
    ]
    for o in objs:
        for where, pod in pod_specs(o):
            for c in pod.get("containers") or []:
                for env in c.get("env") or []:
                    if SECRETISH.search(env["name"]) and "value" in env:
                        problems.append(f"{o['metadata']['name']} {where}: {env['name']} inline")
    return problems


LIFECYCLE = ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds")


def rayjob_problems(obj: dict) -> list[str]:
    spec, name = obj["spec"], obj["metadata"]["name"]
    problems = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(f"{name}: shutdownAfterJobFinishes is not true")
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if not isinstance(spec.get(field), int):
            problems.append(f"{name}: {field} not set")
    if (spec.get("activeDeadlineSeconds") or 0) <= 0:
        problems.append(f"{name}: activeDeadlineSeconds must be positive")
    if spec.get("rayClusterSpec", {}).get("rayVersion") != RAY_VERSION:
        problems.append(f"{name}: rayVersion is not {RAY_VERSION!r}")
    entry = spec.get("entrypoint", "")
    if not re.match(r"python -m crops\.ray_jobs\.(train|build_index) ", entry):
        problems.append(f"{name}: entrypoint {entry!r} is not a ray_jobs script")
    for where, pod in pod_specs(obj):
        if pod.get("serviceAccountName") != "crops-ray":
            problems.append(f"{name} {where}: not run as crops-ray")
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        if not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"{name}: worker replicas outside min..max")
    return problems


def gpu_limits(obj: dict) -> list[str]:
    """The containers of an object that ask for a GPU."""
    return [
        f"{obj['metadata']['name']} {where} {c['name']}"
        for where, pod in pod_specs(obj)
        for c in pod.get("containers") or []
        if "nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {})
    ]


def gpu_tolerated(pod: dict) -> bool:
    return any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or []) and (
        (pod.get("nodeSelector") or {}).get("nvidia.com/gpu.present") == "true"
    )


# ---------------------------------------------------------------- static tests


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_rendering_parses_into_known_namespaced_objects(rendering: str) -> None:
    objs = rendered(rendering)
    kinds = {o["kind"] for o in objs}
    assert kinds - KNOWN_KINDS == set(), f"unexpected kinds {kinds - KNOWN_KINDS}"
    assert {"RayJob", "InferenceService", "CronJob", "Deployment", "NetworkPolicy"} <= kinds
    for o in objs:
        assert o["apiVersion"] and o["metadata"]["name"]
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "crops", o
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "crops", o["metadata"]
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "an object is rendered twice"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_pods_are_bounded_non_root_and_read_only(rendering: str) -> None:
    objs = rendered(rendering)
    assert sum(len(pod_specs(o)) for o in objs) >= 7  # vLLM, 2 x 3 Ray pods, predictor, A/B
    assert [p for o in objs for p in pod_problems(o)] == []


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_no_secret_values_and_the_llm_key_comes_from_the_secret(rendering: str) -> None:
    objs = rendered(rendering)
    assert secret_problems(objs) == []
    vllm = by_kind(objs, "Deployment")["crops-vllm"]
    (container,) = vllm["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "crops-llm",
        "key": "api-key",
    }
    # `vllm serve MODEL ... --port 8000`: the key is read from the environment, never an argument.
    assert container["args"][:5] == [
        "$(MODEL)",
        "--served-model-name",
        "$(MODEL)",
        "--port",
        "8000",
    ]
    assert env["MODEL"]["value"] == "Qwen/Qwen2.5-14B-Instruct"
    assert not any("api-key" in str(a) or "KEY" in str(a) for a in container["args"])
    assert re.fullmatch(r"vllm/vllm-openai:v[0-9]+\.[0-9]+\.[0-9]+", container["image"])


def vllm_container(objs: list[dict]) -> dict:
    vllm = by_kind(objs, "Deployment")["crops-vllm"]
    (container,) = vllm["spec"]["template"]["spec"]["containers"]
    return container


# The probe's request, as it must read: vLLM's /v1/models on the container's port, the key
# taken from the container's environment at probe time (so never written in a manifest).
PROBE_URL = "http://127.0.0.1:8000/v1/models"
PROBE_AUTH = "'Bearer ' + os.environ['VLLM_API_KEY']"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_vllm_is_ready_when_v1_models_answers_with_the_key_from_the_environment(
    rendering: str,
) -> None:
    c = vllm_container(rendered(rendering))
    assert c["ports"][0]["containerPort"] == 8000
    env = {e["name"]: e for e in c["env"]}
    assert set(env["VLLM_API_KEY"]) == {"name", "valueFrom"}  # from the Secret, no value
    for kind in ("startupProbe", "readinessProbe"):
        probe = c[kind]
        # httpGet cannot send the key (vLLM answers 401 on /v1/* without it): an exec probe.
        assert set(probe) - {"periodSeconds", "timeoutSeconds", "failureThreshold"} == {"exec"}
        command = probe["exec"]["command"]
        assert command[:2] == ["python3", "-c"] and len(command) == 3, command
        script = command[2]
        assert f"'{PROBE_URL}'" in script and PROBE_AUTH in script, script
        assert script.count("'Bearer ") == 1 and "VLLM_API_KEY" not in script.replace(
            PROBE_AUTH, ""
        )
        # The request gives up before the kubelet does, so a hung server is a plain failure.
        (timeout,) = re.findall(r"timeout=([0-9.]+)", script)
        assert probe["timeoutSeconds"] == 5 and float(timeout) < probe["timeoutSeconds"]
        assert probe["periodSeconds"] == 10
    # About 30 minutes for the first weight download before the kubelet gives up.
    startup = c["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 1800
    assert c["readinessProbe"]["failureThreshold"] >= 1
    # Liveness stays on the open /health: a wrong or rotated key must not restart the engine.
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert c["startupProbe"]["exec"] == c["readinessProbe"]["exec"]


class _FakeVllm(http.server.BaseHTTPRequestHandler):
    """vLLM's API-key check: /v1/* answers 401 without `Authorization: Bearer <key>`."""

    key = "k-test-only"
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        type(self).seen.append((self.path, auth))
        ok = self.path == "/v1/models" and auth == f"Bearer {self.key}"
        body = b'{"object": "list", "data": []}' if ok else b'{"error": "Unauthorized"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_the_vllm_probe_passes_with_the_key_and_fails_without_it() -> None:
    """The probe's command, run for real against a server that checks the key like vLLM."""
    commands = {
        tuple(vllm_container(rendered(r))[kind]["exec"]["command"])
        for r in RENDERINGS
        for kind in ("startupProbe", "readinessProbe")
    }
    assert len(commands) == 1, "every rendering runs the same probe"
    ((_, flag, script),) = commands
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert script.count("127.0.0.1:8000") == 1
        local = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")

        def probe(env: dict[str, str]) -> int:
            return subprocess.run(
                [sys.executable, flag, local], env=env, capture_output=True, timeout=30
            ).returncode

        _FakeVllm.seen.clear()
        assert probe({"VLLM_API_KEY": _FakeVllm.key}) == 0
        assert _FakeVllm.seen == [("/v1/models", f"Bearer {_FakeVllm.key}")]
        assert probe({"VLLM_API_KEY": "a-wrong-key"}) != 0  # 401
        assert probe({}) != 0  # no key in the environment
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listening: the probe fails rather than hangs.
    assert probe({"VLLM_API_KEY": _FakeVllm.key}) != 0


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_rayjobs_always_carry_their_lifecycle(rendering: str) -> None:
    jobs = by_kind(rendered(rendering), "RayJob")
    assert set(jobs) == {"crops-train", "crops-index"}
    assert [p for job in jobs.values() for p in rayjob_problems(job)] == []
    assert "--samples" in jobs["crops-train"]["spec"]["entrypoint"]
    assert "--model" in jobs["crops-index"]["spec"]["entrypoint"]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_one_inference_service_serves_the_promoted_model_and_the_candidate(
    rendering: str,
) -> None:
    from crops.k8s.inference_service import (
        AUTOSCALING_FIELDS,
        InferenceServiceSpec,
        canary_predictor,
    )

    isvcs = by_kind(rendered(rendering), "InferenceService")
    assert set(isvcs) == {"crops-retrieval"}  # the candidate is no second InferenceService
    isvc = isvcs["crops-retrieval"]
    pred = isvc["spec"]["predictor"]
    common = {"--host": "0.0.0.0", "--port": "8080", "--name": "crops"}
    assert serve_options(pred) == {
        "--model": "/artifacts/model",
        "--index": "/artifacts/index",
        **common,
    }
    assert pred["containers"][0]["readinessProbe"]["httpGet"] == {
        "path": "/v1/models/crops",
        "port": 8080,
    }
    assert pred["serviceAccountName"] == "crops-serve"
    assert pred["minReplicas"] == pred["maxReplicas"] == 1
    mode = deployment_mode(isvc)
    assert mode == ("Serverless" if rendering == "helm:serverless" else "Standard")
    if mode == "Serverless":
        # Knative: the next revision is the canary; no spec.canary there.
        assert pred["canaryTrafficPercent"] == 10
        assert canaries(isvc) == []
        return
    # Standard (KServe 0.20+): the candidate is the one spec.canary entry.
    assert "canaryTrafficPercent" not in pred
    (canary,) = canaries(isvc)
    assert canary["trafficPercent"] == 10
    cpred = canary["predictor"]
    # What the Python client writes when it rolls a canary out (crops.k8s.inference_service):
    # the same name, and no autoscaling fields, which KServe refuses in a canary.
    client_view = canary_predictor(
        InferenceServiceSpec(
            name="crops-retrieval",
            namespace="crops",
            image="crops:0.1.0",
            model_path="/artifacts/candidate/model",
            index_path="/artifacts/candidate/index",
        )
    )
    assert cpred["name"] == client_view["name"] == "candidate"
    assert [f for f in AUTOSCALING_FIELDS if f in cpred or f in client_view] == []
    assert serve_options(cpred) == {
        "--model": "/artifacts/candidate/model",
        "--index": "/artifacts/candidate/index",
        **common,
    }
    assert cpred["containers"][0]["args"] == client_view["containers"][0]["args"]
    # Served like the promoted model: same account, pod labels (the allow-predictor
    # NetworkPolicy selects them), security, probes and volumes.
    for field in ("serviceAccountName", "automountServiceAccountToken", "labels"):
        assert cpred[field] == pred[field], field
    for field in ("securityContext", "volumes"):
        assert cpred[field] == pred[field], field
    assert pred["containers"][0]["command"] == ["crops"]
    for field in ("command", "image", "imagePullPolicy", "readinessProbe", "livenessProbe"):
        assert cpred["containers"][0][field] == pred["containers"][0][field], field
    assert cpred["containers"][0]["resources"] == pred["containers"][0]["resources"]
    assert cpred["labels"]["app.kubernetes.io/component"] == "predictor"


#: The renderings whose CronJob runs simulated users (`abtest.source: simulated`): the kind and
#: minikube profiles; every other one decides from the logs (`crops abtest analyze`).
SIMULATED_ABTEST = ("kustomize:kind", "kustomize:minikube")


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_abtest_cronjob_compares_the_predictors_and_applies_its_decision(
    rendering: str,
) -> None:
    from crops.k8s.inference_service import InferenceServiceSpec

    objs = rendered(rendering)
    cron = by_kind(objs, "CronJob")["crops-abtest"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = abtest_pod(objs)
    assert pod["serviceAccountName"] == "crops-abtest"
    assert pod["automountServiceAccountToken"] is True  # --apply calls the API
    (c,) = pod["containers"]
    script = c["args"][0]
    # $$ is Kubernetes' escape: the shell, not the kubelet, runs `date`.
    assert '--out "/artifacts/abtest/runs/$$(date -u' in script
    command, opts = abtest_command(script)
    env = {e["name"]: e for e in c["env"]}
    # From logs, the sequential test's state is in the ledger on the artifacts volume; a
    # simulated run is a whole test with its own ledger in its report folder.
    if rendering in SIMULATED_ABTEST:
        assert "--ledger" not in opts
    else:
        assert opts["--ledger"] == "/artifacts/abtest/ledger" and "--break-stale-lock" in opts
    # The decision is applied to the one InferenceService, in the pod's own namespace, with
    # the canary mechanism that InferenceService uses.
    isvc = by_kind(objs, "InferenceService")["crops-retrieval"]
    assert opts["--apply"] == ""
    assert opts["--isvc"] == isvc["metadata"]["name"]
    assert opts["--namespace"] == "$POD_NAMESPACE"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert opts["--canary-mode"] == deployment_mode(isvc)
    if rendering not in SIMULATED_ABTEST:
        # From the platform's logs: no endpoint is called, so no endpoint URLs.
        assert command == ["crops", "abtest", "analyze"]
        assert opts["--logs"] == "/artifacts/logs" and opts["--looks"] == "5"
        assert not {"CONTROL_URL", "TREATMENT_URL"} & set(env)
        return
    assert command == ["crops", "abtest"]
    urls = {arm: env[f"{arm.upper()}_URL"]["value"] for arm in ("control", "treatment")}
    assert opts["--control"] == "$CONTROL_URL" and opts["--treatment"] == "$TREATMENT_URL"
    if deployment_mode(isvc) == "Serverless":
        # Knative tags: the previous revision and the latest (the canary).
        assert urls == {
            "control": "http://prev-crops-retrieval-predictor.crops.svc.cluster.local",
            "treatment": "http://latest-crops-retrieval-predictor.crops.svc.cluster.local",
        }
        return
    # Standard: the promoted predictor's Service and the canary's own Service, where the
    # Python client says they are.
    (canary,) = canaries(isvc)
    spec = InferenceServiceSpec(
        name=isvc["metadata"]["name"],
        namespace="crops",
        image="crops:0.1.0",
        model_path="/m",
        index_path="/i",
        canary_name=canary["predictor"]["name"],
    )
    assert urls == {"control": spec.url, "treatment": spec.canary_url}
    assert urls["treatment"] == "http://crops-retrieval-candidate-predictor.crops.svc.cluster.local"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_options_the_cronjob_passes_exist_in_crops_abtest(rendering: str, run) -> None:
    """The CronJob's command line is only text to Kubernetes: check it against the real CLI
    (`crops abtest analyze` from logs, `crops abtest` with simulated users)."""
    script = abtest_pod(rendered(rendering))["containers"][0]["args"][0]
    command, opts = abtest_command(script)
    code, out, _ = run(*command[1:], "--help")
    assert code == 0, out
    for option in sorted(opts):
        assert option in out, f"{' '.join(command)} has no {option}"


def test_gpu_only_where_asked() -> None:
    for rendering in ("kustomize:gpu", "helm:gpu"):
        objs = rendered(rendering)
        asking = sorted(n for o in objs for n in gpu_limits(o))
        assert asking == [
            "crops-index workers workers ray-worker",
            "crops-train workers workers ray-worker",
            "crops-vllm template vllm",
        ], rendering
        for o in objs:
            for where, pod in pod_specs(o):
                if where.startswith("workers") or o["metadata"]["name"] == "crops-vllm":
                    assert gpu_tolerated(pod), f"{rendering} {o['metadata']['name']} {where}"
        for job in by_kind(objs, "RayJob").values():
            assert job["spec"]["entrypoint"].endswith(" --gpu")
            image = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"
            ][0]["image"]
            assert image == "crops:0.1.0-cuda"
    for rendering in ("kustomize:kind", "kustomize:minikube", "helm:default", "helm:ci"):
        objs = rendered(rendering)
        assert [n for o in objs for n in gpu_limits(o)] == [], rendering
        assert not any(pod.get("tolerations") for o in objs for _, pod in pod_specs(o))
        assert not any("--gpu" in j["spec"]["entrypoint"] for j in by_kind(objs, "RayJob").values())


def test_kind_and_minikube_are_small_and_use_the_local_image() -> None:
    base_worker = _worker_cpu(rendered("kustomize:gpu"))
    for rendering in ("kustomize:kind", "kustomize:minikube"):
        objs = rendered(rendering)
        assert _worker_cpu(objs) < base_worker
        assert by_kind(objs, "Deployment")["crops-vllm"]["spec"]["replicas"] == 0
        for pvc in by_kind(objs, "PersistentVolumeClaim").values():
            assert pvc["spec"]["storageClassName"] == "standard"
        policies = {
            c["imagePullPolicy"]
            for o in objs
            for _, pod in pod_specs(o)
            for c in pod["containers"]
            if c["image"].startswith("crops:")
        }
        assert policies == ({"Never"} if rendering == "kustomize:kind" else {"IfNotPresent"})


def _worker_cpu(objs: list[dict]) -> float:
    job = by_kind(objs, "RayJob")["crops-train"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    return quantity(worker["containers"][0]["resources"]["limits"]["cpu"])


def test_the_checks_catch_what_they_promise_to() -> None:
    """Each check fails on a doctored object, so a green run means something."""
    objs = rendered("helm:default")
    job = by_kind(objs, "RayJob")["crops-train"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    del head["containers"][0]["resources"]["limits"]
    head["containers"][0]["image"] = "registry.example:5000/crops:0.1.0"
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"
    del job["spec"]["ttlSecondsAfterFinished"]
    problems = " | ".join(pod_problems(job) + rayjob_problems(job))
    for expected in (
        "root filesystem is writable",
        "no cpu limits",
        "names a registry host",
        "rayVersion",
        "ttlSecondsAfterFinished not set",
    ):
        assert expected in problems
    vllm = by_kind(objs, "Deployment")["crops-vllm"]
    vllm["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_API_KEY", "value": "sk-123"}
    )
    assert secret_problems([vllm]) == ["crops-vllm template: OPENAI_API_KEY inline"]
    # The canary's pod is checked like every other (pod_specs reaches into spec.canary).
    isvc = by_kind(objs, "InferenceService")["crops-retrieval"]
    canary = canaries(isvc)[0]["predictor"]["containers"][0]
    canary["securityContext"]["readOnlyRootFilesystem"] = False
    assert pod_problems(isvc) == [
        "InferenceService/crops-retrieval canary candidate container kserve-container: "
        "root filesystem is writable"
    ]
    assert registry_host("vllm/vllm-openai:v0.11.0") is None
    assert registry_host("localhost/crops:0.1.0") == "localhost"
    assert quantity("500m") == 0.5 and quantity("2Gi") == 2 * 2**30


def test_chart_refuses_values_that_would_drop_the_lifecycle_or_mistype_the_mode() -> None:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        # values.schema.json refuses it first; the templates' `required` is the second guard.
        with pytest.raises(helm.HelmError, match="backoffLimit"):
            chart.render({"ray": {"index": {"backoffLimit": None}}}, name="crops", namespace="c")
        with pytest.raises(helm.HelmError, match="Standard"):
            chart.render({"serving": {"mode": "Knative"}}, name="crops", namespace="c")
        with pytest.raises(helm.HelmError, match="resources"):
            chart.render({"serving": {"resources": None}}, name="crops", namespace="c")
        for values in ({}, yaml.safe_load((CHART / "ci-values.yaml").read_text())):
            report = helm.lint(CHART, values, strict=True)
            assert report["errors"] == [] and not [
                m for m in report["messages"] if m["severity"] >= 2
            ], report


def test_no_container_registry_host_in_deploy_files() -> None:
    """Images are named without a registry host everywhere (Dockerfiles, manifests, chart,
    script, docs): the cluster's own configuration decides where they come from."""
    hosts = re.compile(
        r"\b(docker\.io|ghcr\.io|quay\.io|gcr\.io|registry\.k8s\.io|k8s\.gcr\.io|nvcr\.io"
        r"|public\.ecr\.aws|[a-z0-9-]+\.pkg\.dev|[a-z0-9.-]+\.azurecr\.io)\b"
    )
    files = [
        *(REPO / "manifests").rglob("*.yaml"),
        *CHART.rglob("*"),
        *(REPO / "docker").glob("*"),
        REPO / ".dockerignore",
        REPO / "scripts" / "kind-up.sh",
        REPO / "docs" / "kind.md",
    ]
    assert len(files) > 20
    found = [
        f"{f.relative_to(REPO)}: {m[0]}"
        for f in files
        if f.is_file()
        for m in [hosts.search(f.read_text())]
        if m
    ]
    assert found == []
    froms = [image for f in (REPO / "docker").glob("Dockerfile*") for image in base_images(f)]
    assert len(froms) == 2
    assert all(registry_host(image) is None and ":" in image for image in froms), froms


def base_images(dockerfile: Path) -> list[str]:
    """The images a Dockerfile builds FROM, with ARG defaults filled in."""
    args, images = {}, []
    for line in dockerfile.read_text().splitlines():
        if m := re.match(r"ARG (\w+)=(\S+)", line):
            args[m[1]] = m[2]
        elif line.startswith("FROM "):
            images.append(re.sub(r"\$\{(\w+)\}", lambda a: args[a[1]], line.split()[1]))
    return images
