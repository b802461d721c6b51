"""RayJob client against a real kube-apiserver with KubeRay's CRD; the test plays the operator."""

from __future__ import annotations

import shlex
import threading
import time

import pytest
from kubernetes import client as k8s
from pydantic import ValidationError

from crops.k8s.client import KubeError, KubeTimeout
from crops.k8s.rayjob import (
    GROUP,
    PLURAL,
    VERSION,
    RayJobClient,
    RayJobFailed,
    RayJobSpec,
    entrypoint,
    manifest,
    submit_and_wait,
)


def assert_sent_is_kept(sent, stored, path: str = "spec") -> None:
    """Every field sent is stored unchanged (the server may add defaulted fields)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), path
        for key, value in sent.items():
            assert key in stored, f"{path}.{key} was pruned by the server"
            assert_sent_is_kept(value, stored[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), path
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            assert_sent_is_kept(a, b, f"{path}[{i}]")
    else:  # resource quantities sent as numbers come back as strings
        same = stored == sent or (type(sent) is int and stored == str(sent))
        assert same, f"{path}: sent {sent!r}, stored {stored!r}"


def _spec(namespace: str, name: str = "train", **kw) -> RayJobSpec:
    values = dict(
        name=name,
        namespace=namespace,
        entrypoint=entrypoint(
            "train", ["--samples", "/artifacts/s.parquet", "--out", "/artifacts/m"]
        ),
    )
    return RayJobSpec(**(values | kw))


def _operator(apiserver, namespace: str, name: str, statuses: list[dict], every_s: float = 0.3):
    """Play KubeRay: write each status to /status in turn, in a thread."""
    api = k8s.CustomObjectsApi(apiserver.api_client())

    def play() -> None:
        for status in statuses:
            time.sleep(every_s)
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def test_the_manifest_always_carries_the_lifecycle_and_pinned_ray() -> None:
    from crops.k8s.platform import Platform

    spec = RayJobSpec(
        name="train", namespace="ml", entrypoint="python x.py", workers=4, worker_gpus=1
    )
    job = manifest(spec)["spec"]
    chart = Platform.default().values
    assert job["shutdownAfterJobFinishes"] is True
    # The chart's lifecycle unless the spec says otherwise; never left to KubeRay's defaults.
    assert job["ttlSecondsAfterFinished"] == chart.ray.train.ttlSecondsAfterFinished == 3600
    assert job["activeDeadlineSeconds"] == 21600 and job["backoffLimit"] == 1
    index = manifest(spec.model_copy(update={"job": "index", "backoff_limit": 0}))["spec"]
    assert index["activeDeadlineSeconds"] == chart.ray.index.activeDeadlineSeconds == 7200
    assert index["backoffLimit"] == 0
    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    worker = cluster["workerGroupSpecs"][0]
    assert worker["replicas"] == worker["minReplicas"] == worker["maxReplicas"] == 4
    pod = worker["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"] == "crops:0.1.0-cuda"  # the CUDA build for GPU workers
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head  # the head takes no GPU node
    assert head["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    cpu = manifest(spec.model_copy(update={"worker_gpus": 0}))["spec"]["rayClusterSpec"]
    worker_pod = cpu["workerGroupSpecs"][0]["template"]["spec"]
    assert (
        "nodeSelector" not in worker_pod and worker_pod["containers"][0]["image"] == "crops:0.1.0"
    )


def test_the_entrypoint_runs_a_module_of_the_installed_package() -> None:
    import importlib.util

    line = entrypoint("build_index", ["--model", "/artifacts/my model", "--factory", "IVF64,Flat"])
    assert (
        line
        == "python -m crops.ray_jobs.build_index --model '/artifacts/my model' --factory IVF64,Flat"
    )
    assert shlex.split(line)[3:5] == ["--model", "/artifacts/my model"]
    for script in ("train", "build_index", "mine"):
        assert importlib.util.find_spec(f"crops.ray_jobs.{script}") is not None
    with pytest.raises(ValueError, match="no RayJob entry point 'serve'"):
        entrypoint("serve", [])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shutdown_after_job_finishes", False),
        ("active_deadline_seconds", 0),
        ("name", "Bad_Name"),
        ("workers", 0),
        ("entrypoint", ""),
    ],
)
def test_bad_specs_are_refused_before_the_api(field: str, value) -> None:
    with pytest.raises(ValidationError, match=field):
        _spec("ns", **{field: value})


def test_create_is_accepted_by_the_crd_schema_and_nothing_is_pruned(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    spec = _spec(namespace, env={"CROPS_SEED": "1"}, secret_env={"KEY": ("crops-llm", "api-key")})
    jobs.create(spec)
    stored = jobs.get("train", namespace)
    # The server prunes fields its schema does not know (and adds defaults): everything sent
    # coming back proves every field is real.
    assert_sent_is_kept(manifest(spec)["spec"], stored["spec"])
    with pytest.raises(KubeError, match="HTTP 409"):
        jobs.create(spec)


def test_the_server_enforces_the_crd_schema(apiserver, namespace) -> None:
    """The RayJob CRD is really in force: a wrong type is refused with the server's reason."""
    bad = manifest(_spec(namespace))
    bad["spec"]["backoffLimit"] = "three"
    api = k8s.CustomObjectsApi(apiserver.api_client())
    with pytest.raises(k8s.ApiException) as exc:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    assert exc.value.status == 422 and "backoffLimit" in exc.value.body


