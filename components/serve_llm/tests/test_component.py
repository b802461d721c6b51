"""serve_llm and release_llm: an endpoint passed through, vLLM refused off a cluster, and
a real local LLM server started and stopped (slow)."""

import pytest
from kfp.dsl import Metrics


def test_serve_llm_passes_an_endpoint_through_and_refuses_vllm_off_cluster(tmp_path) -> None:

    from crops.components.serve_llm import serve_llm

    run = serve_llm.python_func
    summary = Metrics(uri=str(tmp_path / "m"))
    assert run(summary=summary, llm_endpoint=" http://vllm:8000 ") == "http://vllm:8000"
    assert summary.metadata == {"served": 0, "has_endpoint": 1}
    # no server asked for: nothing started, mine synthesises with none
    assert run(summary=Metrics(uri=str(tmp_path / "n")), llm_backend="none") == ""
    with pytest.raises(ValueError, match="needs target=cluster"):
        run(summary=Metrics(uri=str(tmp_path / "o")), serve_vllm=True, llm_model="m")
    with pytest.raises(ValueError, match="needs llm_model"):
        run(summary=Metrics(uri=str(tmp_path / "p")), serve_vllm=True, target="cluster")


@pytest.mark.slow
def test_local_serve_llm_starts_a_real_llm_server_and_release_stops_it(tmp_path) -> None:
    """Locally, with no endpoint, serve_llm starts llama.cpp's server (the packaged model),
    mine's client finds its model and dialect, and release_llm stops it by its URL."""
    import httpx

    from crops.components.serve_llm import release_llm, serve_llm
    from crops.mining.llm_server import MODEL_NAME, discover

    summary = Metrics(uri=str(tmp_path / "s"))
    url = serve_llm.python_func(summary=summary)
    try:
        assert url.startswith("http://127.0.0.1:") and summary.metadata["served"] == 1
        assert discover(url) == (MODEL_NAME, "llama.cpp")
    finally:
        released = release_llm.python_func(
            summary=Metrics(uri=str(tmp_path / "r")), llm_endpoint=url
        )
    assert released == f"local LLM server {url}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/v1/models", timeout=2)
    # a server it did not start is never touched
    assert (
        release_llm.python_func(
            summary=Metrics(uri=str(tmp_path / "x")), llm_endpoint="http://vllm:8000"
        )
        == ""
    )
