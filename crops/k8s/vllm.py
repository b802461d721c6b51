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
from crops.k8s.platform import Platform

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class VllmSpec(BaseModel):
    """One vLLM server for one model. Image, pod security, labels, account, resources, GPU
    placement, cache volume and port come from the platform description (`crops.k8s.platform`),
    the values the chart's own vLLM Deployment is rendered from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("crops-vllm", pattern=DNS_LABEL)
    namespace: str = Field("crops", pattern=DNS_LABEL)
    model: str = Field(min_length=1, description="Hugging Face id or a path on the cache PVC")
    image: str | None = Field(None, min_length=1, description="None: the chart's llm.image")
    gpus: int | None = Field(None, ge=0, description="None: llm GPUs when gpu.enabled, else 0")
    max_model_len: int | None = Field(None, ge=16)
    startup_timeout_s: int = Field(1800, ge=60, description="weights download and load")

    def url(self, platform: Platform | None = None) -> str:
        """The in-cluster base URL the data engine's `--llm-endpoint` takes."""
        port = (platform or Platform.default(self.namespace)).values.ports.llm
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:{port}"


def models_probe(port: int) -> list[str]:
    """`GET /v1/models` with the API key from the environment; fails unless HTTP 200."""
    code = (
        "import os, urllib.request as u; u.urlopen(u.Request("
        f"'http://127.0.0.1:{port}/v1/models', "
        "headers={'Authorization': 'Bearer ' + os.environ['VLLM_API_KEY']}), timeout=4)"
    )
    return ["python3", "-c", code]


def _selector(spec: VllmSpec, p: Platform) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/instance": p.release}


def _gpus(spec: VllmSpec, p: Platform) -> int:
    if spec.gpus is not None:
        return spec.gpus
    return p.values.gpu.llmGpus if p.values.gpu.enabled else 0


def deployment(spec: VllmSpec, platform: Platform | None = None) -> dict[str, Any]:
    """The vLLM Deployment (apps/v1), laid out as the chart's `crops-vllm`."""
    p = platform or Platform.default(spec.namespace)
    llm, port, gpus = p.values.llm, p.values.ports.llm, _gpus(spec, p)
    # The image's entrypoint is `vllm serve`, which takes the model as its argument and reads
    # VLLM_API_KEY from the environment (the key never appears on the command line).
    args = ["$(MODEL)", "--served-model-name", "$(MODEL)", "--port", str(port), *llm.extraArgs]
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    probe = {"exec": {"command": models_probe(port)}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = {
        "name": "vllm",
        "image": spec.image or llm.image.ref,
        "imagePullPolicy": llm.image.pullPolicy,
        "args": args,
        "env": [
            {"name": "MODEL", "value": spec.model},
            {
                "name": "VLLM_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": llm.secretName, "key": llm.secretKey}},
            },
            # The root filesystem is read-only: weights and vLLM's compile cache on the cache
            # volume, everything else under /tmp.
            {"name": "HF_HOME", "value": "/cache/hf"},
            {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
            {"name": "XDG_CACHE_HOME", "value": "/cache/xdg"},  # Triton's, FlashInfer's JIT
            {"name": "HOME", "value": "/tmp"},
        ],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {**probe, "failureThreshold": max(spec.startup_timeout_s // 10, 1)},
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
        "resources": p.resources(llm.resources, gpus),
        "securityContext": p.container_security_context(),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    pod: dict[str, Any] = {
        "serviceAccountName": p.service_account("llm"),
        "automountServiceAccountToken": False,
        "securityContext": p.pod_security_context(),
        **(p.gpu_scheduling() if gpus else {}),
        "containers": [container],
        "volumes": [
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": p.model_cache_pvc}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    labels = {**p.pod_labels("llm"), "app.kubernetes.io/name": spec.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(spec, p)},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def service(spec: VllmSpec, platform: Platform | None = None) -> dict[str, Any]:
    """The ClusterIP Service in front of the Deployment (v1)."""
    p = platform or Platform.default(spec.namespace)
    port = p.values.ports.llm
    labels = {**p.pod_labels("llm"), "app.kubernetes.io/name": spec.name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "selector": _selector(spec, p),
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


class VllmClient:
    """Apply the vLLM Deployment and Service, wait until the model answers, take them down."""

    def __init__(self, client: ApiClient | None = None, platform: Platform | None = None) -> None:
        from kubernetes.client import AppsV1Api, CoreV1Api

        client = client if client is not None else api_client()
        self.apps, self.core = AppsV1Api(client), CoreV1Api(client)
        self.platform = platform

    def _platform(self, spec: VllmSpec) -> Platform:
        return self.platform or Platform.default(spec.namespace)

    def apply(self, spec: VllmSpec) -> dict[str, Any]:
        """Create both objects, or replace the Deployment's spec when it exists."""
        ns, name, p = spec.namespace, spec.name, self._platform(spec)
        body = deployment(spec, p)
        try:
            with api_errors(f"creating Deployment {ns}/{name}"):
                self.apps.create_namespaced_deployment(ns, body)
        except KubeError as exc:
            if exc.status != 409:
                raise
            with api_errors(f"updating Deployment {ns}/{name}"):
                self.apps.patch_namespaced_deployment(name, ns, {"spec": body["spec"]})
        try:
            with api_errors(f"creating Service {ns}/{name}"):
                self.core.create_namespaced_service(ns, service(spec, p))
        except KubeError as exc:
            if exc.status != 409:
                raise
        return {"url": spec.url(p), "deployment": name, "namespace": ns}

    def wait_ready(self, spec: VllmSpec, timeout_s: float) -> str:
        """Wait until the Deployment's replicas are ready (readiness is `/v1/models`); its URL.
        A timeout names the Deployment and its own conditions (why it is not available)."""

        def read() -> Any:
            with api_errors(f"reading Deployment {spec.namespace}/{spec.name}"):
                return self.apps.read_namespaced_deployment_status(spec.name, spec.namespace)

        def ready(dep: Any) -> bool:
            want = dep.spec.replicas or 0
            return want > 0 and (dep.status.ready_replicas or 0) >= want

        def describe(dep: Any) -> str:
            state = f"{dep.status.ready_replicas or 0}/{dep.spec.replicas} replicas ready"
            for c in dep.status.conditions or []:
                state += f"; {c.type}={c.status} {c.reason or ''}: {c.message or ''}".rstrip(": ")
            return state

        watch_until(
            f"vLLM Deployment {spec.namespace}/{spec.name}",
            read,
            self.apps.list_namespaced_deployment,
            (spec.namespace,),
            spec.name,
            ready,
            timeout_s,
            describe=describe,
        )
        return spec.url(self._platform(spec))

    def delete(self, name: str, namespace: str) -> list[str]:
        """Take the server down (Deployment and Service), so it no longer holds its GPU; what
        was deleted (objects already gone are not an error)."""
        ns = namespace
        deleted = []
        for kind, call in (
            ("Deployment", self.apps.delete_namespaced_deployment),
            ("Service", self.core.delete_namespaced_service),
        ):
            try:
                with api_errors(f"deleting {kind} {ns}/{name}"):
                    call(name, ns)
                deleted.append(f"{kind} {ns}/{name}")
            except KubeError as exc:
                if exc.status != 404:
                    raise
        return deleted


__all__ = ["VllmClient", "VllmSpec", "deployment", "models_probe", "service"]
