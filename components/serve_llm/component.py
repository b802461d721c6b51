"""serve_llm: the LLM server that writes video metadata for the data engine (vLLM on a
cluster, llama.cpp's server with a small packaged model on one machine).

Locally (`target=local`, no endpoint given, `llm_backend` auto or local) it starts llama.cpp's
OpenAI-compatible server with the packaged SmolLM2-135M (or `llm_model`, a GGUF path) on a free
loopback port (`crops.mining.llm_server`), waits for `/v1/models` and returns its URL; mine
talks to it as it would to vLLM, and `release_llm` stops it.

On a cluster it applies the vLLM Deployment and Service (`crops.k8s.vllm`, laid out from the
installed release's platform description: startup and readiness probes on `/v1/models`,
weights on a PVC, key from the Secret `crops-llm`), waits until the model answers and returns
the in-cluster endpoint that the mine task calls; `release_llm` takes it down after mining so
it does not keep its GPU. A given `llm_endpoint` (a server you run) is passed through
unchanged. Without either it returns "" and mine takes the endpoint from the `crops-llm`
Secret. The synthesis itself (which queries get new videos, and their grading) runs inside
mine, in the same pass as HLA.

`release_llm` runs after mine whether it succeeded or not (`ignore_upstream_failure`) and,
when this run served vLLM, deletes its Deployment and Service, so the server does not keep its
GPU; a local server that `serve_llm` started is stopped (found by its URL); a server you run
yourself is never touched. Both run as `crops-pipeline`, whose Role
allows exactly these Deployment and Service calls.
"""

from kfp import dsl
from kfp.dsl import Metrics, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def serve_llm(
    summary: Output[Metrics],
    llm_endpoint: str = "",
    llm_model: str = "",
    target: str = "local",
    serve_vllm: bool = False,
    namespace: str = "crops",
    gpus: int = 1,
    timeout_s: float = 1800.0,
    llm_backend: str = "auto",
) -> str:
    """The OpenAI-compatible endpoint (vLLM) for LLM synthesis, brought up if asked.

    Args:
        summary: how the endpoint was obtained (`served` 1 when this task deployed vLLM).
        llm_endpoint: an existing server's base URL; returned as it is when given.
        llm_model: the model vLLM serves (Hugging Face id or a path on the cache PVC).
        target: local | cluster; vLLM is deployed on a cluster only.
        serve_vllm: deploy vLLM (with `target=cluster` and `llm_model`).
        namespace: the namespace of the vLLM Deployment and Service (the platform's).
        gpus: GPUs for the vLLM server.
        timeout_s: how long to wait for the model to load.
        llm_backend: mine's backend; locally `auto` or `local` start the local LLM server.
    """
    targets = ("local", "cluster")
    if target not in targets:
        raise ValueError(f"target {target!r}: use one of {', '.join(targets)}")
    served = 0
    endpoint = llm_endpoint.strip()
    if not endpoint and serve_vllm:
        if target != "cluster":
            raise ValueError("serve_vllm needs target=cluster: vLLM needs a GPU node")
        if not llm_model:
            raise ValueError("serve_vllm needs llm_model: the model vLLM should serve")
        from crops.k8s.platform import Platform
        from crops.k8s.vllm import VllmClient, VllmSpec

        spec = VllmSpec(namespace=namespace, model=llm_model, gpus=int(gpus))
        client = VllmClient(platform=Platform.from_cluster(namespace))
        client.apply(spec)
        endpoint = client.wait_ready(spec, timeout_s=float(timeout_s))
        served = 1
    elif not endpoint and target == "local" and llm_backend in ("auto", "local"):
        import tempfile

        from crops.mining.llm_server import register, start_server

        logs = tempfile.mkdtemp(prefix="crops-llm-")
        server = start_server(llm_model or None, log_dir=logs, timeout_s=min(timeout_s, 300.0))
        register(server)  # release_llm stops it by its URL
        endpoint = server.url
        served = 1
    summary.log_metric("served", served)
    summary.log_metric("has_endpoint", int(bool(endpoint)))
    return endpoint


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def release_llm(
    summary: Output[Metrics],
    serve_vllm: bool = False,
    namespace: str = "crops",
    llm_endpoint: str = "",
) -> str:
    """Take down the vLLM server `serve_llm` brought up (Deployment and Service), whether
    mining succeeded or not, so it does not keep its GPU. A server you run is never touched.

    Args:
        summary: `deleted`: how many objects were removed.
        serve_vllm: whether `serve_llm` deployed vLLM in this run.
        namespace: the namespace of the vLLM Deployment and Service.
        llm_endpoint: serve_llm's URL; a local server it started is stopped.

    Returns:
        What was deleted, comma-separated ("" when nothing was).
    """
    deleted: list[str] = []
    if llm_endpoint:
        from crops.mining.llm_server import stop_registered

        if stop_registered(llm_endpoint):  # the local server serve_llm started
            deleted.append(f"local LLM server {llm_endpoint}")
    if serve_vllm:
        from crops.k8s.vllm import VllmClient, VllmSpec

        deleted += VllmClient().delete(VllmSpec.model_fields["name"].default, namespace)
    summary.log_metric("deleted", len(deleted))
    return ", ".join(deleted)
