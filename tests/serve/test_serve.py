"""The KServe retrieval endpoint: in-process predictor, then the real `crops serve` server."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import RequestedOutput

from crops.index.retriever import DenseRetriever
from crops.model.encoders import build_dual_encoder
from crops.serve.predictor import RetrievalModel
from crops.serve.process import start_server, stop_server, wait_for_url
from crops.serve.request_parsing import Limits
from crops.world.online import HttpRetriever


def _queries(world_dir: Path, n: int = 12) -> list[str]:
    lines = (world_dir / "tests" / "queries.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines[:n]]


@pytest.fixture(scope="module")
def queries(tiny_dir: Path) -> list[str]:
    return _queries(tiny_dir)


@pytest.fixture(scope="module")
def reference(tiny_index) -> DenseRetriever:
    return DenseRetriever.load(*tiny_index)


@pytest.fixture(scope="module")
def model(tiny_index) -> RetrievalModel:
    m = RetrievalModel(*tiny_index, limits=Limits(max_top_k=50, max_batch=16))
    m.load()
    return m


def _v2(queries: list[str], top_k=None, *, params=None, extra=(), outputs=None) -> InferRequest:
    inputs = [InferInput("query", [len(queries)], "BYTES", list(queries)), *extra]
    if top_k is not None:
        inputs.append(InferInput("top_k", [1], "INT64", [top_k]))
    return InferRequest(
        "crops", inputs, request_id="r1", parameters=params, request_outputs=outputs
    )


# ------------------------------------------------------------------ in-process predictor


def test_ready_only_after_load(tiny_index):
    m = RetrievalModel(*tiny_index)
    assert m.name == "crops" and not m.ready
    with pytest.raises(ModelNotReady):
        m.predict({"instances": [{"query": "cats", "top_k": 3}]})
    assert m.load() is True and m.ready


def test_load_refuses_an_index_of_another_model(tiny_index, tmp_path):
    model_dir, index_dir = tiny_index
    other = tmp_path / "other"
    build_dual_encoder("hash", seed=7).save(other)
    m = RetrievalModel(other, index_dir)
    with pytest.raises(ValueError, match="hashes differently"):
        m.load()
    assert not m.ready
    with pytest.raises(FileNotFoundError, match="not a CroPS index folder"):
        RetrievalModel(model_dir, tmp_path / "missing").load()


def test_v1_equals_dense_retriever(model, reference, queries):
    body = {"instances": [{"query": q, "top_k": 10} for q in queries]}
    preds = model.predict(body)["predictions"]
    scores, ids = reference.search(queries, 10)
    assert len(preds) == len(queries)
    for p, s, i in zip(preds, scores, ids, strict=True):
        assert p["video_ids"] == i.tolist()
        np.testing.assert_allclose(p["scores"], s, rtol=1e-5)
        assert p["scores"] == sorted(p["scores"], reverse=True)


def test_v1_mixed_top_k_and_string_instances(model, reference, queries):
    q = queries[:3]
    body = {"instances": [{"query": q[0], "top_k": 3}, q[1], {"query": q[2]}]}
    preds = model.predict(body)["predictions"]
    assert [len(p["video_ids"]) for p in preds] == [3, 50, 50]  # default 100 capped
    assert preds[0]["video_ids"] == reference.search([q[0]], 3)[1][0].tolist()
    assert preds[1]["video_ids"] == reference.search([q[1]], 50)[1][0].tolist()


def test_v1_top_k_over_index_size_returns_every_video(tiny_index, reference, queries):
    m = RetrievalModel(*tiny_index, limits=Limits(max_top_k=100_000))
    m.load()
    n = len(reference.index)
    pred = m.predict({"instances": [{"query": queries[0], "top_k": n + 50}]})["predictions"][0]
    assert len(pred["video_ids"]) == n == len(set(pred["video_ids"]))


@pytest.mark.parametrize("how", ["input", "parameter", "default"])
def test_v2_equals_dense_retriever(model, reference, queries, how):
    k = 7 if how != "default" else 50
    model.limits = Limits(max_top_k=50, max_batch=16, default_top_k=50)
    try:
        req = (
            _v2(queries, 7)
            if how == "input"
            else _v2(queries, params={"top_k": 7} if how == "parameter" else None)
        )
        rest, _ = model.predict(req).to_rest()
    finally:
        model.limits = Limits(max_top_k=50, max_batch=16)
    scores, ids = reference.search(queries, k)
    out = {o["name"]: o for o in rest["outputs"]}
    assert rest["id"] == "r1" and rest["model_name"] == "crops"
    assert out["video_ids"]["datatype"] == "INT64" and out["scores"]["datatype"] == "FP32"
    assert out["video_ids"]["shape"] == out["scores"]["shape"] == [len(queries), k]
    assert out["video_ids"]["data"] == ids.reshape(-1).tolist()
    np.testing.assert_allclose(out["scores"]["data"], scores.reshape(-1), rtol=1e-5)


def test_v2_requested_output_only(model, queries):
    rest, _ = model.predict(_v2(queries[:2], 3, outputs=[RequestedOutput("video_ids")])).to_rest()
    assert [o["name"] for o in rest["outputs"]] == ["video_ids"]


def test_unfilled_slots_are_json_safe(model, queries, monkeypatch):
    """An approximate index may find fewer than k: v1 drops the slots, v2 pads -1 / 0.0."""
    real = model.retriever.index.search

    def short(vectors, k):
        scores, ids = real(vectors, k)
        scores[:, -2:], ids[:, -2:] = -np.inf, -1
        return scores, ids

    monkeypatch.setattr(model.retriever.index, "search", short)
    pred = model.predict({"instances": [{"query": queries[0], "top_k": 5}]})["predictions"][0]
    assert len(pred["video_ids"]) == len(pred["scores"]) == 3
    rest, _ = model.predict(_v2(queries[:2], 5)).to_rest()
    out = {o["name"]: o["data"] for o in rest["outputs"]}
    assert out["video_ids"][3:5] == [-1, -1] and out["scores"][3:5] == [0.0, 0.0]
    assert all(np.isfinite(out["scores"]))


BIG = "x" * 1025
BAD_V1 = [
    (b"not json", "Content-Type: application/json"),
    ([{"query": "a"}], "must be a JSON object, got list"),
    ({}, 'missing field "instances"'),
    ({"instances": [], "extra": 1}, "unknown field 'extra'"),
    ({"instances": "cats"}, "instances must be a list"),
    ({"instances": []}, "instances is empty"),
    ({"instances": [{"query": "a"}] * 17}, "17 queries, over the batch limit of 16"),
    ({"instances": [{"query": "a"}, {"query": "   "}]}, "instances[1]: query is empty"),
    ({"instances": [{"query": ""}]}, "instances[0]: query is empty"),
    ({"instances": [{"query": BIG}]}, "instances[0]: query is 1025 bytes, over the 1024-byte"),
    ({"instances": [{"query": "é" * 513}]}, "query is 1026 bytes"),
    ({"instances": [{"query": 3}]}, "instances[0]: query must be a string, got int"),
    ({"instances": [{"top_k": 3}]}, 'instances[0]: missing field "query"'),
    ({"instances": [{"query": "a", "topk": 3}]}, "instances[0]: unknown field 'topk'"),
    ({"instances": [{"query": "a", "top_k": "3"}]}, "top_k must be an integer, got str"),
    ({"instances": [{"query": "a", "top_k": 2.0}]}, "top_k must be an integer, got float"),
    ({"instances": [{"query": "a", "top_k": True}]}, "top_k must be an integer, got bool"),
    ({"instances": [{"query": "a", "top_k": 0}]}, "top_k must be between 1 and 50, got 0"),
    ({"instances": ["a", {"query": "a", "top_k": 51}]}, "instances[1]: top_k must be between"),
    ({"instances": [None]}, "instances[0]: an instance must be an object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_V1)
def test_v1_bad_requests(model, body, message):
    with pytest.raises(InvalidInput) as err:
        model.predict(body)
    assert message in str(err.value)


BAD_V2 = [
    (lambda: _v2(["a"], extra=[InferInput("mode", [1], "BYTES", ["x"])]), "unknown input 'mode'"),
    (
        lambda: InferRequest("crops", [InferInput("top_k", [1], "INT64", [3])]),
        'missing input "query"',
    ),
    (lambda: _v2(["a"], extra=[InferInput("query", [1], "BYTES", ["b"])]), "given twice"),
    (lambda: InferRequest("crops", [InferInput("query", [1], "INT64", [1])]), "must be BYTES"),
    (
        lambda: InferRequest("crops", [InferInput("query", [3], "BYTES", ["a"])]),
        "does not fit shape",
    ),
    (
        lambda: InferRequest("crops", [InferInput("query", [1, 2], "BYTES", [["a", "b"]])]),
        "shape must be [n]",
    ),
    (lambda: _v2(["a", " "]), 'input "query"[1]: query is empty'),
    (lambda: _v2([BIG]), "over the 1024-byte limit"),
    (lambda: _v2(["a"] * 17), "over the batch limit of 16"),
    (
        lambda: InferRequest("crops", [InferInput("query", [1], "BYTES", [5])]),
        "must be a string, got int",
    ),
    (lambda: _v2(["a"], 51), "top_k must be between 1 and 50, got 51"),
    (lambda: _v2(["a"], params={"top_k": True}), "parameters: top_k must be an integer, got bool"),
    (lambda: _v2(["a"], 3, params={"top_k": 3}), "both as an input and as a parameter"),
    (lambda: _v2(["a"], extra=[InferInput("top_k", [1], "FP32", [3.0])]), "INT32 or INT64"),
    (lambda: _v2(["a"], extra=[InferInput("top_k", [2], "INT64", [3, 4])]), "shape must be [1]"),
    (lambda: _v2(["a"], extra=[InferInput("top_k", [1], "INT32", [2.5])]), "got float"),
    (lambda: _v2(["a"], 3, outputs=[RequestedOutput("ids")]), "unknown output 'ids'"),
]


@pytest.mark.parametrize(("make", "message"), BAD_V2)
def test_v2_bad_requests(model, make, message):
    with pytest.raises(InvalidInput) as err:
        model.predict(make())
    assert message in str(err.value)


# ------------------------------------------------------------------ the real server


def _ready(url: str) -> str:
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v1/models/crops").json() == {"name": "crops", "ready": True}
    return url


@pytest.fixture(scope="module")
def server(tiny_index, tmp_path_factory):
    model_dir, index_dir = tiny_index
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc = start_server(
        [
            "--model",
            model_dir,
            "--index",
            index_dir,
            "--port",
            "0",
            "--max-top-k",
            "50",
            "--max-batch",
            "16",
        ],
        log,
    )
    try:
        yield _ready(wait_for_url(proc, log, 60)), proc, log
    finally:
        stop_server(proc)


def test_server_answers_v1_and_v2_like_the_retriever(server, reference, queries):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.post(
            "/v1/models/crops:predict",
            json={"instances": [{"query": q, "top_k": 10} for q in queries]},
        )
        assert r.status_code == 200, r.text
        scores, ids = reference.search(queries, 10)
        preds = r.json()["predictions"]
        assert [p["video_ids"] for p in preds] == ids.tolist()
        np.testing.assert_allclose([p["scores"] for p in preds], scores, rtol=1e-5)
        v2 = {
            "id": "x",
            "inputs": [
                {"name": "query", "shape": [len(queries)], "datatype": "BYTES", "data": queries}
            ],
            "parameters": {"top_k": 10},
        }
        r = client.post("/v2/models/crops/infer", json=v2)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["video_ids"]["shape"] == [len(queries), 10]
        assert out["video_ids"]["data"] == ids.reshape(-1).tolist()
        meta = client.get("/v2/models/crops").json()
        assert [i["name"] for i in meta["inputs"]] == ["query", "top_k"]


MALFORMED = [
    (
        "/v1/models/crops:predict",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "Unrecognized request format",
    ),
    (
        "/v1/models/crops:predict",
        {"content": b"cats", "headers": {"content-type": "text/plain"}},
        400,
        "Content-Type: application/json",
    ),
    (
        "/v1/models/crops:predict",
        {"json": {"instances": [{"query": " "}]}},
        400,
        "instances[0]: query is empty",
    ),
    (
        "/v1/models/crops:predict",
        {"json": {"instances": [{"query": "a", "top_k": 1000}]}},
        400,
        "between 1 and 50",
    ),
    ("/v1/models/crops:predict", {"json": {"instances": ["a"] * 17}}, 400, "batch limit of 16"),
    ("/v1/models/crops:predict", {"json": {"queries": ["a"]}}, 400, 'missing field "instances"'),
    ("/v1/models/crops:predict", {"json": [1, 2]}, 400, "got list"),
    ("/v1/models/nope:predict", {"json": {"instances": ["a"]}}, 404, "nope"),
    (
        "/v2/models/crops/infer",
        {"json": {"inputs": [{"name": "q", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}},
        400,
        "unknown input 'q'",
    ),
    (
        "/v2/models/crops/infer",
        {
            "json": {
                "inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "parameters": {"top_k": 0},
            }
        },
        400,
        "between 1 and 50",
    ),
    (
        "/v2/models/crops/infer",
        {"content": b"garbage", "headers": {"content-type": "application/json"}},
        422,
        "JSON decode error",
    ),
]


def test_server_refuses_malformed_requests_and_keeps_serving(server):
    url, proc, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        for path, kwargs, status, message in MALFORMED:
            r = client.post(path, **kwargs)
            assert r.status_code == status, (path, kwargs, r.text)
            body = r.json()
            assert message in str(body.get("error", body)), (path, kwargs, r.text)
            ok = client.post("/v1/models/crops:predict", json={"instances": ["cats"]})
            assert ok.status_code == 200 and len(ok.json()["predictions"][0]["video_ids"]) == 50
    assert proc.poll() is None


def test_server_headers_without_request_log(server, tiny_index):
    """x-request-id (echoed or new) and x-model-hash on answers and errors, logging off."""
    from crops.index.store import model_hash

    url, _, _ = server
    want = model_hash(tiny_index[0])
    with httpx.Client(base_url=url, timeout=10) as client:
        ok = client.post(
            "/v1/models/crops:predict", json={"instances": ["a"]}, headers={"x-request-id": "r-9"}
        )
        bad = client.post("/v1/models/crops:predict", json={"instances": []})
        missing = client.post("/v1/models/nope:predict", json={"instances": ["a"]})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "r-9"
    assert bad.status_code == 400 and missing.status_code == 404
    for r in (ok, bad, missing):
        assert r.headers["x-model-hash"] == want
    assert len(bad.headers["x-request-id"]) == 32 != len(missing.headers["x-request-id"]) - 1
    assert bad.headers["x-request-id"] != missing.headers["x-request-id"]


def test_http_retriever_against_the_server(server, reference, queries):
    url, _, _ = server
    remote = HttpRetriever(url, timeout_s=10)
    got = remote(queries, 20)
    assert remote.stats.errors == 0 and remote.stats.requests == len(queries)
    assert [list(r) for r in got] == [reference([q], 20)[0] for q in queries]


def test_serve_refuses_a_port_in_use(run, tiny_index):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        code, _, err = run(
            "serve", "--model", tiny_index[0], "--index", tiny_index[1], "--port", port
        )
    finally:
        holder.close()
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in err


def test_serve_refuses_bad_folders(run, tiny_index, tmp_path):
    model_dir, index_dir = tiny_index
    code, _, err = run("serve", "--model", tmp_path / "none", "--index", index_dir, "--port", 0)
    assert code == 2 and "--model" in err and "not a directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run("serve", "--model", model_dir, "--index", tmp_path / "empty", "--port", 0)
    assert code == 2 and "cannot load the model and index" in err and "manifest.json" in err
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    build_dual_encoder("hash", seed=3).save(other)
    code, _, err = run("serve", "--model", other, "--index", index_dir, "--port", 0)
    assert code == 2 and "hashes differently" in err
    code, _, err = run("serve", "--model", model_dir, "--index", index_dir, "--max-top-k", 0)
    assert code == 2 and "max_top_k" in err


def test_bind_socket_reports_the_host_and_port():
    from crops.serve.server import PortInUse, ServeError, bind_socket, local_url

    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_socket("127.0.0.1", port)
    finally:
        holder.close()
    try:  # TEST-NET-2, not an address of this machine (unless someone assigned it)
        bind_socket("198.51.100.77", 0).close()
    except ServeError as exc:
        assert "cannot listen on 198.51.100.77:0" in str(exc)
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    assert local_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert local_url("::", 80) == "http://[::1]:80"
