"""KubeRay RayJobs: training and index building on a cluster's Ray, with the lifecycle always set.

A RayJob brings up a RayCluster, runs `entrypoint` on it (`python ray_jobs/train.py ...`, the same
code path as `crops train`) and tears it down. Lifecycle fields are never left to defaults: a
job that hangs is killed by `activeDeadlineSeconds`, a finished cluster is deleted after
`ttlSecondsAfterFinished`, and `backoffLimit` bounds retries, so a failed pipeline run leaves no
GPUs held. `wait` follows `status.jobDeploymentStatus` and surfaces KubeRay's `reason` and
`message` when it fails.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crops.k8s.client import KubeError, api_client, api_errors, watch_until

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
RAY_VERSION = "2.60.0"
# KubeRay's jobDeploymentStatus values that end a RayJob.
SUCCEEDED = {"Complete"}
FAILED = {"Failed", "ValidationFailed"}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


# Where the image keeps the RayJob entry points (docker/Dockerfile: WORKDIR /app). A Ray job's
# driver does not run in the image's working directory, so the path is absolute.
RAY_JOBS_DIR = "/app/ray_jobs"


def entrypoint(script: str, args: Sequence[object]) -> str:
    """`python /app/ray_jobs/<script>.py ARGS`, shell-quoted (KubeRay runs it through a shell)."""
    return f"python {RAY_JOBS_DIR}/{script}.py " + shlex.join(str(a) for a in args)


class RayJobFailed(KubeError):
    """The RayJob ended in failure; `reason` and `message` are KubeRay's own."""

    def __init__(self, name: str, status: dict[str, Any]) -> None:
        self.reason = status.get("reason") or status.get("jobStatus") or "unknown"
        self.message = status.get("message") or ""
        super().__init__(
            f"RayJob {name} failed: {status.get('jobDeploymentStatus')} "
            f"(reason {self.reason}{': ' + self.message if self.message else ''})"
        )


class RayJobSpec(BaseModel):
    """What a crops RayJob needs; everything else in the manifest is fixed by policy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field("default", pattern=DNS_LABEL)
    image: str = Field(min_length=1)
    entrypoint: str = Field(min_length=1)
    ray_version: str = RAY_VERSION
    workers: int = Field(1, ge=1)
    worker_cpu: str = "2"
    worker_memory: str = "8Gi"
    worker_gpus: int = Field(0, ge=0)
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    service_account: str = "crops-ray"
    pvc: str | None = "crops-artifacts"
    mount_path: str = "/artifacts"
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = Field(
        default_factory=dict, description="ENV -> (secret name, key)"
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    shutdown_after_job_finishes: bool = True
    ttl_seconds_after_finished: int = Field(600, ge=0)
    active_deadline_seconds: int = Field(6 * 3600, ge=1)
    backoff_limit: int = Field(0, ge=0)

    @field_validator("shutdown_after_job_finishes")
    @classmethod
    def _must_shut_down(cls, value: bool) -> bool:
        if not value:
            raise ValueError("a crops RayJob always shuts its cluster down when the job ends")
        return value

    @classmethod
    def gpu(cls, **fields: Any) -> RayJobSpec:
        """A spec whose workers take one GPU each on GPU nodes (NVIDIA's label and taint)."""
        fields.setdefault("worker_gpus", 1)
        fields.setdefault("node_selector", {"nvidia.com/gpu.present": "true"})
        fields.setdefault(
            "tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        )
        return cls(**fields)

    @classmethod
    def for_workers(cls, worker_gpus: int, **fields: Any) -> RayJobSpec:
        """`gpu(...)` when the workers take GPUs, else a plain CPU spec."""
        return cls.gpu(worker_gpus=worker_gpus, **fields) if worker_gpus > 0 else cls(**fields)


def _container(spec: RayJobSpec, name: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": s, "key": key}}}
        for k, (s, key) in sorted(spec.secret_env.items())
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.pvc:
        mounts.append({"name": "artifacts", "mountPath": spec.mount_path})
    return {
        "name": name,
        "image": spec.image,
        "env": env + [{"name": "RAY_TRAIN_V2_ENABLED", "value": "1"}],
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod(spec: RayJobSpec, container: dict[str, Any], gpu_node: bool) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.pvc:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": spec.pvc}})
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account,
        "containers": [container],
        "volumes": volumes,
    }
    if gpu_node and spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if gpu_node and spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "crops"}}, "spec": pod}


