"""The KServe InferenceService of the retrieval endpoint: deploy, canary, promote, roll back.

KServe has two ways to run a canary, and a platform team picks one per cluster:

- **Standard** (raw Deployments, no Knative; KServe 0.20+): the new predictor goes in
  `spec.canary`, a list of `{trafficPercent, predictor}` whose predictor is named (KServe runs it
  as Deployment and Service `{isvc}-{name}-predictor`) and carries no autoscaling fields;
  promoting moves it into `spec.predictor` and clears the list, rolling back clears the list.
- **Serverless** (Knative revisions): the new predictor replaces `spec.predictor` with
  `canaryTrafficPercent`; KServe keeps the last rolled-out revision for the rest of the traffic.
  Promoting removes the percent (the new revision takes all), rolling back sets it to 0.

`mode="auto"` reads which one an existing object uses (a `spec.canary` list, or the
deployment-mode annotation). Promote and roll back read, change and replace the object with its
`resourceVersion`, so a concurrent writer makes the call fail (409) rather than be overwritten.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.k8s.client import KubeError, api_client, api_errors, conditions, watch_until

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
Mode = Literal["Standard", "Serverless"]
# Values of the annotation that mean each mode (KServe renamed RawDeployment to Standard).
ANNOTATION_MODES: dict[str, Mode] = {
    "Standard": "Standard",
    "RawDeployment": "Standard",
    "Serverless": "Serverless",
    "Knative": "Serverless",
}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class InferenceServiceSpec(BaseModel):
    """The retrieval endpoint: the crops image serving one model folder and its index."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field("default", pattern=DNS_LABEL)
    image: str = Field(min_length=1)
    model_path: str = Field(min_length=1)
    index_path: str = Field(min_length=1)
    mode: Mode = "Standard"
    model_name: str = "crops"
    port: int = Field(8080, ge=1, le=65535)
    service_account: str = "crops-serve"
    pvc: str | None = "crops-artifacts"
    mount_path: str = "/artifacts"
    cpu: str = "1"
    memory: str = "2Gi"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    canary_name: str = Field("candidate", pattern=DNS_LABEL, description="Standard mode")

    @property
    def url(self) -> str:
        """In-cluster base URL of the stable predictor (the A/B job's control arm)."""
        return f"http://{self.name}-predictor.{self.namespace}.svc.cluster.local"

    @property
    def canary_url(self) -> str:
        """In-cluster base URL of the Standard-mode canary (the A/B job's treatment arm)."""
        return f"http://{self.name}-{self.canary_name}-predictor.{self.namespace}.svc.cluster.local"


