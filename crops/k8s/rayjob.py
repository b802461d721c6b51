"""KubeRay RayJobs: training and index building on a cluster's Ray, with the lifecycle always set.

A RayJob brings up a RayCluster, runs `entrypoint` on it (`python -m crops.ray_jobs.train ...`,
the same code path as `crops train`) and tears it down. Its pods are laid out from the platform
description (`crops.k8s.platform`), exactly as the chart lays out its own RayJobs. Lifecycle
fields are never left to defaults: a job that hangs is killed by `activeDeadlineSeconds`, a
finished cluster is deleted after `ttlSecondsAfterFinished`, and `backoffLimit` bounds retries,
so a failed pipeline run leaves no GPUs held. `wait` follows `status.jobDeploymentStatus` and
surfaces KubeRay's `reason` and `message` when it fails.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from crops.k8s.client import KubeError, api_client, api_errors, watch_until
from crops.k8s.platform import Platform, Role

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
# KubeRay's jobDeploymentStatus values that end a RayJob.
SUCCEEDED = {"Complete"}
FAILED = {"Failed", "ValidationFailed"}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def entrypoint(script: str, args: Sequence[object]) -> str:
    """`python -m crops.ray_jobs.<script> ARGS`, shell-quoted (KubeRay runs it through a shell).

    The entry points are modules of the installed package, so neither the image's layout nor
    the driver's working directory matters."""
    if script not in ("train", "build_index", "mine"):
        raise ValueError(f"no RayJob entry point {script!r}: train, build_index or mine")
    return shlex.join(["python", "-m", f"crops.ray_jobs.{script}", *(str(a) for a in args)])


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
    """What one crops RayJob needs. Everything else (images, pod security, labels, accounts,
    resources, volumes, lifecycle defaults) comes from the platform description
    (`crops.k8s.platform`), the same values the chart's RayJobs are rendered from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field("crops", pattern=DNS_LABEL)
    job: Literal["train", "index", "mine"] = "train"
    entrypoint: str = Field(min_length=1)
    image: str | None = Field(None, min_length=1, description="None: the platform's")
    workers: int = Field(1, ge=1)
    worker_gpus: int = Field(0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = Field(
        default_factory=dict, description="ENV -> (secret name, key)"
    )
    shutdown_after_job_finishes: bool = True
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="None: the chart's")
    active_deadline_seconds: int | None = Field(None, ge=1, description="None: the chart's")
    backoff_limit: int | None = Field(None, ge=0, description="None: the chart's")

    @field_validator("shutdown_after_job_finishes")
    @classmethod
    def _must_shut_down(cls, value: bool) -> bool:
        if not value:
            raise ValueError("a crops RayJob always shuts its cluster down when the job ends")
        return value


def _env(spec: RayJobSpec, head_or_worker: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if head_or_worker:
        env.append({"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"})
        env += [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        env += [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": s, "key": key}}}
            for k, (s, key) in sorted(spec.secret_env.items())
        ]
    return env


def _ray_pod(
    p: Platform, role: Role, container: dict[str, Any], shm: str, gpus: int
) -> dict[str, Any]:
    """A head or worker pod template: the artifacts volume, /tmp and Ray's shared memory."""
    container["volumeMounts"] = [
        {"name": "artifacts", "mountPath": p.mount_path},
        {"name": "tmp", "mountPath": "/tmp"},  # Ray's session dir, logs and sockets
        {"name": "shm", "mountPath": "/dev/shm"},  # Ray's object store
    ]
    pod: dict[str, Any] = {
        "serviceAccountName": p.service_account(role),
        "automountServiceAccountToken": False,
        "securityContext": p.pod_security_context(),
        **(p.gpu_scheduling() if gpus else {}),
        "containers": [container],
        "volumes": [
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": p.artifacts_pvc}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        ],
    }
    return {"metadata": {"labels": p.pod_labels(role)}, "spec": pod}


def manifest(spec: RayJobSpec, platform: Platform | None = None) -> dict[str, Any]:
    """The RayJob object for `spec` (ray.io/v1), laid out as the chart's RayJobs are."""
    p = platform or Platform.default(spec.namespace)
    ray = p.values.ray
    life = ray.index if spec.job == "index" else ray.train
    image = spec.image or p.ray_image(spec.worker_gpus > 0)

    def container(name: str, resources: dict[str, Any], env: list[dict[str, Any]]) -> dict:
        return {
            "name": name,
            "image": image,
            "imagePullPolicy": p.pull_policy,
            "env": env,
            "resources": resources,
            "securityContext": p.container_security_context(),
        }

    head = container("ray-head", p.resources(ray.head.resources), _env(spec, True))
    head["ports"] = [
        {"name": "gcs", "containerPort": 6379, "protocol": "TCP"},
        {"name": "dashboard", "containerPort": p.values.ports.rayDashboard, "protocol": "TCP"},
        {"name": "client", "containerPort": 10001, "protocol": "TCP"},
    ]
    worker = container(
        "ray-worker", p.resources(ray.workers.resources, spec.worker_gpus), _env(spec, True)
    )
    submitter = container(
        "ray-job-submitter", p.resources(ray.submitter.resources), _env(spec, False)
    )
    submitter["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "crops",
                "app.kubernetes.io/instance": p.release,
                "app.kubernetes.io/component": spec.job,
                "app.kubernetes.io/managed-by": "crops",
            },
        },
        "spec": {
            "shutdownAfterJobFinishes": spec.shutdown_after_job_finishes,
            "ttlSecondsAfterFinished": _or(
                spec.ttl_seconds_after_finished, life.ttlSecondsAfterFinished
            ),
            "activeDeadlineSeconds": _or(spec.active_deadline_seconds, life.activeDeadlineSeconds),
            "backoffLimit": _or(spec.backoff_limit, life.backoffLimit),
            "submissionMode": "K8sJobMode",
            "entrypoint": spec.entrypoint,
            "runtimeEnvYAML": yaml.safe_dump(ray.runtimeEnv, sort_keys=True),
            "submitterPodTemplate": {
                "metadata": {"labels": p.pod_labels("raySubmitter")},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": p.service_account("raySubmitter"),
                    "automountServiceAccountToken": False,
                    "securityContext": p.pod_security_context(),
                    "containers": [submitter],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
            "rayClusterSpec": {
                "rayVersion": ray.rayVersion,
                "headGroupSpec": {
                    # The head schedules no work: it must not take a worker's CPUs or GPU.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _ray_pod(p, "rayNode", head, ray.head.shmSize or "2Gi", 0),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": spec.workers,
                        "minReplicas": spec.workers,
                        "maxReplicas": spec.workers,
                        "rayStartParams": {},
                        "template": _ray_pod(
                            p, "rayNode", worker, ray.workers.shmSize or "4Gi", spec.worker_gpus
                        ),
                    }
                ],
            },
        },
    }


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