def manifest(spec: RayJobSpec) -> dict[str, Any]:
    """The RayJob object for `spec` (ray.io/v1)."""
    head = _container(spec, "ray-head", spec.head_cpu, spec.head_memory, 0)
    worker = _container(spec, "ray-worker", spec.worker_cpu, spec.worker_memory, spec.worker_gpus)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "crops", "app.kubernetes.io/name": spec.name},
        },
        "spec": {
            "entrypoint": spec.entrypoint,
            "shutdownAfterJobFinishes": spec.shutdown_after_job_finishes,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "backoffLimit": spec.backoff_limit,
            "rayClusterSpec": {
                "rayVersion": spec.ray_version,
                "headGroupSpec": {
                    # The head schedules no work: it must not take a worker's CPUs or GPU.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(spec, head, gpu_node=False),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": spec.workers,
                        "minReplicas": spec.workers,
                        "maxReplicas": spec.workers,
                        "rayStartParams": {},
                        "template": _pod(spec, worker, gpu_node=True),
                    }
                ],
            },
        },
    }


class RayJobClient:
    """Create, read, wait for and delete RayJobs through the CustomObjects API."""

    def __init__(self, client: ApiClient | None = None) -> None:
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(client if client is not None else api_client())

    def create(self, spec: RayJobSpec) -> dict[str, Any]:
        with api_errors(f"creating RayJob {spec.namespace}/{spec.name}"):
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, manifest(spec)
            )

    def get(self, name: str, namespace: str) -> dict[str, Any]:
        with api_errors(f"reading RayJob {namespace}/{name}"):
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def delete(self, name: str, namespace: str) -> None:
        with api_errors(f"deleting RayJob {namespace}/{name}"):
            self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def wait(self, name: str, namespace: str, timeout_s: float) -> dict[str, Any]:
        """Wait until the job ends; its status on success, `RayJobFailed` on failure,
        `KubeTimeout` (with the last deployment and job status) when `timeout_s` passes."""

        def state(obj: dict[str, Any]) -> str:
            status = obj.get("status") or {}
            return (
                f"jobDeploymentStatus={status.get('jobDeploymentStatus', 'unset')}, "
                f"jobStatus={status.get('jobStatus', 'unset')}"
            )

        obj = watch_until(
            f"RayJob {namespace}/{name}",
            lambda: self.get(name, namespace),
            self.api.list_namespaced_custom_object,
            (GROUP, VERSION, namespace, PLURAL),
            name,
            lambda o: (o.get("status") or {}).get("jobDeploymentStatus") in SUCCEEDED | FAILED,
            timeout_s,
            describe=state,
        )
        status = obj["status"]
        if status["jobDeploymentStatus"] in FAILED or status.get("jobStatus") == "FAILED":
            raise RayJobFailed(f"{namespace}/{name}", status)
        return status


def submit_and_wait(
    spec: RayJobSpec, timeout_s: float, client: ApiClient | None = None
) -> dict[str, Any]:
    """Create the RayJob and wait for it to end; returns its final status (see `wait`)."""
    jobs = RayJobClient(client)
    jobs.create(spec)
    return jobs.wait(spec.name, spec.namespace, timeout_s)


__all__ = [
    "RAY_JOBS_DIR",
    "RAY_VERSION",
    "RayJobClient",
    "RayJobFailed",
    "RayJobSpec",
    "entrypoint",
    "manifest",
    "submit_and_wait",
]
