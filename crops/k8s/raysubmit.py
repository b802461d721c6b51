"""What KubeRay's submitter does, against any Ray cluster's job API.

KubeRay runs a RayJob by submitting `spec.entrypoint`, with the runtime environment of
`spec.runtimeEnvYAML` (env vars, working_dir, ...), to the job API of the RayJob's cluster (the
head's dashboard, `http://HEAD:8265`), under a submission id derived from the RayJob, and then
follows the job to its end. `submit_rayjob` does the same with a RayJob manifest as
`crops.k8s.rayjob.manifest` builds it, so a RayJob's entry point can run on a Ray cluster without
Kubernetes (the tests start one with `ray start`) exactly as KubeRay would run it, and it ends as
`RayJobClient.wait` does: a KubeRay-like status on success, `RayJobFailed` with Ray's message and
the last lines of the job's logs on failure, `KubeTimeout` (the job stopped) when time runs out,
and `KubeError` naming the address at once when the job API cannot be reached.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from crops.k8s.client import KubeError, KubeTimeout
from crops.k8s.rayjob import RayJobFailed

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

LOG_LINES = 20  # of the job's logs in a failure's message


@contextmanager
def _job_api(what: str, url: str) -> Iterator[None]:
    """The job API's failures (no connection, an HTTP error) as `KubeError` naming `url`."""
    try:
        yield
    except KubeError:
        raise
    except (OSError, RuntimeError) as exc:  # requests' errors are OSErrors; HTTP errors Runtime
        raise KubeError(f"{what}: the Ray job API at {url} failed: {exc}") from exc


def _tail(logs: str, lines: int = LOG_LINES) -> str:
    return "\n".join(logs.rstrip().splitlines()[-lines:])[-4000:]


def _connect(url: str, what: str, connect_timeout_s: float) -> JobSubmissionClient:
    """A client for the job API at `url`, after a TCP connect bounded by `connect_timeout_s`
    (Ray's client sets no timeout: a silent address would hang for minutes)."""
    from ray.job_submission import JobSubmissionClient

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=connect_timeout_s).close()
    except OSError as exc:
        raise KubeError(f"{what}: the Ray job API at {url} is unreachable: {exc}") from exc
    with _job_api(what, url):
        return JobSubmissionClient(url)


def submit_rayjob(
    manifest: dict[str, Any],
    address: str,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    connect_timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Submit the RayJob's entrypoint to the job API at `address` and wait for it to end.

    `address` is the head's dashboard URL (`http://HOST:8265`; `HOST:PORT` means http); Ray lets
    RAY_API_SERVER_ADDRESS or RAY_ADDRESS in the environment override it. The submission id is
    `spec.jobId` when set, else `<namespace>.<name>`: a second call for the same RayJob follows
    the job already there instead of running it twice (KubeRay's submitter does the same).
    Returns `jobDeploymentStatus` Complete, `jobStatus` SUCCEEDED, `jobId`, `message`,
    `runtimeEnv` (as Ray recorded it), `logTail` and `reattached`.
    """
    from ray.job_submission import JobStatus

    meta, spec = manifest["metadata"], manifest["spec"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    what = f"RayJob {namespace}/{name}"
    url = address if "://" in address else f"http://{address}"
    job_id = spec.get("jobId") or f"{namespace}.{name}"
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    deadline = time.monotonic() + timeout_s

    client = _connect(url, what, connect_timeout_s)
    with _job_api(what, url):
        try:
            client.get_job_info(job_id)
            reattached = True
        except RuntimeError as exc:
            if "status code 404" not in str(exc):
                raise
            client.submit_job(
                entrypoint=spec["entrypoint"],
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"rayjob": f"{namespace}/{name}"},
            )
            reattached = False
        status = client.get_job_status(job_id)
        while not status.is_terminal():
            if time.monotonic() >= deadline:
                client.stop_job(job_id)
                raise KubeTimeout(
                    f"{what}: Ray job {job_id} at {url} not done after {timeout_s:g} s; "
                    f"last state: jobStatus={status.value}; the job was stopped; its last logs:\n"
                    + _tail(client.get_job_logs(job_id), 5)
                )
            time.sleep(poll_s)
            status = client.get_job_status(job_id)
        info = client.get_job_info(job_id)
        tail = _tail(client.get_job_logs(job_id))
    if status != JobStatus.SUCCEEDED:
        said = (info.message or "").strip()
        if tail:  # Ray's message repeats the logs after its first line: keep only that line
            said = said.splitlines()[0] if said else ""
        raise RayJobFailed(
            f"{namespace}/{name}",
            {
                "jobDeploymentStatus": "Failed",
                "jobStatus": status.value,
                "reason": "AppFailed" if status == JobStatus.FAILED else "Stopped",
                "message": "\n".join(s for s in (said[:4000], tail) if s),
            },
        )
    return {
        "jobDeploymentStatus": "Complete",
        "jobStatus": status.value,
        "jobId": job_id,
        "dashboardURL": url,
        "message": info.message,
        "runtimeEnv": info.runtime_env,
        "logTail": tail,
        "reattached": reattached,
    }


__all__ = ["submit_rayjob"]