class RayJobClient:
    """Create, read, wait for and delete RayJobs through the CustomObjects API."""

    def __init__(self, client: ApiClient | None = None) -> None:
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(client if client is not None else api_client())

    def create(self, spec: RayJobSpec, platform: Platform | None = None) -> dict[str, Any]:
        with api_errors(f"creating RayJob {spec.namespace}/{spec.name}"):
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, manifest(spec, platform)
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


def staging_root(platform: Platform, key: str, what: str) -> Path:
    """`<mount path>/runs/<key>/<what>`: where a pipeline task stages a RayJob's inputs and the
    job writes its outputs, on the artifacts volume that both mount at the platform's path. A
    task without that volume mounted there cannot hand files to the job: that is an error
    naming the volume (`Platform.mounted_artifacts`), not a job that fails on missing files."""
    return platform.mounted_artifacts() / "runs" / key / what


def submit_and_wait(
    spec: RayJobSpec,
    timeout_s: float,
    client: ApiClient | None = None,
    platform: Platform | None = None,
) -> dict[str, Any]:
    """Create the RayJob and wait for it to end; returns its final status (see `wait`)."""
    jobs = RayJobClient(client)
    jobs.create(spec, platform)
    return jobs.wait(spec.name, spec.namespace, timeout_s)


__all__ = [
    "RayJobClient",
    "RayJobFailed",
    "RayJobSpec",
    "entrypoint",
    "manifest",
    "staging_root",
    "submit_and_wait",
]
