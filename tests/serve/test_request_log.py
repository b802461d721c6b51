"""Request ids, model-hash headers and the request log of `crops serve` (issue 13, point 1)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crops.index.store import model_hash
from crops.schema import REQUEST_LOG, check_rows, conform
from crops.serve.process import start_server, stop_server, wait_for_url
from crops.serve.reqlog import Record, RequestLog, RequestLogMiddleware, read_request_log


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("day=*/requests-*.parquet"))


# ------------------------------------------------------------------ the real server


def test_server_logs_every_request_with_ids_and_model_hash(tiny_index, tmp_path):
    model_dir, index_dir = tiny_index
    want_hash = model_hash(model_dir)
    log_dir = tmp_path / "reqlog"
    proc = start_server(
        ["--model", model_dir, "--index", index_dir, "--port", "0", "--max-top-k", "50"]
        + ["--request-log", log_dir],
        tmp_path / "server.log",
    )
    sent: dict[str, int] = {}  # request id -> status
    try:
        url = wait_for_url(proc, tmp_path / "server.log", 60)
        predict = f"{url}/v1/models/crops:predict"
        with httpx.Client(timeout=10) as client:
            # the caller's id is echoed, with the model hash; the user id is logged
            r = client.post(
                predict,
                json={"instances": [{"query": "cat videos", "top_k": 5}]},
                headers={"x-request-id": "caller-1", "x-user-id": "42"},
            )
            assert r.status_code == 200
            assert r.headers["x-request-id"] == "caller-1"
            assert r.headers["x-model-hash"] == want_hash
            # and in the body, which is what KServe's payload logger forwards to the sink
            assert r.json()["model_hash"] == want_hash
            sent["caller-1"] = 200
            first = r.json()["predictions"][0]
            # no id sent: a new uuid4 hex
            r = client.post(predict, json={"instances": ["dogs"]})
            rid = r.headers["x-request-id"]
            assert r.status_code == 200 and len(rid) == 32 and int(rid, 16) >= 0
            sent[rid] = 200
            # a 400 carries both headers too, given id or not
            r = client.post(
                predict, json={"instances": [{"query": " "}]}, headers={"x-request-id": "bad-1"}
            )
            assert r.status_code == 400
            assert r.headers["x-request-id"] == "bad-1" and r.headers["x-model-hash"] == want_hash
            sent["bad-1"] = 400
            r = client.post(predict, content=b"{no", headers={"content-type": "application/json"})
            assert r.status_code == 400 and len(r.headers["x-request-id"]) == 32
            assert r.headers["x-model-hash"] == want_hash
            sent[r.headers["x-request-id"]] = 400
            # x-user-id must be an integer
            r = client.post(predict, json={"instances": ["a"]}, headers={"x-user-id": "bob"})
            assert r.status_code == 400 and "x-user-id must be an integer" in r.text
            sent[r.headers["x-request-id"]] = 400
            # v2: the response id is the request id (the body's id when given)
            v2 = {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
            r = client.post(f"{url}/v2/models/crops/infer", json={**v2, "id": "body-7"})
            assert r.headers["x-request-id"] == "body-7" == r.json()["id"]
            sent["body-7"] = 200
            r = client.post(f"{url}/v2/models/crops/infer", json=v2)
            assert r.headers["x-request-id"] == r.json()["id"]
            sent[r.json()["id"]] = 200
            # not an inference request: headers, but no log row
            r = client.get(f"{url}/v2/health/ready")
            assert r.status_code == 200 and "x-request-id" in r.headers
        # a concurrent burst: nothing lost
        burst = [f"burst-{i}" for i in range(120)]

        def one(rid: str) -> int:
            with httpx.Client(timeout=20) as c:
                resp = c.post(
                    predict, json={"instances": [f"query {rid}"]}, headers={"x-request-id": rid}
                )
                assert resp.headers["x-request-id"] == rid
                return resp.status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, burst))
        assert statuses == [200] * len(burst)
        sent.update(dict.fromkeys(burst, 200))
    finally:
        stop_server(proc)  # SIGTERM: the log is flushed before the process ends

    files = _files(log_dir)
    assert files and all(f.parent.name == f"day={datetime.now(UTC):%Y-%m-%d}" for f in files)
    for f in files:  # every file holds exactly the contract's columns and types
        assert pq.read_schema(f).remove_metadata().equals(REQUEST_LOG)
    valid, quarantined, report = read_request_log(log_dir)
    assert report.quarantined == 0 and quarantined.height == 0
    assert valid.height == len(sent)  # one query per request: one row each, none lost
    assert dict(zip(valid["request_id"], valid["status"], strict=True)) == sent
    assert (valid["model_hash"] == want_hash).all()
    assert (valid["latency_ms"] > 0).all()
    row = valid.filter(valid["request_id"] == "caller-1").to_dicts()[0]
    assert row["user_id"] == 42 and row["query"] == "cat videos" and row["top_k"] == 5
    assert row["video_ids"] == first["video_ids"]
    assert row["scores"] == pytest.approx(first["scores"], rel=1e-6)
    bad = valid.filter(valid["request_id"] == "bad-1").to_dicts()[0]
    assert bad["query"] is None and bad["video_ids"] is None
    assert "query is empty" in bad["error"]
    assert valid.filter(valid["user_id"].is_not_null()).height == 1


# ------------------------------------------------------------------ the writer, in-process


def _record(i: int, queries=("q",), status: int = 200) -> Record:
    rec = Record(request_id=f"r{i}", ts=datetime.now(UTC), protocol="v1", status=status)
    rec.queries, rec.top_ks = list(queries), [3] * len(queries)
    rec.results = [([1, 2, 3], [0.9, 0.8, 0.7]) for _ in queries]
    rec.latency_ms = 1.5
    return rec


def test_writer_batches_by_rows_and_flushes_on_close(tmp_path):
    log = RequestLog(tmp_path, "h" * 64, flush_rows=10, flush_s=60)
    for i in range(25):
        assert log.submit(_record(i, queries=("a", "b") if i == 0 else ("a",)))
    log.close()
    assert log.written == 26 and log.dropped == 0 and log.files == 3  # 10 + 10 + 6 at close
    valid, _, report = read_request_log(tmp_path)
    assert report.rows == 26 and report.quarantined == 0
    assert valid.filter(valid["request_id"] == "r0")["instance"].to_list() == [0, 1]
    assert not log.submit(_record(99))  # closed: refused and counted
    assert log.dropped == 1


def test_writer_flushes_on_time(tmp_path):
    log = RequestLog(tmp_path, "h" * 64, flush_rows=1000, flush_s=0.2)
    log.submit(_record(1))
    deadline = time.monotonic() + 5
    while not _files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_files(tmp_path)) == 1  # written before close
    log.close()


def test_fault_injection_full_queue_counts_drops(tmp_path, caplog):
    """Fault injection: the writer thread is stalled, so a tiny queue fills; the overflow is
    counted (attribute, Prometheus counter) and logged, never blocking the caller."""
    from prometheus_client import REGISTRY

    release = threading.Event()

    class StalledLog(RequestLog):
        def _run(self) -> None:
            release.wait(10)
            super()._run()

    before = REGISTRY.get_sample_value("crops_request_log_dropped_total") or 0.0
    log = StalledLog(tmp_path, "h" * 64, max_queue=2, flush_rows=100, flush_s=60)
    with caplog.at_level(logging.WARNING, logger="crops.serve.reqlog"):
        accepted = [log.submit(_record(i)) for i in range(5)]
    assert accepted == [True, True, False, False, False]
    assert log.dropped == 3
    assert REGISTRY.get_sample_value("crops_request_log_dropped_total") == before + 3
    assert "1 request(s) dropped" in caplog.text
    release.set()
    log.close()
    assert log.written == 2
    assert read_request_log(tmp_path)[2].rows == 2


def test_contract_refuses_bad_rows(tmp_path):
    rec = _record(1)
    rows = rec.rows("h" * 64) + rec.rows("h" * 64)  # a duplicate (request_id, instance)
    rows.append({**_record(2).rows("h")[0], "status": 999, "scores": [0.1]})
    table, flags = conform(pa.Table.from_pylist(rows, schema=REQUEST_LOG), "request_log", "x")
    _, quarantined, report = check_rows("request_log", table, "x", flags=flags)
    assert report.quarantined == 2
    assert "duplicate (request_id, instance)" in report.reasons
    assert "status not an HTTP code" in report.reasons
    assert "video_ids and scores differ in length" in report.reasons


def test_unhandled_error_answers_500_with_headers_and_is_logged(tmp_path):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    log = RequestLog(tmp_path, "h" * 64, flush_s=60)
    app = RequestLogMiddleware(broken, "h" * 64, log)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(
                "/v1/models/crops:predict", json={}, headers={"x-request-id": "e1"}
            )

    r = asyncio.run(call())
    assert r.status_code == 500 and "boom" in r.json()["error"]
    assert r.headers["x-request-id"] == "e1" and r.headers["x-model-hash"] == "h" * 64
    log.close()
    valid, _, _ = read_request_log(tmp_path)
    assert valid.to_dicts()[0]["status"] == 500 and "boom" in valid.to_dicts()[0]["error"]
