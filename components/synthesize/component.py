"""synthesize: the LLM server that writes video metadata for the data engine (vLLM).

On a cluster it applies the vLLM Deployment and Service (`crops.k8s.vllm`, laid out from the
installed release's platform description: startup and readiness probes on `/v1/models`,
weights on a PVC, key from the Secret `crops-llm`), waits until the model answers and returns
the in-cluster endpoint that the mine task calls; `release_llm` takes it down after mining so
it does not keep its GPU. A given `llm_endpoint` (a server you run) is passed through
unchanged. Without either it returns "" and mine takes the endpoint from the `crops-llm`
Secret. The synthesis itself (which queries get new videos, and their grading) runs inside
mine, in the same pass as HLA.
"""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def synthesize(
    summary: Output[Metrics],
    llm_endpoint: str = "",
    llm_model: str = "",
    target: str = "local",
    serve_vllm: bool = False,
    namespace: str = "crops",
    gpus: int = 1,
    timeout_s: float = 1800.0,
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
    summary.log_metric("served", served)
    summary.log_metric("has_endpoint", int(bool(endpoint)))
    return endpoint


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def release_llm(
    summary: Output[Metrics], serve_vllm: bool = False, namespace: str = "crops"
) -> str:
    """Take down the vLLM server `synthesize` brought up (Deployment and Service), whether
    mining succeeded or not, so it does not keep its GPU. A server you run is never touched.

    Args:
        summary: `deleted`: how many objects were removed.
        serve_vllm: whether `synthesize` deployed vLLM in this run.
        namespace: the namespace of the vLLM Deployment and Service.

    Returns:
        What was deleted, comma-separated ("" when nothing was).
    """
    deleted: list[str] = []
    if serve_vllm:
        from crops.k8s.vllm import VllmClient, VllmSpec

        deleted = VllmClient().delete(VllmSpec.model_fields["name"].default, namespace)
    summary.log_metric("deleted", len(deleted))
    return ", ".join(deleted)
