"""The platform's description at run time: what the Helm chart says every pod looks like.

The chart (`charts/crops`) is the one hand-written description of the platform: images, pod
security, the labels the NetworkPolicies select, the ServiceAccount of each role, GPU
placement, resources, volumes and ports. The objects crops builds at run time (RayJobs, the
InferenceService, the vLLM server, the KFP task pods) take those facts from here instead of
repeating them:

- on a cluster, from the ConfigMap `crops-platform` that the chart renders from its values
  (`Platform.from_cluster`), so a release installed with other values (another image, user id,
  GPU taint) gets run-time objects that match it; a missing ConfigMap is an error naming it;
- elsewhere (compiling, local runs, tests), from the chart's default values, packaged as
  `platform.json` beside this module (`Platform.default`); `scripts/render_manifests.py` writes
  it and the kustomize manifests from the chart, and a test fails when any of them drifts.

Only the facts are read here; the builders (`crops.k8s.rayjob`, `.inference_service`, `.vllm`)
lay them out, and `tests/k8s/test_platform.py` checks that their objects equal the chart's.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.k8s.client import KubeError, api_client, api_errors

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

CONFIGMAP = "crops-platform"
CONFIGMAP_KEY = "platform.json"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"
Role = Literal["pipeline", "abtest", "rayNode", "raySubmitter", "predictor", "llm", "logsink"]
#: The chart's logsink Deployment and Service (`crops.logsinkName`; object names are fixed).
LOGSINK = "crops-logsink"


class _Values(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ImageValues(_Values):
    repository: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


class SecurityValues(_Values):
    runAsUser: int = Field(ge=1)
    runAsGroup: int = Field(ge=1)
    fsGroup: int = Field(ge=1)


class RoleValues(_Values):
    component: str = Field(min_length=1)
    serviceAccount: str = Field(min_length=1)


class VolumeValues(_Values):
    name: str = Field(min_length=1)


class StorageValues(_Values):
    mountPath: str = Field(pattern=r"^/")
    artifacts: VolumeValues
    modelCache: VolumeValues


class GpuValues(_Values):
    enabled: bool = False
    rayImageTag: str = Field(min_length=1)
    rayWorkerGpus: int = Field(1, ge=1)
    llmGpus: int = Field(1, ge=1)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class PodGroupValues(_Values):
    resources: dict[str, dict[str, Any]]
    shmSize: str | None = None
    replicas: int | None = Field(None, ge=1)


class RayJobValues(_Values):
    ttlSecondsAfterFinished: int = Field(ge=0)
    activeDeadlineSeconds: int = Field(ge=1)
    backoffLimit: int = Field(ge=0)


class RayValues(_Values):
    rayVersion: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    runtimeEnv: dict[str, Any] = Field(default_factory=dict)
    head: PodGroupValues
    workers: PodGroupValues
    submitter: PodGroupValues
    train: RayJobValues
    index: RayJobValues


class LlmValues(_Values):
    image: ImageValues
    model: str
    secretName: str = Field(min_length=1)
    secretKey: str = Field(min_length=1)
    extraArgs: list[str] = Field(default_factory=list)
    resources: dict[str, dict[str, Any]]


class RequestLogValues(_Values):
    url: str = ""
    mode: Literal["all", "request", "response"] = "all"
    metadataHeaders: list[str] = Field(default_factory=list)


class LogsinkValues(_Values):
    # Absent (a release of the chart from before the logsink): none is deployed.
    enabled: bool = False


class ServingValues(_Values):
    mode: Literal["Standard", "Serverless"]
    name: str
    modelName: str
    canaryTrafficPercent: int = Field(ge=0, le=100)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    resources: dict[str, dict[str, Any]]
    requestLog: RequestLogValues = Field(default_factory=RequestLogValues)


class PortValues(_Values):
    predictor: int = Field(ge=1, le=65535)
    llm: int = Field(ge=1, le=65535)
    rayDashboard: int = Field(ge=1, le=65535)
    logsink: int = Field(8080, ge=1, le=65535)


class ChartValues(_Values):
    """The parts of the chart's values that run-time objects use (the rest is ignored)."""

    image: ImageValues
    securityContext: SecurityValues
    roles: dict[str, RoleValues]
    ports: PortValues
    storage: StorageValues
    gpu: GpuValues
    ray: RayValues
    llm: LlmValues
    serving: ServingValues
    logsink: LogsinkValues = Field(default_factory=LogsinkValues)


