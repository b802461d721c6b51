"""serve_llm and release_llm: the cluster paths as they run on a cluster (the `platform` fixture is
tests/shared_fixtures.py's): each task with the crops-pipeline
account's own token (never the admin's), against the real kube-apiserver with the chart's RBAC
and platform ConfigMap installed.

No controllers run there, so the tests play them: a KubeRay stand-in runs each RayJob's
entrypoint with the RayJob's runtime environment (the command KubeRay's submitter would send to
the head) and writes the job's status; a kubelet stand-in marks vLLM ready. What the tasks
create, and whether their account may create it, is real.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kfp.dsl import Metrics
from support.cluster import as_account, install, run_as
from support.kfp_artifacts import out

from crops.components.serve_llm import release_llm, serve_llm
from crops.k8s.client import KubeError

PIPELINE = "crops-pipeline"


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
