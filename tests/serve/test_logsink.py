"""`crops logsink`: KServe payload-logging CloudEvents in, request_log files out."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from crops.abtest.layout import REQUESTS, list_logs
from crops.serve.cloudevents import REQUEST_TYPE, RESPONSE_TYPE, parse_binary
from crops.serve.logsink import NO_RESPONSE, LogSink, create_app
from crops.serve.reqlog import read_request_log

# One request/response pair as KServe's agent sends it (binary content mode), shaped after
# kserve/kserve pkg/logger/worker.go `sendHttpCloudEvent` (id, type, source, the extensions
# inferenceservicename, namespace, component, endpoint, and `metadata`: the JSON map of the
# `metadataHeaders`, canonical header names to value lists, handler_test.go
# `TestLoggerWithMetadata`) and the message dumper's print of such a pair in
# docs/samples/logger/basic/README.md (source http://localhost:9081/ there; the pod webhook
# passes the pod name as --source-uri). The payloads are crops serve's v1 protocol.
KSERVE_REQUEST = {
    "headers": {
        "ce-specversion": "1.0",
        "ce-type": "org.kubeflow.serving.inference.request",
        "ce-source": "crops-predictor-6d5f7c9b8-x2x7q",
        "ce-id": "0009174a-24a8-4603-b098-09c8799950e9",
        "ce-time": "2026-01-05T00:23:26.0789529Z",
        "ce-inferenceservicename": "crops",
        "ce-namespace": "crops",
        "ce-component": "predictor",
        "ce-endpoint": "",
        "ce-metadata": '{"X-Request-Id":["1234567"],"X-User-Id":["42"]}',
        "ce-traceparent": "00-90bdf848647d50283394155d2df58f19-84dacdfdf07cadfc-00",
        "content-type": "application/json",
    },
    "body": b'{"instances": [{"query": "cat videos", "top_k": 3}]}',
}
KSERVE_RESPONSE = {
    "headers": {
        **KSERVE_REQUEST["headers"],
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-time": "2026-01-05T00:23:26.080736102Z",
        "ce-traceparent": "00-55de1514e1d23ee17eb50dda6167bb8c-b6c6e0f6dd8f741d-00",
    },
    "body": b'{"predictions": [{"video_ids": [7, 3, 9], "scores": [0.9, 0.5, 0.25]}]}',
}


def _headers(
    ce_id: str,
    kind: str,
    *,
    request_id: str | None = None,
    user_id: str | None = None,
    source: str = "crops-predictor-abc-1",
    component: str = "predictor",
    endpoint: str = "",
    ts: str | None = None,
) -> dict[str, str]:
    meta: dict[str, list[str]] = {}
    if request_id is not None:
        meta["X-Request-Id"] = [request_id]
    if user_id is not None:
        meta["X-User-Id"] = [user_id]
    headers = {
        "ce-specversion": "1.0",
        "ce-id": ce_id,
        "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "ce-source": source,
        "ce-inferenceservicename": "crops",
        "ce-namespace": "ns",
        "ce-component": component,
        "ce-endpoint": endpoint,
        "ce-metadata": json.dumps(meta),
        "content-type": "application/json",
    }
    if ts is not None:
        headers["ce-time"] = ts
    return headers


def _v1_request(*queries: str, top_k: int = 2) -> bytes:
    return json.dumps({"instances": [{"query": q, "top_k": top_k} for q in queries]}).encode()


def _v1_response(*rows: tuple[list[int], list[float]]) -> bytes:
    return json.dumps({"predictions": [{"video_ids": v, "scores": s} for v, s in rows]}).encode()


@contextmanager
def running_sink(out: Path, **kwargs) -> Iterator[tuple[str, LogSink]]:
    """The sink's ASGI app under uvicorn on a free port, in a thread; stopping it (lifespan
    shutdown) writes the waiting requests and flushes the files."""
    import uvicorn

    sink = LogSink(out, flush_s=0.2, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(sink), lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the sink did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sink
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert sink.closed


def _metrics(client: httpx.Client, url: str) -> dict[str, float]:
    text = client.get(f"{url}/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _rows(directory: Path) -> dict[str, dict]:
    valid, quarantine, _ = read_request_log(directory)
    assert quarantine.height == 0, quarantine
    return {(r["request_id"], r["instance"]): r for r in valid.to_dicts()}


# ----------------------------------------------------------------------------- pairing


def test_pairs_in_either_order_land_in_the_layout(tmp_path):
    logs = tmp_path / "LOGS"
    out = logs / "request_log"
    with running_sink(out) as (url, sink), httpx.Client(timeout=10) as client:
        # the captured KServe shape, request first
        for event in (KSERVE_REQUEST, KSERVE_RESPONSE):
            r = client.post(f"{url}/", headers=event["headers"], content=event["body"])
            assert r.status_code == 200, r.text
        assert r.json() == {"accepted": "response", "id": KSERVE_REQUEST["headers"]["ce-id"],
                            "paired": True}  # fmt: skip
        # response first (the agent's workers race), two instances
        r = client.post(
            f"{url}/",
            headers=_headers("e2", "response", request_id="1001", user_id="7"),
            content=_v1_response(([1, 2], [0.5, 0.25]), ([5], [0.125])),
        )
        assert r.json()["paired"] is False
        r = client.post(
            f"{url}/",
            headers=_headers(
                "e2", "request", request_id="1001", user_id="7", ts="2026-01-05T12:00:00+00:00"
            ),
            content=_v1_request("dogs", "surfing", top_k=2),
        )
        assert r.json()["paired"] is True
        # no forwarded headers at all: the ce-id is the request id, no user
        client.post(f"{url}/", headers=_headers("e3", "request"), content=_v1_request("x"))
        client.post(f"{url}/", headers=_headers("e3", "response"), content=_v1_response(([4], [1])))
        m = _metrics(client, url)
        assert m['crops_logsink_pairs_total{result="paired"}'] == 3
        assert m['crops_logsink_events_total{outcome="request"}'] == 3
        assert m['crops_logsink_events_total{outcome="response"}'] == 3
        assert m["crops_logsink_pending"] == 0
        assert not sink.pending
    rows = _rows(out)
    assert set(rows) == {("1234567", 0), ("1001", 0), ("1001", 1), ("e3", 0)}
    first = rows[("1234567", 0)]
    assert first["user_id"] == 42 and first["query"] == "cat videos" and first["top_k"] == 3
    assert first["video_ids"] == [7, 3, 9] and first["scores"] == pytest.approx([0.9, 0.5, 0.25])
    assert first["status"] == 200 and first["protocol"] == "v1" and first["error"] is None
    assert first["ts"] == datetime(2026, 1, 5, 0, 23, 26, 78000, tzinfo=UTC)  # ce-time, ms
    assert first["model_hash"] == "isvc:crops/crops/predictor"
    assert first["latency_ms"] >= 0
    assert rows[("1001", 1)]["query"] == "surfing" and rows[("1001", 1)]["video_ids"] == [5]
    assert rows[("1001", 0)]["user_id"] == 7 and rows[("1001", 0)]["latency_ms"] == 0.0
    assert rows[("e3", 0)]["user_id"] is None
    # e3 has no ce-time: its arrival (today) is its ts, and its partition
    prefix = list_logs(logs)
    days = {f.path.split("/")[1] for f in prefix.files[REQUESTS]}
    today = datetime.now(UTC).date().isoformat()
    assert days == {"day=2026-01-05", f"day={today}"}
    assert all(f.path.startswith("request_log/day=") for f in prefix.files[REQUESTS])


def test_unanswered_request_is_a_504_row_and_orphans_are_counted(tmp_path):
    out = tmp_path / "request_log"
    with running_sink(out, pair_timeout_s=0.3) as (url, _), httpx.Client(timeout=10) as c:
        c.post(
            f"{url}/",
            headers=_headers("lost", "request", request_id="77", user_id="3"),
            content=_v1_request("kittens"),
        )
        c.post(f"{url}/", headers=_headers("orphan", "response"), content=_v1_response(([1], [1])))
        deadline = time.monotonic() + 10
        while _metrics(c, url)['crops_logsink_pairs_total{result="no_response"}'] < 1:
            assert time.monotonic() < deadline, "the timeout never fired"
            time.sleep(0.05)
        m = _metrics(c, url)
        assert m['crops_logsink_pairs_total{result="orphan_response"}'] == 1
        assert m["crops_logsink_pending"] == 0
        # the response after the timeout finds nothing to pair with
        c.post(
            f"{url}/",
            headers=_headers("lost", "response", request_id="77"),
            content=_v1_response(([1], [1])),
        )
        # still waiting when the sink stops: written as unanswered too
        c.post(f"{url}/", headers=_headers("late", "request", request_id="78"), content=b"{}")
        c.post(
            f"{url}/",
            headers=_headers("stop", "request", request_id="79"),
            content=_v1_request("a"),
        )
    rows = _rows(out)
    lost = rows[("77", 0)]
    assert lost["status"] == 504 and lost["error"] == NO_RESPONSE
    assert lost["query"] == "kittens" and lost["video_ids"] is None and lost["user_id"] == 3
    assert lost["latency_ms"] >= 300
    assert rows[("79", 0)]["status"] == 504
    assert ("78", 0) not in rows  # `{}` is not an inference call: acknowledged, not logged
    assert len(rows) == 2


# ----------------------------------------------------------------------------- bad input


def test_hostile_inputs_are_clear_4xx_and_counted(tmp_path):
    out = tmp_path / "request_log"
    good = _headers("h1", "request", request_id="5")
    cases = [
        ({k: v for k, v in good.items() if k != "ce-id"}, b"{}", 400, "missing_ce_id", "id"),
        ({k: v for k, v in good.items() if k != "ce-type"}, b"{}", 400, "missing_ce_type", "type"),
        ({**good, "ce-type": "com.example.other"}, b"{}", 400, "unknown_ce_type", "com.example"),
        ({**good, "ce-specversion": "0.3"}, b"{}", 400, "bad_specversion", "0.3"),
        (good, b"{not json", 400, "not_json", "body: not JSON"),
        ({**good, "ce-time": "yesterday"}, b"{}", 400, "bad_ce_time", "ce-time"),
        ({**good, "ce-metadata": "[1, 2]"}, b"{}", 400, "bad_metadata", "ce-metadata"),
        (
            {**good, "content-type": "application/cloudevents-batch+json"},
            b"[]",
            400,
            "unsupported_content_type",
            "batched",
        ),
        (good, b" " * (2 << 20), 413, "too_large", "1048576-byte limit"),
    ]
    with running_sink(out) as (url, _), httpx.Client(timeout=10) as client:
        for headers, body, status, outcome, words in cases:
            r = client.post(f"{url}/", headers=headers, content=body)
            assert r.status_code == status, (outcome, r.text)
            assert r.json()["reason"] == outcome and words in r.json()["error"], r.json()
        # a body sent in chunks, without a length, is cut at the limit too
        r = client.post(f"{url}/", headers=good, content=iter([b" " * (1 << 19)] * 3))
        assert r.status_code == 413
        r = client.get(f"{url}/")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert "POSTed" in r.json()["error"]
        assert client.post(f"{url}/metrics").status_code == 405
        r = client.post(f"{url}/v1/models/crops:predict", headers=good, content=b"{}")
        assert r.status_code == 404 and "POST events to /" in r.json()["error"]
        # a second request event for a pair already waiting
        assert client.post(f"{url}/", headers=good, content=_v1_request("q")).status_code == 200
        r = client.post(f"{url}/", headers=good, content=_v1_request("q"))
        assert r.status_code == 409 and "already waiting" in r.json()["error"]
        assert client.get(f"{url}/healthz").status_code == 200
        m = _metrics(client, url)
    for _, _, _, outcome, _ in cases:
        want = 2 if outcome == "too_large" else 1
        assert m[f'crops_logsink_events_total{{outcome="{outcome}"}}'] == want, outcome
    assert m['crops_logsink_events_total{outcome="method_not_allowed"}'] == 2
    assert m['crops_logsink_events_total{outcome="not_found"}'] == 1
    assert m['crops_logsink_events_total{outcome="duplicate"}'] == 1
    assert m['crops_logsink_events_total{outcome="internal_error"}'] == 0


def test_bad_user_id_and_bad_answers_keep_the_row_with_the_reason(tmp_path):
    out = tmp_path / "request_log"
    with running_sink(out) as (url, _), httpx.Client(timeout=10) as client:
        pairs = [
            ("u1", "91", "not-a-number", _v1_request("q"), _v1_response(([1], [0.5]))),
            # one prediction for two instances: the answer is unusable
            ("u2", "92", "1", _v1_request("a", "b"), _v1_response(([1], [0.5]))),
            # a request body that is an inference call but malformed
            ("u3", "93", "1", b'{"instances": [{"query": 5}]}', _v1_response(([1], [0.5]))),
        ]
        for ce_id, rid, uid, req, resp in pairs:
            for kind, body in (("request", req), ("response", resp)):
                h = _headers(ce_id, kind, request_id=rid, user_id=uid)
                assert client.post(f"{url}/", headers=h, content=body).status_code == 200
        m = _metrics(client, url)
    assert m["crops_logsink_user_id_invalid_total"] == 1
    valid, quarantine, _ = read_request_log(out)
    rows = {(r["request_id"], r["instance"]): r for r in valid.to_dicts()}
    bad_user = rows[("91", 0)]
    assert bad_user["user_id"] is None and bad_user["status"] == 200
    assert bad_user["video_ids"] == [1] and "X-User-Id must be an integer" in bad_user["error"]
    assert (
        rows[("92", 0)]["status"] == 502
        and "1 predictions for 2 instances" in (rows[("92", 0)]["error"])
    )
    assert rows[("93", 0)]["status"] == 502 and "instances[0].query" in rows[("93", 0)]["error"]
    assert quarantine.height == 0


# ----------------------------------------------------------------------------- model hashes


def test_model_hash_from_body_map_or_predictor_name(tmp_path):
    now = datetime.now(UTC)

    def pair(sink, ce_id, resp_body=None, **kw):
        req = parse_binary(_headers(ce_id, "request", **kw), _v1_request("q"), now, 1.0)
        body = resp_body or _v1_response(([1], [0.5]))
        resp = parse_binary(_headers(ce_id, "response", **kw), body, now, 1.5)
        return sink.record(req, resp)

    sink = LogSink(
        tmp_path / "a",
        model_hashes={"predictor": "h-default", "crops-candidate-predictor": "h-candidate"},
    )
    try:
        assert pair(sink, "1").model_hash == "h-default"
        # a pod-name prefix wins over nothing else matching; the longest prefix first
        rec = pair(sink, "2", source="crops-candidate-predictor-5c-z", component="canary")
        assert rec.model_hash == "h-candidate" and rec.latency_ms == 500.0
        body = json.dumps({"predictions": [{"video_ids": [1], "scores": [1.0]}],
                           "model_hash": "h-body"}).encode()  # fmt: skip
        assert pair(sink, "3", resp_body=body).model_hash == "h-body"
    finally:
        sink.close()
    bare = LogSink(tmp_path / "b")
    try:
        assert pair(bare, "4").model_hash == "isvc:ns/crops/predictor"
        assert pair(bare, "5", endpoint="canary").model_hash == "isvc:ns/crops/predictor/canary"
    finally:
        bare.close()


def test_structured_mode_and_v2_bodies(tmp_path):
    out = tmp_path / "request_log"
    envelope = {
        "specversion": "1.0",
        "id": "s1",
        "source": "crops-predictor-1",
        "type": REQUEST_TYPE,
        "time": "2026-01-06T08:00:00Z",
        "inferenceservicename": "crops",
        "namespace": "ns",
        "component": "predictor",
        "metadata": json.dumps({"X-Request-Id": ["501"], "X-User-Id": ["9"]}),
        "datacontenttype": "application/json",
        "data": {
            "inputs": [
                {"name": "query", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
                {"name": "top_k", "datatype": "INT64", "shape": [1], "data": [2]},
            ]
        },
    }
    answer = {
        **envelope,
        "type": RESPONSE_TYPE,
        "data": {
            "outputs": [
                {"name": "video_ids", "datatype": "INT64", "shape": [2, 2], "data": [4, 5, 6, -1]},
                {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [1, 0.5, 2, 0]},
            ]
        },
    }
    ctype = {"content-type": "application/cloudevents+json"}
    with running_sink(out) as (url, _), httpx.Client(timeout=10) as client:
        for event in (envelope, answer):
            r = client.post(f"{url}/", headers=ctype, content=json.dumps(event).encode())
            assert r.status_code == 200, r.text
        r = client.post(f"{url}/", headers=ctype, content=json.dumps({"type": REQUEST_TYPE}))
        assert r.status_code == 400 and r.json()["reason"] == "missing_ce_id"
    rows = _rows(out)
    assert rows[("501", 0)]["video_ids"] == [4, 5] and rows[("501", 0)]["top_k"] == 2
    assert rows[("501", 1)]["video_ids"] == [6] and rows[("501", 1)]["scores"] == [2.0]
    assert rows[("501", 0)]["protocol"] == "v2" and rows[("501", 0)]["user_id"] == 9


# ----------------------------------------------------------------------------- the command


def test_cli_serves_and_flushes_on_sigterm(tmp_path, run):
    code, _, err = run("logsink", "--out", tmp_path / "x", "--model-hash", "nohash")
    assert code == 2 and "expected KEY=HASH" in err
    code, _, err = run("logsink", "--out", tmp_path / "x", "--pair-timeout-s", "0")
    assert code == 2 and "--pair-timeout-s" in err

    out = tmp_path / "LOGS" / "request_log"
    log = tmp_path / "sink.log"
    cmd = [sys.executable, "-m", "crops.cli", "logsink", "--out", str(out), "--port", "0"]
    cmd += ["--host", "127.0.0.1", "--model-hash", "predictor=abc123"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"logsink at (http://\S+):", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = found.group(1)
        with httpx.Client(timeout=10) as client:
            for kind, body in (("request", _v1_request("q")), ("response", _v1_response(([], [])))):
                h = _headers("c1", kind, request_id="11")
                assert client.post(f"{url}/", headers=h, content=body).status_code == 200
            h = _headers("c2", "request", request_id="12")
            assert client.post(f"{url}/", headers=h, content=_v1_request("r")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = _rows(out)
    assert rows[("11", 0)]["status"] == 200 and rows[("11", 0)]["model_hash"] == "abc123"
    assert rows[("11", 0)]["video_ids"] == []
    assert rows[("12", 0)]["status"] == 504 and rows[("12", 0)]["error"] == NO_RESPONSE
    assert list_logs(tmp_path / "LOGS").files[REQUESTS]


@pytest.mark.parametrize("body", [b"", b"[]", b'"text"'])
def test_non_inference_calls_are_acknowledged_not_logged(tmp_path, body):
    sink = LogSink(tmp_path / "r")
    now = datetime.now(UTC)
    try:
        for kind in ("request", "response"):
            sink.accept(parse_binary(_headers("n", kind), body, now, 0.0))
        assert not sink.pending and sink.events["ignored"] == 2
    finally:
        sink.close()
    assert sink.log.written == 0


def test_waiting_requests_are_bounded(tmp_path):
    """Beyond max_pending events (or bytes), the oldest waiting request is written as
    unanswered, so a flood of requests without answers cannot exhaust the sink's memory."""
    sink = LogSink(tmp_path / "r", max_pending=2)
    now = datetime.now(UTC)
    try:
        for i in range(3):
            h = _headers(f"b{i}", "request", request_id=str(i))
            sink.accept(parse_binary(h, _v1_request("q"), now, float(i)))
        assert [k[1] for k in sink.pending] == ["b1", "b2"] and sink.pairs["evicted"] == 1
        assert sink.pending_bytes == 2 * len(_v1_request("q"))
        h = _headers("b2", "response", request_id="2")
        sink.accept(parse_binary(h, _v1_response(([1], [1])), now, 3.0))
        assert sink.pairs["paired"] == 1 and sink.pending_bytes == len(_v1_request("q"))
    finally:
        sink.close()
    assert sink.pending_bytes == 0
    rows = _rows(tmp_path / "r")
    assert rows[("0", 0)]["status"] == 504 and "too many waiting" in rows[("0", 0)]["error"]
    assert rows[("1", 0)]["status"] == 504 and rows[("1", 0)]["error"] == NO_RESPONSE
    assert rows[("2", 0)]["status"] == 200