def predictor(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The predictor component: a custom container running `crops serve` on the spec's folders."""
    resources = {"cpu": spec.cpu, "memory": spec.memory}
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": spec.image,
        "command": ["crops"],
        "args": [
            "serve",
            "--model",
            spec.model_path,
            "--index",
            spec.index_path,
            "--host",
            "0.0.0.0",
            "--port",
            str(spec.port),
            "--name",
            spec.model_name,
        ],
        "ports": [{"containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        # Ready only once the model and its index are loaded and belong together.
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{spec.model_name}", "port": spec.port},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": spec.port},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
        "resources": {"requests": dict(resources), "limits": resources},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.pvc:
        container["volumeMounts"].append(
            {"name": "artifacts", "mountPath": spec.mount_path, "readOnly": True}
        )
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": spec.pvc}})
    return {
        "serviceAccountName": spec.service_account,
        "automountServiceAccountToken": False,  # the predictor never calls the API
        # The NetworkPolicies admit traffic to pods with these labels only.
        "labels": {
            "app.kubernetes.io/part-of": "crops",
            "app.kubernetes.io/component": "predictor",
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "containers": [container],
        "volumes": volumes,
    }


# Fields KServe refuses in a Standard-mode canary predictor (its replicas follow the traffic).
AUTOSCALING_FIELDS = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling")


def canary_predictor(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The predictor as a Standard-mode canary: named, without autoscaling fields."""
    body = {k: v for k, v in predictor(spec).items() if k not in AUTOSCALING_FIELDS}
    return {"name": spec.canary_name, **body}


def manifest(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The InferenceService object for `spec`, serving its predictor to all traffic."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "crops"},
            "annotations": {MODE_ANNOTATION: spec.mode},
        },
        "spec": {"predictor": predictor(spec)},
    }


def mode_of(obj: dict[str, Any]) -> Mode:
    """Which canary mechanism an existing InferenceService uses."""
    if (obj.get("spec") or {}).get("canary"):
        return "Standard"
    annotation = ((obj.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION)
    if annotation in ANNOTATION_MODES:
        return ANNOTATION_MODES[annotation]
    if "canaryTrafficPercent" in ((obj.get("spec") or {}).get("predictor") or {}):
        return "Serverless"
    return "Standard"


def canary_percent(obj: dict[str, Any]) -> int | None:
    """The traffic share the canary gets now (None when there is no canary)."""
    spec = obj.get("spec") or {}
    if spec.get("canary"):
        return int(spec["canary"][0]["trafficPercent"])
    percent = (spec.get("predictor") or {}).get("canaryTrafficPercent")
    return None if percent is None else int(percent)


def _check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


class InferenceServiceClient:
    """Deploys and steers the retrieval InferenceService; `mode` "auto" reads it off the object."""

    def __init__(
        self, client: ApiClient | None = None, mode: Mode | Literal["auto"] = "auto"
    ) -> None:
        from kubernetes.client import CustomObjectsApi

        if mode not in ("auto", "Standard", "Serverless"):
            raise ValueError(f"mode must be auto, Standard or Serverless, got {mode!r}")
        self.api = CustomObjectsApi(client if client is not None else api_client())
        self.mode = mode

    # ------------------------------------------------------------------ plain API calls
    def get(self, name: str, namespace: str) -> dict[str, Any]:
        with api_errors(f"reading InferenceService {namespace}/{name}"):
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def exists(self, name: str, namespace: str) -> bool:
        try:
            self.get(name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, spec: InferenceServiceSpec) -> dict[str, Any]:
        with api_errors(f"creating InferenceService {spec.namespace}/{spec.name}"):
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, manifest(spec)
            )

    def _patch(self, name: str, namespace: str, body: Any, what: str) -> dict[str, Any]:
        with api_errors(f"{what} on InferenceService {namespace}/{name}"):
            return self.api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body
            )

    def _replace(self, obj: dict[str, Any], what: str) -> dict[str, Any]:
        meta = obj["metadata"]
        with api_errors(f"{what} on InferenceService {meta['namespace']}/{meta['name']}"):
            return self.api.replace_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], obj
            )

    def _mode(self, obj: dict[str, Any]) -> Mode:
        return mode_of(obj) if self.mode == "auto" else self.mode

    # ------------------------------------------------------------------ the rollout
    def deploy(self, spec: InferenceServiceSpec, canary_percent: int | None) -> dict[str, Any]:
        """Create the service if it is missing (all traffic to `spec`); otherwise roll `spec` out
        as a canary taking `canary_percent` of the traffic, or to all traffic when None."""
        if not self.exists(spec.name, spec.namespace):
            return self.create(spec)
        new = predictor(spec)
        if canary_percent is None:
            body = {"spec": {"predictor": new, "canary": None}}
            return self._patch(spec.name, spec.namespace, body, "rolling out a new predictor")
        percent = _check_percent(canary_percent)
        mode = spec.mode if self.mode == "auto" else self.mode
        if mode == "Standard":
            canary = {"predictor": canary_predictor(spec), "trafficPercent": percent}
            body = {"spec": {"canary": [canary]}}
        else:
            body = {"spec": {"predictor": {**new, "canaryTrafficPercent": percent}}}
        return self._patch(spec.name, spec.namespace, body, f"deploying a {percent} % canary")

    def set_canary_traffic(self, name: str, namespace: str, percent: int) -> dict[str, Any]:
        """Give the running canary `percent` of the traffic (0..100)."""
        percent = _check_percent(percent)
        obj = self.get(name, namespace)
        if self._mode(obj) == "Serverless":
            body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
            return self._patch(name, namespace, body, f"setting canaryTrafficPercent={percent}")
        obj = copy.deepcopy(obj)
        if not (obj.get("spec") or {}).get("canary"):
            raise KubeError(f"InferenceService {namespace}/{name} has no canary (spec.canary)")
        obj["spec"]["canary"][0]["trafficPercent"] = percent
        return self._replace(obj, f"setting the canary's trafficPercent={percent}")

    def promote(self, name: str, namespace: str) -> dict[str, Any]:
        """Make the canary the only predictor (all traffic)."""
        obj = copy.deepcopy(self.get(name, namespace))
        spec = obj.setdefault("spec", {})
        if self._mode(obj) == "Serverless":
            if "canaryTrafficPercent" not in spec.get("predictor", {}):
                raise KubeError(f"InferenceService {namespace}/{name} has no canary to promote")
            spec["predictor"].pop("canaryTrafficPercent")
            return self._replace(obj, "promoting the canary")
        if not spec.get("canary"):
            raise KubeError(f"InferenceService {namespace}/{name} has no canary to promote")
        # KServe retargets the stable predictor to the canary's Deployment (no restart); the
        # stable predictor keeps its autoscaling settings.
        kept = {k: v for k, v in spec["predictor"].items() if k in AUTOSCALING_FIELDS}
        spec["predictor"] = {**spec.pop("canary")[0]["predictor"], **kept}
        return self._replace(obj, "promoting the canary")

    def rollback(self, name: str, namespace: str) -> dict[str, Any]:
        """Send all traffic back to the previous predictor and drop the canary."""
        obj = copy.deepcopy(self.get(name, namespace))
        spec = obj.setdefault("spec", {})
        if self._mode(obj) == "Serverless":
            if "canaryTrafficPercent" not in spec.get("predictor", {}):
                raise KubeError(f"InferenceService {namespace}/{name} has no canary to roll back")
            spec["predictor"]["canaryTrafficPercent"] = 0
            return self._replace(obj, "rolling the canary back")
        if not spec.get("canary"):
            raise KubeError(f"InferenceService {namespace}/{name} has no canary to roll back")
        spec.pop("canary")
        return self._replace(obj, "rolling the canary back")

    def wait_ready(self, name: str, namespace: str, timeout_s: float) -> dict[str, Any]:
        """Wait for condition Ready=True; a False with a reason is reported in the timeout."""

        def state(obj: dict[str, Any]) -> str:
            ready = conditions(obj).get("Ready")
            if ready is None:
                return "no Ready condition yet"
            return (
                f"Ready={ready.get('status')} reason={ready.get('reason', '')} "
                f"message={ready.get('message', '')}"
            )

        return watch_until(
            f"InferenceService {namespace}/{name} Ready",
            lambda: self.get(name, namespace),
            self.api.list_namespaced_custom_object,
            (GROUP, VERSION, namespace, PLURAL),
            name,
            lambda o: conditions(o).get("Ready", {}).get("status") == "True",
            timeout_s,
            describe=state,
        )


def deploy(
    spec: InferenceServiceSpec,
    canary_percent: int | None,
    client: ApiClient | None = None,
    wait_s: float | None = None,
) -> dict[str, Any]:
    """Create or roll out `spec` (see `InferenceServiceClient.deploy`); wait for Ready if asked."""
    isvc = InferenceServiceClient(client, mode=spec.mode)
    obj = isvc.deploy(spec, canary_percent)
    if wait_s:
        obj = isvc.wait_ready(spec.name, spec.namespace, wait_s)
    return obj


def set_canary_traffic(
    name: str, namespace: str, percent: int, client: ApiClient | None = None
) -> dict[str, Any]:
    """Give the canary of InferenceService `name` `percent` of the traffic (mode read off it)."""
    return InferenceServiceClient(client).set_canary_traffic(name, namespace, percent)


__all__ = [
    "GROUP",
    "PLURAL",
    "VERSION",
    "InferenceServiceClient",
    "InferenceServiceSpec",
    "KubeError",
    "canary_percent",
    "canary_predictor",
    "deploy",
    "manifest",
    "mode_of",
    "predictor",
    "set_canary_traffic",
]
