"""The pipeline's cluster paths as they run on a cluster: each task with the crops-pipeline
account's own token (never the admin's), against the real kube-apiserver with the chart's RBAC
and platform ConfigMap installed.

No controllers run there, so the tests play them: a KubeRay stand-in runs each RayJob's
entrypoint with the RayJob's runtime environment (the command KubeRay's submitter would send to
the head) and writes the job's status; a kubelet stand-in marks vLLM ready. What the tasks
create, and whether their account may create it, is real.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from support.cluster import KubeRayPlayer, as_account, install, run_as

from crops.components.index import index
from crops.components.serve_llm import release_llm, serve_llm
from crops.components.train import train
from crops.k8s.client import KubeError
from crops.k8s.rayjob import RayJobFailed

PIPELINE = "crops-pipeline"


@pytest.fixture
def platform(apiserver, namespace: str, tmp_path: Path, monkeypatch) -> Path:
    """The chart installed in `namespace` with the artifacts volume at a local folder (the
    task's and the RayJob's mount); the tasks run as crops-pipeline. Returns the mount."""
    mount = tmp_path / "artifacts"
    mount.mkdir()
    install(apiserver, namespace, {"storage": {"mountPath": str(mount)}})
    run_as(monkeypatch, apiserver, PIPELINE, namespace, tmp_path)
    return mount


def out(kind, tmp_path: Path, name: str):
    return kind(uri=str(tmp_path / name))


@pytest.mark.slow
def test_train_and_index_run_as_rayjobs_of_the_installed_platform(
    apiserver, namespace, platform: Path, mined_fast, tmp_path: Path
) -> None:
    mined_dir, world_dir = mined_fast
    model, ix = out(Model, tmp_path, "model"), out(Artifact, tmp_path, "index")
    with KubeRayPlayer(apiserver, namespace) as kuberay:
        train.python_func(
            mined=Dataset(uri=str(mined_dir)),
            world=Dataset(uri=str(world_dir)),
            model=model,
            metrics=out(Metrics, tmp_path, "m"),
            method="nce",
            max_steps=4,
            workers=1,
            backend="rayjob",
            namespace=namespace,
            worker_gpus=0,
            timeout_s=300,
        )
        index.python_func(
            model=model,
            world=Dataset(uri=str(world_dir)),
            index=ix,
            metrics=out(Metrics, tmp_path, "im"),
            backend="rayjob",
            namespace=namespace,
            actors=1,
            worker_gpus=0,
            timeout_s=300,
        )
    trained, indexed = kuberay.jobs
    assert (Path(model.path) / "training.json").is_file()
    assert json.loads((Path(ix.path) / "manifest.json").read_text())["model_hash"]
    # The jobs are the platform's: its image, account, labels and the staged paths on its volume.
    for job in (trained, indexed):
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
        assert head["spec"]["serviceAccountName"] == "crops-ray"
        assert head["metadata"]["labels"]["app.kubernetes.io/component"] == "ray-node"
        assert head["spec"]["securityContext"]["fsGroup"] == 1000
        assert str(platform) in job["spec"]["entrypoint"]
    assert trained["metadata"]["labels"]["app.kubernetes.io/component"] == "train"
    assert indexed["metadata"]["labels"]["app.kubernetes.io/component"] == "index"


def test_a_failing_rayjob_surfaces_its_reason(
    apiserver, namespace, platform: Path, tiny_index, tiny_dir: Path, tmp_path: Path
) -> None:
    """The entry point's own last error line reaches the task's exception."""
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    with KubeRayPlayer(apiserver, namespace), pytest.raises(RayJobFailed) as err:
        index.python_func(
            model=Model(uri=str(bad_model)),
            world=Dataset(uri=str(tiny_dir)),
            index=out(Artifact, tmp_path, "index"),
            metrics=out(Metrics, tmp_path, "m"),
            backend="rayjob",
            namespace=namespace,
            worker_gpus=0,
            timeout_s=120,
        )
    assert "AppFailed" in str(err.value) and namespace in str(err.value)


def test_serve_llm_brings_vllm_up_and_release_takes_it_down(
    apiserver, namespace, platform: Path, tmp_path: Path
) -> None:
    from kubernetes import client

    admin = apiserver.api_client()
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)

    def kubelet() -> None:
        for _ in range(200):
            try:
                apps.patch_namespaced_deployment_status(
                    "crops-vllm", namespace, {"status": {"replicas": 1, "readyReplicas": 1}}
                )
                return
            except client.ApiException:
                threading.Event().wait(0.1)

    thread = threading.Thread(target=kubelet, daemon=True)
    thread.start()
    summary = out(Metrics, tmp_path, "s")
    url = serve_llm.python_func(
        summary=summary,
        llm_model="Qwen/Qwen2.5-1.5B-Instruct",
        target="cluster",
        serve_vllm=True,
        namespace=namespace,
        gpus=0,
        timeout_s=30,
    )
    thread.join()
    assert url == f"http://crops-vllm.{namespace}.svc.cluster.local:8000"
    dep = apps.read_namespaced_deployment("crops-vllm", namespace)
    pod = dep.spec.template.spec
    assert pod.service_account_name == "crops-vllm"
    assert dep.spec.template.metadata.labels["app.kubernetes.io/component"] == "llm"
    assert pod.security_context.fs_group == 1000
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env["VLLM_CACHE_ROOT"] == "/cache/vllm" and env["HOME"] == "/tmp"

    gone = release_llm.python_func(
        summary=out(Metrics, tmp_path, "r"), serve_vllm=True, namespace=namespace
    )
    assert gone == f"Deployment {namespace}/crops-vllm, Service {namespace}/crops-vllm"
    names = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
    assert "crops-vllm" not in names
    assert "crops-vllm" not in [
        s.metadata.name for s in core.list_namespaced_service(namespace).items
    ]
    # A second release (a retried task) and a run that served nothing change nothing.
    assert (
        release_llm.python_func(
            summary=out(Metrics, tmp_path, "r2"), serve_vllm=True, namespace=namespace
        )
        == ""
    )
    assert (
        release_llm.python_func(
            summary=out(Metrics, tmp_path, "r3"), serve_vllm=False, namespace=namespace
        )
        == ""
    )


def test_a_missing_rbac_rule_or_platform_fails_naming_the_object(
    apiserver, namespace, tmp_path: Path, monkeypatch
) -> None:
    """As an account without the pipeline's Role the task is refused; without the chart's
    ConfigMap the task says the platform is not installed there."""
    install(apiserver, namespace)
    run_as(monkeypatch, apiserver, "crops-abtest", namespace, tmp_path)
    with pytest.raises(KubeError, match=rf"ConfigMap {namespace}/crops-platform.*403"):
        serve_llm.python_func(
            summary=out(Metrics, tmp_path, "s"),
            llm_model="m",
            target="cluster",
            serve_vllm=True,
            namespace=namespace,
        )
    other = f"{namespace}-x"
    from kubernetes import client

    client.CoreV1Api(apiserver.api_client()).create_namespace({"metadata": {"name": other}})
    with pytest.raises(KubeError, match=rf"ConfigMap {other}/crops-platform not found"):
        from crops.k8s.platform import Platform

        Platform.from_cluster(other, client=apiserver.api_client())
    # The pipeline's Role allows the vLLM Deployment but nothing in another namespace.
    from crops.k8s.vllm import VllmClient, VllmSpec

    as_pipeline = as_account(apiserver, PIPELINE, namespace)
    with pytest.raises(
        KubeError, match=rf"creating Deployment {other}/crops-vllm failed: HTTP 403"
    ):
        VllmClient(as_pipeline).apply(VllmSpec(namespace=other, model="m", gpus=0))
