"""The local LLM (crops.mining.llm_server): llama.cpp's server with the packaged SmolLM2-135M,
started for real on a loopback port and spoken to by the same client as vLLM. No fake here:
the dialect the client assumes for llama.cpp is checked against the server itself."""

from __future__ import annotations

import json

import httpx
import pytest

from crops.mining.llm_server import (
    MODEL_NAME,
    LocalLLMBackend,
    LocalServer,
    packaged_model,
    start_server,
)
from crops.mining.synthesis import (
    SERVER_DIALECTS,
    USELESS,
    VIDEO_JSON_SCHEMA,
    OpenAIChatBackend,
    SyntheticVideo,
    parse_reply,
)


def test_the_packaged_model_is_a_gguf_file() -> None:
    path = packaged_model()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"  # llama.cpp's file magic


def test_a_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf not found"):
        start_server(tmp_path / "nope.gguf", log_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf not found"):
        LocalLLMBackend(tmp_path / "nope.gguf", log_dir=tmp_path)


def test_a_file_that_is_not_a_model_fails_with_the_servers_own_words(tmp_path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(RuntimeError, match="exited with code") as err:
        start_server(bad, log_dir=tmp_path / "logs", timeout_s=60)
    assert "broken.gguf" in str(err.value)  # the server's log tail names the file
    assert (tmp_path / "logs" / "llm_server.log").is_file()


@pytest.mark.slow
def test_the_llama_cpp_dialect_holds_against_the_real_server(tmp_path) -> None:
    """What the client assumes of llama.cpp: GET /v1/models names the model; `json_object`
    with a schema constrains the reply to it; `n` is ignored (one choice per reply)."""
    with start_server(log_dir=tmp_path) as server:
        assert server.alive() and server.url.startswith("http://127.0.0.1:")
        client = OpenAIChatBackend(server.url, server.model, server="llama.cpp", max_tokens=320)
        assert client.models() == [server.model]
        body = client.request_body("jaguar", per_query=2)
        assert body["response_format"]["type"] == "json_object"
        reply = httpx.post(client.url, json=body, timeout=120).json()
        assert len(reply["choices"]) == 1  # n=2 asked, one given: hence one request per video
        choice = reply["choices"][0]
        got = parse_reply("jaguar", choice["message"]["content"], choice["finish_reason"])
        # the schema held: a video, or a well-formed reply that adds nothing (SmolLM2-135M
        # often copies the prompt's example), never malformed JSON
        assert (isinstance(got, list) and got[0].query == "jaguar") or got.reason in USELESS, got
        assert set(json.loads(choice["message"]["content"])) == set(VIDEO_JSON_SCHEMA["required"])
        assert not SERVER_DIALECTS["llama.cpp"].choices_per_request
    assert not server.alive()  # stopped on leaving the block


@pytest.mark.slow
def test_local_synthesis_writes_videos_and_stops_its_server(tmp_path) -> None:
    backend = LocalLLMBackend(log_dir=tmp_path, cache_path=tmp_path / "cache.sqlite")
    result = backend.synthesize(["jaguar", "bike repair", "jaguar"], per_query=2)
    stats = result.stats
    assert stats["backend"] == "local-llm" and stats["is_llm"] and stats["model"] == MODEL_NAME
    assert stats["unique_queries"] == 2
    assert stats["requests_sent"] >= 4  # two videos a query, one request each
    assert stats["succeeded"] + stats["failed"] == 2
    assert stats["videos"] >= 1, (stats, result.quarantine)
    # the quality figures the report carries: replies that parsed, and throughput
    assert stats["replies"] == stats["requests_sent"]  # every request got a model reply
    assert stats["valid_reply_rate"] == pytest.approx(stats["valid_replies"] / stats["replies"])
    assert stats["videos_per_s"] > 0
    assert all(
        isinstance(v, SyntheticVideo) and v.query in ("jaguar", "bike repair")
        for v in result.videos
    )
    for row in result.quarantine:  # a bad reply is quarantined with its reason, never a crash
        assert row["reason"] and row["detail"]
    server = LocalServer.load(tmp_path / "llm_server.json")
    assert not server.alive()
    # a rerun pays only for what failed: the replies are cached
    again = LocalLLMBackend(log_dir=tmp_path, cache_path=tmp_path / "cache.sqlite")
    assert (
        again.synthesize(["jaguar", "bike repair"], per_query=2).stats["cache_hits"]
        == (stats["succeeded"])
    )
