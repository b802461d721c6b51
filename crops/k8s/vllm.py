"""The vLLM server the data engine's synthesis step calls: a Deployment and a Service.

vLLM's OpenAI-compatible server takes minutes to load weights, so the startup probe allows for
that before liveness applies, and readiness is `GET /v1/models` (answered only once the model
is loaded). With an API key vLLM answers 401 there without it, and an httpGet probe cannot read
a Secret, so the probes are a tiny exec that sends the key from the container's environment.
Weights are cached on a PVC so a restart does not download them again. The API key comes from a
Secret by reference; no value is ever written into a manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from crops.k8s.client import KubeError, api_client, api_errors, watch_until

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class VllmSpec(BaseModel):
    """One vLLM server for one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("crops-vllm", pattern=DNS_LABEL)
    namespace: str = Field("default", pattern=DNS_LABEL)
    model: str = Field(min_length=1, description="Hugging Face id or a path on the cache PVC")
    image: str = VLLM_IMAGE
    port: int = Field(8000, ge=1, le=65535)
    gpus: int = Field(1, ge=0)
    cpu: str = "4"
    memory: str = "24Gi"
    max_model_len: int | None = Field(None, ge=16)
    cache_pvc: str | None = "crops-model-cache"
    api_key_secret: str = "crops-llm"
    api_key_key: str = "api-key"
    service_account: str = "crops-vllm"
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    startup_timeout_s: int = Field(1800, ge=60, description="weights download and load")

    @property
    def url(self) -> str:
        """The in-cluster base URL the data engine's `--llm-endpoint` takes."""
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:{self.port}"


def models_probe(port: int) -> list[str]:
    """`GET /v1/models` with the API key from the environment; fails unless HTTP 200."""
    code = (
        "import os, urllib.request as u; u.urlopen(u.Request("
        f"'http://127.0.0.1:{port}/v1/models', "
        "headers={'Authorization': 'Bearer ' + os.environ['VLLM_API_KEY']}), timeout=4)"
    )
    return ["python3", "-c", code]


def _labels(spec: VllmSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "crops"}


def deployment(spec: VllmSpec) -> dict[str, Any]:
    """The vLLM Deployment (apps/v1)."""
    # The image's entrypoint is `vllm serve`, which takes the model as its argument and reads
    # VLLM_API_KEY from the environment (the key never appears on the command line).
    args = [spec.model, "--port", str(spec.port), "--served-model-name", spec.model]
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    resources: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        resources["nvidia.com/gpu"] = spec.gpus
    probe = {"exec": {"command": models_probe(spec.port)}, "periodSeconds": 10, "timeoutSeconds": 5}
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.cache_pvc:
        mounts.append({"name": "cache", "mountPath": "/cache"})
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": spec.cache_pvc}})
    container = {
        "name": "vllm",
        "image": spec.image,
        "args": args,
        "env": [
            {"name": "HF_HOME", "value": "/cache/hf"},
            {
                "name": "VLLM_API_KEY",
                "valueFrom": {
                    "secretKeyRef": {"name": spec.api_key_secret, "key": spec.api_key_key}
                },
            },
        ],
        "ports": [{"containerPort": spec.port, "name": "http", "protocol": "TCP"}],
        "startupProbe": {**probe, "failureThreshold": max(spec.startup_timeout_s // 10, 1)},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/health", "port": spec.port}, "periodSeconds": 30},
        "resources": {"requests": dict(resources), "limits": resources},
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.gpus:
        pod["nodeSelector"] = dict(spec.node_selector)
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "template": {"metadata": {"labels": _labels(spec)}, "spec": pod},
        },
    }


def service(spec: VllmSpec) -> dict[str, Any]:
    """The ClusterIP Service in front of the Deployment (v1)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": _labels(spec)},
        "spec": {
            "selector": {"app.kubernetes.io/name": spec.name},
            "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port}],
        },
    }


class VllmClient:
    """Apply the vLLM Deployment and Service and wait until the model answers."""

    def __init__(self, client: ApiClient | None = None) -> None:
        from kubernetes.client import AppsV1Api, CoreV1Api

        client = client if client is not None else api_client()
        self.apps, self.core = AppsV1Api(client), CoreV1Api(client)

    def apply(self, spec: VllmSpec) -> dict[str, Any]:
        """Create both objects, or replace the Deployment's spec when it exists."""
        ns, name = spec.namespace, spec.name
        try:
            with api_errors(f"creating Deployment {ns}/{name}"):
                self.apps.create_namespaced_deployment(ns, deployment(spec))
        except KubeError as exc:
            if exc.status != 409:
                raise
            with api_errors(f"updating Deployment {ns}/{name}"):
                self.apps.patch_namespaced_deployment(name, ns, {"spec": deployment(spec)["spec"]})
        try:
            with api_errors(f"creating Service {ns}/{name}"):
                self.core.create_namespaced_service(ns, service(spec))
        except KubeError as exc:
            if exc.status != 409:
                raise
        return {"url": spec.url, "deployment": name, "namespace": ns}

    def wait_ready(self, spec: VllmSpec, timeout_s: float) -> str:
        """Wait until the Deployment's replicas are ready (readiness is `/v1/models`); its URL."""

        def read() -> Any:
            with api_errors(f"reading Deployment {spec.namespace}/{spec.name}"):
                return self.apps.read_namespaced_deployment_status(spec.name, spec.namespace)

        def ready(dep: Any) -> bool:
            want = dep.spec.replicas or 0
            return want > 0 and (dep.status.ready_replicas or 0) >= want

        watch_until(
            f"vLLM Deployment {spec.namespace}/{spec.name}",
            read,
            self.apps.list_namespaced_deployment,
            (spec.namespace,),
            spec.name,
            ready,
            timeout_s,
            describe=lambda d: f"{d.status.ready_replicas or 0}/{d.spec.replicas} replicas ready",
        )
        return spec.url


__all__ = ["VLLM_IMAGE", "VllmClient", "VllmSpec", "deployment", "models_probe", "service"]
