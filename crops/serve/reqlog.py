"""Request ids, model-hash headers and the request log of `crops serve`.

`RequestLogMiddleware` (pure ASGI, outermost on kserve's app) gives every answer, errors
included, an ``x-request-id`` header (the caller's, else a new uuid4 hex) and an
``x-model-hash`` header. While a request runs, its `Record` is in a context variable; the
predictor fills in the queries and results (`current()`), the middleware the status and
latency. With a `RequestLog` (``crops serve --request-log DIR``) each finished request is queued
as rows of the ``request_log`` contract (`crops.schema.REQUEST_LOG`); a background thread
writes them in batches to ``DIR/day=YYYY-MM-DD/requests-<pid>-<n>.parquet`` (every
``flush_rows`` rows, every ``flush_s`` seconds and on shutdown). The request path only does a
``put_nowait``: a full queue drops the request's rows, counts them (``dropped``, the Prometheus
counter ``crops_request_log_dropped_total``) and logs a line, never blocking or failing the
answer.

A `Record` may also be built outside a live request (`crops logsink` builds one per KServe
request/response pair): it then carries its own ``ts``, ``status``, ``latency_ms`` and, when
set, its own ``model_hash``, which wins over the log's.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crops.schema import REQUEST_LOG

logger = logging.getLogger("crops.serve.reqlog")

REQUEST_ID = "x-request-id"
MODEL_HASH = "x-model-hash"
USER_ID = "x-user-id"
MAX_REQUEST_ID = 128  # a longer caller id is replaced by a new one (headers are not storage)

_current: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "crops_request", default=None
)


def current() -> Record | None:
    """The request being answered (None outside the server, e.g. a predictor called in-process)."""
    return _current.get()


@dataclass
class Record:
    """What the log keeps of one request; the predictor sets queries and results."""

    request_id: str
    ts: datetime
    user_id: int | None = None
    user_id_error: str | None = None
    protocol: str | None = None
    queries: list[str] | None = None
    top_ks: list[int] | None = None
    results: list[tuple[Any, Any]] | None = None  # per query (video ids, scores), arrays
    generated_id: bool = False
    status: int = 0
    latency_ms: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    model_hash: str | None = None  # this request's model, when not the log's (crops logsink)

    def rows(self, model_hash: str) -> list[dict[str, Any]]:
        base = {
            "request_id": self.request_id,
            "ts": self.ts,
            "user_id": self.user_id,
            "model_hash": self.model_hash or model_hash,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "protocol": self.protocol,
            "error": self.error,
        }
        ok = 200 <= self.status < 300
        if not self.queries:
            return [{**base, "instance": 0}]
        out = []
        for i, q in enumerate(self.queries):
            row = {**base, "instance": i, "query": q}
            if self.top_ks is not None:
                row["top_k"] = self.top_ks[i]
            if ok and self.results is not None:
                row["video_ids"], row["scores"] = self.results[i]
            out.append(row)
        return out


def _counter(name: str, doc: str):
    """A Prometheus counter on the default registry (kserve's /metrics), once per process."""
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:  # pragma: no cover - kserve depends on prometheus_client
        return None
    existing = REGISTRY._names_to_collectors.get(f"{name}_total")  # noqa: SLF001
    return existing or Counter(name, doc)


class RequestLog:
    """Batched Parquet writer on a background thread, fed by a bounded queue."""

    def __init__(
        self,
        directory: str | Path,
        model_hash: str,
        *,
        max_queue: int = 10_000,
        flush_rows: int = 1_000,
        flush_s: float = 5.0,
        poll_s: float = 0.25,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model_hash = model_hash
        self.flush_rows, self.flush_s = max(1, flush_rows), flush_s
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.dropped = 0  # requests whose rows were not queued (queue full or log closed)
        self.written = 0  # rows written to files
        self.files = 0
        self._seq = 0  # the last file number used (skips names an earlier process left)
        self.write_errors = 0
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self.poll_s = min(poll_s, flush_s)
        self._dropped_metric = _counter(
            "crops_request_log_dropped", "requests missing from the request log (queue full)"
        )
        self._written_metric = _counter("crops_request_log_rows", "rows written to the request log")
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request path

    def submit(self, record: Record) -> bool:
        """Queue a finished request; False (and counted as dropped) when the queue is full."""
        if not self._closed:
            try:
                self.queue.put_nowait(record)
                return True
            except queue.Full:
                pass
        with self._lock:
            self.dropped += 1
            n = self.dropped
        if self._dropped_metric is not None:
            self._dropped_metric.inc()
        if n == 1 or n % 1000 == 0:  # a line, not a flood, while the writer is behind
            logger.warning(
                "request log: %d request(s) dropped (queue of %d full or log closed); last %s",
                n,
                self.queue.maxsize,
                record.request_id,
            )
        return False

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        """Drain the queue every ``poll_s`` (not per request: a thread woken 200 times a second
        competes with the requests for the GIL), write every ``flush_rows`` rows or
        ``flush_s`` seconds; on close, drain and write what is left."""
        batch: list[Record] = []
        rows = 0
        deadline = time.monotonic() + self.flush_s
        while True:
            stopping = self._stop.wait(self.poll_s)
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                rows += max(1, len(item.queries or ()))
                if rows >= self.flush_rows:
                    self._flush(batch)
                    batch, rows = [], 0
                    deadline = time.monotonic() + self.flush_s
            if stopping or (batch and time.monotonic() >= deadline):
                self._flush(batch)
                batch, rows = [], 0
                deadline = time.monotonic() + self.flush_s
            if stopping:
                return

    def _flush(self, batch: list[Record]) -> None:
        if not batch:
            return
        by_day: dict[str, list[Record]] = {}
        for record in batch:
            by_day.setdefault(record.ts.strftime("%Y-%m-%d"), []).append(record)
        for day, records in by_day.items():
            try:
                table = _table(records, self.model_hash)
                folder = self.directory / f"day={day}"
                folder.mkdir(parents=True, exist_ok=True)
                self.files += 1
                self._seq += 1
                target = folder / f"requests-{os.getpid()}-{self._seq}.parquet"
                while target.exists():  # a restarted process with the same pid (a container's
                    self._seq += 1  # pid 1) must not replace an earlier run's file
                    target = folder / f"requests-{os.getpid()}-{self._seq}.parquet"
                tmp = target.with_name(f".{target.name}.tmp")
                # no dictionary encoding: on the result lists it costs ~15x the write time
                pq.write_table(table, tmp, use_dictionary=False)
                os.replace(tmp, target)  # readers never see half a file
            except Exception:  # a bad disk must not kill the writer or the server
                self.write_errors += 1
                with self._lock:
                    self.dropped += len(records)
                logger.exception("request log: could not write %d request(s)", len(records))
                continue
            self.written += table.num_rows
            if self._written_metric is not None:
                self._written_metric.inc(table.num_rows)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, write everything queued, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout_s)
        logger.info(
            "request log: %d row(s) in %d file(s) under %s, %d request(s) dropped",
            self.written,
            self.files,
            self.directory,
            self.dropped,
        )


def _table(records: list[Record], model_hash: str) -> pa.Table:
    """The contract's table for a batch, built column by column: the result lists go in as
    one concatenated array plus offsets, not as Python lists (the writer shares the GIL with
    the requests being answered)."""
    cols: dict[str, list] = {f.name: [] for f in REQUEST_LOG if f.name not in _LISTS}
    offsets: list[int | None] = [0]
    ids, scores = [], []
    end = 0
    for rec in records:
        queries = rec.queries or [None]
        ok = 200 <= rec.status < 300 and rec.results is not None
        for i, q in enumerate(queries):
            cols["request_id"].append(rec.request_id)
            cols["instance"].append(i)
            cols["ts"].append(rec.ts)
            cols["user_id"].append(rec.user_id)
            cols["query"].append(q)
            cols["top_k"].append(rec.top_ks[i] if rec.top_ks and q is not None else None)
            cols["model_hash"].append(rec.model_hash or model_hash)
            cols["latency_ms"].append(rec.latency_ms)
            cols["status"].append(rec.status)
            cols["protocol"].append(rec.protocol)
            cols["error"].append(rec.error)
            if ok and q is not None:
                v, s = rec.results[i]
                ids.append(np.asarray(v, np.int64))
                scores.append(np.asarray(s, np.float32))
                end += len(ids[-1])
                offsets.append(end)
            else:
                offsets.append(None)  # a null list
    # a null offset marks a null list; the next list starts where the last valid one ended
    filled, last = [], 0
    for o in offsets:
        filled.append(o if o is not None else last)
        last = o if o is not None else last
    valid = np.array([o is not None for o in offsets[1:]])
    off = pa.array(filled, pa.int32())
    flat_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    flat_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    mask = pa.array(~valid)
    arrays = {
        "video_ids": pa.ListArray.from_arrays(off, pa.array(flat_ids), mask=mask),
        "scores": pa.ListArray.from_arrays(off, pa.array(flat_scores), mask=mask),
    }
    for f in REQUEST_LOG:
        if f.name not in _LISTS:
            arrays[f.name] = pa.array(cols[f.name], f.type)
    return pa.Table.from_arrays([arrays[f.name] for f in REQUEST_LOG], schema=REQUEST_LOG)


_LISTS = ("video_ids", "scores")


def read_request_log(directory: str | Path):
    """All rows under a request-log folder as (valid, quarantined, report) of the contract."""
    import polars as pl

    from crops.schema import check_rows, conform

    files = sorted(Path(directory).glob("day=*/requests-*.parquet"))
    if not files:
        table = REQUEST_LOG.empty_table()
    else:
        table = pa.concat_tables([pq.read_table(f, partitioning=None) for f in files])
    table, flags = conform(table, "request_log", directory)
    valid, quarantine, report = check_rows("request_log", table, directory, flags=flags)
    assert isinstance(valid, pl.DataFrame)
    return valid, quarantine, report


# ---------------------------------------------------------------------- ASGI middleware


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestLogMiddleware:
    """Request id and model hash on every HTTP answer; a `Record` per inference request,
    handed to ``log`` (a `RequestLog`) when one is given."""

    def __init__(self, app, model_hash: str, log: RequestLog | None = None) -> None:
        self.app, self.model_hash, self.log = app, model_hash, log
        self._hash_header = (MODEL_HASH.encode(), model_hash.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = _header(scope, REQUEST_ID.encode())
        generated = not given or len(given) > MAX_REQUEST_ID or not given.isprintable()
        record = Record(
            request_id=uuid.uuid4().hex if generated else given,
            ts=datetime.now(UTC),
            generated_id=generated,
        )
        path = scope.get("path", "")
        infer = path.endswith(":predict") or path.endswith("/infer")
        record.protocol = "v2" if path.startswith("/v2/") else "v1"
        user = _header(scope, USER_ID.encode())
        if user is not None:
            try:
                record.user_id = int(user)
            except ValueError:
                record.user_id_error = f"{USER_ID} must be an integer, got {user[:40]!r}"
        token = _current.set(record)
        started = False

        async def send_wrapper(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                record.status = message["status"]
                headers = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if k.lower() not in (b"x-request-id", b"x-model-hash")
                ]
                headers.append((REQUEST_ID.encode(), record.request_id.encode("latin-1")))
                headers.append(self._hash_header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # unhandled: answer 500 here so it carries the headers
            logger.exception("unhandled error answering %s", record.request_id)
            record.error = f"{type(exc).__name__}: {exc}"
            if started:
                raise
            import json

            body = json.dumps({"error": f"{type(exc).__name__} : {exc}"}).encode()
            await send_wrapper(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            _current.reset(token)
            record.latency_ms = (time.perf_counter() - start) * 1000
            if self.log is not None and infer:
                self.log.submit(record)
