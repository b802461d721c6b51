"""The vLLM Deployment and Service against a real kube-apiserver (the test plays the kubelet)."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client as k8s
from pydantic import ValidationError

from crops.k8s.client import KubeError, KubeTimeout
from crops.k8s.vllm import VllmClient, VllmSpec, deployment, service
from k8s.test_k8s_rayjob import assert_sent_is_kept


def _spec(namespace: str, **kw) -> VllmSpec:
    return VllmSpec(namespace=namespace, model="Qwen/Qwen2.5-1.5B-Instruct", **kw)


def test_the_deployment_probes_models_and_takes_the_key_from_a_secret() -> None:
    dep = deployment(_spec("ml", max_model_len=4096, gpus=1))
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "startupProbe"):
        command = container[probe]["exec"]["command"]
        assert "/v1/models" in command[-1] and "os.environ['VLLM_API_KEY']" in command[-1]
    # `vllm serve MODEL`, the model from the environment
    assert container["args"][0] == "$(MODEL)"
    assert {"name": "MODEL", "value": "Qwen/Qwen2.5-1.5B-Instruct"} in container["env"]
    assert container["startupProbe"]["failureThreshold"] * 10 >= 1800  # weights take minutes
    key = next(e for e in container["env"] if e["name"] == "VLLM_API_KEY")
    assert key == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "crops-llm", "key": "api-key"}},
    }
    assert "value" not in key  # never a literal key
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "crops-model-cache"}} in (
        pod["volumes"]
    )
    assert "--max-model-len" in container["args"]
    cpu_only = deployment(_spec("ml", gpus=0))["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_only
    assert "nvidia.com/gpu" not in cpu_only["containers"][0]["resources"]["limits"]
    assert service(_spec("ml"))["spec"]["ports"][0]["port"] == 8000
    assert _spec("ml").url() == "http://crops-vllm.ml.svc.cluster.local:8000"


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValidationError, match="model"):
        VllmSpec(namespace="ml", model="")
    with pytest.raises(ValidationError, match="name"):
        VllmSpec(name="vLLM", namespace="ml", model="m")


def test_the_probe_really_sends_the_key_and_needs_a_200(tmp_path) -> None:
    """Run the probe's command against a local server that wants the key (a test fake)."""
    import http.server
    import os
    import subprocess
    import sys

    from crops.k8s.vllm import models_probe

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == "Bearer s3cret"
            self.send_response(200 if ok else 401)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [sys.executable, *models_probe(server.server_address[1])[1:]]
        good = subprocess.run(cmd, env={**os.environ, "VLLM_API_KEY": "s3cret"}, check=False)
        bad = subprocess.run(
            cmd, env={**os.environ, "VLLM_API_KEY": "wrong"}, capture_output=True, check=False
        )
    finally:
        server.shutdown()
    assert good.returncode == 0 and bad.returncode != 0
    assert seen[0] == ("/v1/models", "Bearer s3cret")


def test_apply_creates_then_updates_and_wait_reads_readiness(apiserver, namespace) -> None:
    api = apiserver.api_client()
    vllm = VllmClient(api)
    spec = _spec(namespace)
    assert vllm.apply(spec)["url"] == spec.url()
    apps = k8s.AppsV1Api(api)
    stored = api.sanitize_for_serialization(apps.read_namespaced_deployment(spec.name, namespace))
    assert_sent_is_kept(deployment(spec)["spec"]["template"], stored["spec"]["template"])
    assert k8s.CoreV1Api(api).read_namespaced_service(spec.name, namespace).spec.ports[0].port == (
        8000
    )

    bigger = _spec(namespace, max_model_len=2048)
    vllm.apply(bigger)  # exists: the Deployment is updated in place
    args = apps.read_namespaced_deployment(spec.name, namespace).spec.template.spec.containers[0]
    assert "--max-model-len" in args.args

    with pytest.raises(KubeTimeout, match="0/1 replicas ready"):
        vllm.wait_ready(spec, timeout_s=0.5)

    def kubelet() -> None:
        apps.patch_namespaced_deployment_status(
            spec.name, namespace, {"status": {"replicas": 1, "readyReplicas": 1}}
        )

    timer = threading.Timer(0.4, kubelet)
    timer.start()
    assert vllm.wait_ready(spec, timeout_s=10) == spec.url()
    timer.join()


def test_a_refused_create_names_the_object(apiserver, namespace) -> None:
    vllm = VllmClient(apiserver.api_client(token="not-a-token"))
    with pytest.raises(KubeError, match=f"creating Deployment {namespace}/crops-vllm .*HTTP 401"):
        vllm.apply(_spec(namespace))