class Platform(BaseModel):
    """One release of the chart as run-time code sees it: its values, name and namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release: str = Field("crops", min_length=1)
    namespace: str = Field("crops", min_length=1)
    app_version: str = "0.1.0"
    values: ChartValues

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Platform:
        """From the ConfigMap's JSON: `{"release": {...}, "values": {...}}`."""
        release = doc.get("release") or {}
        return cls(
            release=release.get("name", "crops"),
            namespace=release.get("namespace", "crops"),
            app_version=str(release.get("appVersion", "0.1.0")),
            values=ChartValues.model_validate(doc.get("values") or {}),
        )

    @classmethod
    def default(cls, namespace: str | None = None) -> Platform:
        """The chart's default values (the packaged `platform.json`), in `namespace` if given."""
        platform = cls.from_document(_packaged())
        return platform.model_copy(update={"namespace": namespace}) if namespace else platform

    @classmethod
    def from_cluster(cls, namespace: str, client: ApiClient | None = None) -> Platform:
        """The installed release's description (ConfigMap `crops-platform` in `namespace`)."""
        from kubernetes.client import CoreV1Api

        api = CoreV1Api(client if client is not None else api_client())
        where = f"ConfigMap {namespace}/{CONFIGMAP}"
        try:
            with api_errors(f"reading {where}"):
                cm = api.read_namespaced_config_map(CONFIGMAP, namespace)
        except KubeError as exc:
            if exc.status == 404:
                raise KubeError(
                    f"{where} not found: the platform is not installed in namespace "
                    f"{namespace!r} (helm install crops charts/crops -n {namespace}, or "
                    "kubectl apply -k manifests/overlays/...)",
                    404,
                ) from exc
            raise
        raw = (cm.data or {}).get(CONFIGMAP_KEY)
        if not raw:
            raise KubeError(f"{where} has no {CONFIGMAP_KEY!r} key")
        try:
            return cls.from_document(json.loads(raw))
        except ValueError as exc:
            raise KubeError(
                f"{where}: {CONFIGMAP_KEY} is not a platform description: {exc}"
            ) from exc

    # ------------------------------------------------------------------ facts
    @property
    def image(self) -> str:
        """The platform image (every crops container but vLLM's)."""
        return self.values.image.ref

    def ray_image(self, gpu: bool) -> str:
        """The image of Ray pods: the CUDA build when the workers take GPUs."""
        if gpu:
            return f"{self.values.image.repository}:{self.values.gpu.rayImageTag}"
        return self.image

    @property
    def pull_policy(self) -> str:
        return self.values.image.pullPolicy

    def service_account(self, role: Role) -> str:
        return self._role(role).serviceAccount

    def pod_labels(self, role: Role) -> dict[str, str]:
        """The labels of a role's pods, as the chart's `crops.podLabels` writes them."""
        return {
            PART_OF: "crops",
            INSTANCE: self.release,
            COMPONENT: self._role(role).component,
        }

    def pod_security_context(self) -> dict[str, Any]:
        """Pod level: a fixed non-root user, fsGroup for writable volumes, RuntimeDefault."""
        sec = self.values.securityContext
        return {
            "runAsNonRoot": True,
            "runAsUser": sec.runAsUser,
            "runAsGroup": sec.runAsGroup,
            "fsGroup": sec.fsGroup,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    @staticmethod
    def container_security_context() -> dict[str, Any]:
        """Container level: read-only root, no privilege escalation, no capabilities."""
        return {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }

    def gpu_scheduling(self) -> dict[str, Any]:
        """nodeSelector and tolerations of a pod that takes GPUs."""
        out: dict[str, Any] = {}
        if self.values.gpu.nodeSelector:
            out["nodeSelector"] = dict(self.values.gpu.nodeSelector)
        if self.values.gpu.tolerations:
            out["tolerations"] = copy.deepcopy(self.values.gpu.tolerations)
        return out

    @staticmethod
    def resources(res: dict[str, dict[str, Any]], gpus: int = 0) -> dict[str, Any]:
        """Requests and limits (both required), with `gpus` NVIDIA GPUs added to each."""
        if not res.get("requests") or not res.get("limits"):
            raise ValueError("resources need both requests and limits")
        out = {"requests": dict(res["requests"]), "limits": dict(res["limits"])}
        if gpus:
            for part in out.values():
                part["nvidia.com/gpu"] = str(gpus)
        return out

    @property
    def logsink_url(self) -> str | None:
        """The in-cluster URL of the chart's logsink Service (the chart's `crops.logsinkUrl`),
        None when the release does not deploy it (`logsink.enabled`)."""
        if not self.values.logsink.enabled:
            return None
        return f"http://{LOGSINK}.{self.namespace}.svc.cluster.local:{self.values.ports.logsink}"

    @property
    def request_log_url(self) -> str:
        """Where predictors send KServe's payload logs (the chart's `crops.requestLogUrl`):
        `serving.requestLog.url`, else the logsink when deployed, else "" (no logging)."""
        return self.values.serving.requestLog.url or self.logsink_url or ""

    @property
    def artifacts_pvc(self) -> str:
        return self.values.storage.artifacts.name

    @property
    def model_cache_pvc(self) -> str:
        return self.values.storage.modelCache.name

    @property
    def mount_path(self) -> str:
        return self.values.storage.mountPath

    def mounted_artifacts(self) -> Path:
        """The artifacts volume's mount in this pod, where the pods the task creates (RayJobs,
        predictors) mount it too. Not mounted there: an error naming the volume, before any
        object is created that would fail later on missing files."""
        mount = Path(self.mount_path)
        if not mount.is_dir():
            raise KubeError(
                f"the artifacts volume (PVC {self.namespace}/{self.artifacts_pvc}) is not "
                f"mounted at {mount} in this task, where the pods it creates mount it: compile "
                f"the pipeline with --mount-path {mount}"
            )
        return mount

    def _role(self, role: str) -> RoleValues:
        try:
            return self.values.roles[role]
        except KeyError:
            raise KubeError(
                f"the platform's values have no role {role!r} (values `roles`)"
            ) from None


@cache
def _packaged() -> dict[str, Any]:
    text = resources.files("crops.k8s").joinpath("platform.json").read_text(encoding="utf-8")
    return json.loads(text)


__all__ = ["CONFIGMAP", "CONFIGMAP_KEY", "LOGSINK", "ChartValues", "Platform"]