def test_wait_follows_the_deployment_status_to_success(apiserver, namespace) -> None:
    spec = _spec(namespace)
    thread = _operator(
        apiserver,
        namespace,
        spec.name,
        [
            {"jobDeploymentStatus": "Initializing"},
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
        ],
        every_s=0.8,  # the operator starts after the create below
    )
    status = submit_and_wait(spec, timeout_s=30, client=apiserver.api_client())
    thread.join()
    assert status["jobDeploymentStatus"] == "Complete" and status["jobStatus"] == "SUCCEEDED"


def test_a_failed_job_surfaces_kuberays_reason(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    spec = _spec(namespace, name="index")
    jobs.create(spec)
    _operator(
        apiserver,
        namespace,
        "index",
        [
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
            {
                "jobDeploymentStatus": "Failed",
                "jobStatus": "FAILED",
                "reason": "AppFailed",
                "message": "train.py exited with code 1: CUDA out of memory",
            },
        ],
    ).join()
    with pytest.raises(RayJobFailed, match="AppFailed: train.py exited .* CUDA out of memory") as e:
        jobs.wait("index", namespace, timeout_s=10)
    assert e.value.reason == "AppFailed"


def test_a_deadline_exceeded_job_is_a_failure(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    jobs.create(_spec(namespace, name="slow"))
    status = {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}
    _operator(apiserver, namespace, "slow", [status], every_s=0).join()
    with pytest.raises(RayJobFailed, match="DeadlineExceeded"):
        jobs.wait("slow", namespace, timeout_s=10)


def test_a_wait_times_out_naming_the_last_state(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    jobs.create(_spec(namespace, name="stuck"))
    status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    _operator(apiserver, namespace, "stuck", [status], every_s=0).join()
    t0 = time.monotonic()
    with pytest.raises(KubeTimeout, match="jobDeploymentStatus=Running, jobStatus=RUNNING"):
        jobs.wait("stuck", namespace, timeout_s=1.0)
    assert time.monotonic() - t0 < 5


def test_missing_jobs_and_refused_tokens_are_clear_errors(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    with pytest.raises(KubeError, match=f"reading RayJob {namespace}/ghost failed: HTTP 404"):
        jobs.get("ghost", namespace)
    stranger = RayJobClient(apiserver.api_client(token="not-a-token"))
    with pytest.raises(KubeError, match="HTTP 401") as e:
        stranger.create(_spec(namespace))
    assert e.value.status == 401


def test_a_job_deleted_while_waited_on_is_an_error_not_a_hang(apiserver, namespace) -> None:
    jobs = RayJobClient(apiserver.api_client())
    jobs.create(_spec(namespace, name="gone"))
    timer = threading.Timer(0.5, jobs.delete, args=("gone", namespace))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KubeError, match=f"RayJob {namespace}/gone was deleted while waiting"):
        jobs.wait("gone", namespace, timeout_s=20)
    timer.join()
    assert time.monotonic() - t0 < 10  # the watch saw it; no waiting out the timeout
