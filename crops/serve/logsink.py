"""`crops logsink`: KServe's payload-logging CloudEvents in, ``request_log`` Parquet files out.

With ``logger: {mode: all, url: <this sink>, metadataHeaders: [...]}`` on an InferenceService
predictor (the chart's ``serving.requestLog``), KServe's agent sidecar sends every request it
proxies, and every answer, to the sink as a CloudEvent. This ASGI app pairs the two events of
one request and writes ``request_log`` rows (`crops.schema.REQUEST_LOG`) through the same
background writer as ``crops serve --request-log`` (`crops.serve.reqlog.RequestLog`), so
``--out LOGS/request_log`` lands them where ``crops abtest analyze`` reads
(`crops.abtest.layout`: ``LOGS/request_log/day=YYYY-MM-DD/requests-*.parquet``).

What KServe sends, read from the agent's code in the kserve/kserve repository (a 2026 copy of
its main branch: ``pkg/logger/worker.go`` ``sendHttpCloudEvent``, ``pkg/logger/handler.go``
``ServeHTTP``, ``cmd/agent/main.go``); the pinned KServe is 0.21 (``docs/kind.md``), whose
InferenceService CRD (``../shared/crds``) has the same ``logger`` fields ``mode``, ``url``,
``metadataHeaders``, ``metadataAnnotations`` (plus ``storage``/``batchSize``, for the agent's
blob-store mode, which an ``http(s)`` URL does not use):

- One HTTP POST per event to the logger ``url``, CloudEvents 1.0 in **binary** content mode
  (``cloudevents.WithEncodingBinary``): the attributes are ``ce-*`` headers, the payload is
  the body, unchanged. ``ce-specversion: 1.0``; ``ce-id``: the inference request's id (the
  caller's ``Ce-Id`` header, else a new UUID; both events of a request share it);
  ``ce-type``: ``org.kubeflow.serving.inference.request`` or
  ``org.kubeflow.serving.inference.response``; ``ce-source``: the agent's ``--source-uri``,
  which KServe's pod webhook sets to the pod name (``pkg/webhook/admission/pod/
  agent_injector.go``); ``ce-time``: when the agent sent it (sdk-go ``WithTimeNow``). The
  extension attributes ``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``
  (``predictor``, ...) and ``ce-endpoint`` come from the pod's labels.
- ``metadataHeaders`` are not forwarded one header each: the agent copies the listed request
  headers into a map (Go's canonical names, e.g. ``X-Request-Id``, to the list of values) and
  sends it JSON-encoded in one extension attribute, ``ce-metadata``, e.g.
  ``{"X-Request-Id":["123"],"X-User-Id":["42"]}`` (``MetadataAttr = "metadata"``; kserve PR
  #3635 added it; ``handler_test.go`` ``TestLoggerWithMetadata`` reads ``Ce-Metadata``). The
  current ``handler.go`` puts it on both events (kserve issue #4778 reported it missing on the
  response); the sink reads the request's, else the response's. ``metadataAnnotations`` arrive
  the same way in ``ce-annotations``. The sink reads the map's keys case-insensitively.
- The response event is sent only when the predictor answered **200** (``handler.go``:
  ``if lrw.statusCode == http.StatusOK``), and with the *request's* Content-Type. A request the
  predictor refused, or whose answer was lost, therefore has no response event.
- The events are queued and sent by a pool of workers (``--workers``, 5): the response can
  reach the sink before its request.
- kserve's sample output (``docs/samples/logger/basic/README.md``) shows such a pair as a
  message dumper prints it (``type: org.kubeflow.serving.inference.request``, ``source``,
  ``id``, ``time``, extensions ``endpoint``, ``inferenceservicename``, ``namespace``).

Caution, from the same code: the agent keeps a header when ``slices.Contains(metadataHeaders,
name)`` with ``name`` a key of Go's ``http.Header``, which is in canonical form; a lower-case
entry such as ``x-request-id`` may then match nothing, so list the canonical spelling
(``X-Request-Id``, ``X-User-Id``) if the events arrive with an empty ``ce-metadata``. A sink
whose events carry no ``X-Request-Id`` falls back to ``ce-id`` (a UUID), which does not link to
the search log.

What the sink does (the events are parsed by `crops.serve.cloudevents`, their inference
payloads by `crops.serve.payloads`; this module pairs them, writes the rows and serves HTTP):

- ``POST /`` takes one event: binary mode (any Content-Type; the body is parsed as JSON), or
  structured mode (``Content-Type: application/cloudevents+json``: the attributes and
  ``data``/``data_base64`` in one JSON object). Batched mode is refused (400).
- Events are paired by (``ce-source``, ``ce-id``), in either order. A pair becomes one
  `crops.serve.reqlog.Record`: ``request_id`` the forwarded ``X-Request-Id`` (else ``ce-id``);
  ``user_id`` the forwarded ``X-User-Id``; queries and ``top_k`` from the request body (v1
  ``{"instances": [{"query", "top_k"}]}``, or v2 ``inputs``; an absent ``top_k`` is stored as
  null: the sink does not know the predictor's default); ``video_ids``/``scores`` from the
  response body (v1 ``{"predictions": [{"video_ids", "scores"}]}``, or v2 ``outputs``, -1
  padding dropped); ``ts`` the request event's ``ce-time`` (else its arrival); ``latency_ms``
  the time between the two events' **arrival at the sink** (the sink's view: it includes the
  agent's queueing, and is 0 when the response came first); ``status`` 200.
- ``model_hash``: the response body's ``model_hash`` when it has one; else the configured map
  (``--model-hash KEY=HASH``, KEY matched against ``<component>/<endpoint>``, ``<endpoint>``,
  ``<component>``, then as a prefix of ``ce-source``, the pod name, e.g.
  ``crops-candidate-predictor``); else ``isvc:<namespace>/<name>/<component>`` (with
  ``/<endpoint>`` when the endpoint is set). The analysis tells the arms apart by hash, so the
  two arms must map to different strings: with a Standard-mode ``spec.canary`` both predictors
  may carry the same component label, so map them by pod-name prefix (or pass
  ``--control-hash``/``--candidate-hash`` to the analysis).
- A request event with no response within ``pair_timeout_s`` (or still waiting when the sink
  stops) is written with status 504 and error ``no response event``; ``latency_ms`` is then how
  long the sink waited. A response event with no request is dropped and counted
  (``orphan_response``): without the request there is no query to log. A response body that
  is JSON but not a usable answer (wrong shape, one prediction short) gives status 502 and the
  reason. Events whose request body is empty or not an inference call (no ``instances`` or
  ``inputs``: model metadata, health calls through the agent) are acknowledged and not logged.
- A non-integer ``X-User-Id`` does not lose the request: its row is stored with a null
  ``user_id`` and the reason in ``error`` (the contract allows a null ``user_id``, so the row
  stays valid and its request still links to the search log by id), counted in
  ``crops_logsink_user_id_invalid_total`` and logged.
- Bad input is answered with a JSON ``{"error", "reason"}`` naming what and where: 400
  (missing ``ce-id``/``ce-type``, unknown ``ce-type``, a body that is not JSON, a bad
  ``ce-time`` or ``ce-metadata``), 413 (a body over ``max_body_bytes``, 1 MiB), 405 (wrong
  method), 404 (other paths), 409 (a second request or response event for a pair already
  waiting). Each is counted by reason in ``GET /metrics`` (Prometheus text,
  ``crops_logsink_events_total{outcome=...}``); ``GET /healthz`` answers 200.
- One sink replica must see both events of a request: run one (the pairing state is in
  memory, bounded: beyond ``max_pending`` events or ``max_pending_bytes`` of bodies, the oldest
  waiting requests are written as unanswered, counted as ``evicted``). Stopping (SIGTERM,
  SIGINT) writes the waiting requests as 504 and flushes the writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crops.serve.cloudevents import (
    BATCH,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    STRUCTURED,
    Event,
    EventError,
    parse_binary,
    parse_structured,
)
from crops.serve.payloads import (
    PayloadError,
    parse_request_body,
    parse_response_body,
)
from crops.serve.reqlog import MAX_REQUEST_ID, Record, RequestLog

logger = logging.getLogger("crops.serve.logsink")

MAX_BODY_BYTES = 1 << 20
PAIR_TIMEOUT_S = 30.0
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 256 << 20
NO_RESPONSE = "no response event"
REQUEST_ID_KEY = "x-request-id"
USER_ID_KEY = "x-user-id"

#: Every outcome of a POST (and of a bad method or path), as counted in /metrics.
OUTCOMES = (
    "request",
    "response",
    "ignored",
    "duplicate",
    "missing_ce_id",
    "missing_ce_type",
    "unknown_ce_type",
    "bad_specversion",
    "bad_ce_time",
    "bad_metadata",
    "bad_envelope",
    "not_json",
    "too_large",
    "unsupported_content_type",
    "method_not_allowed",
    "not_found",
    "internal_error",
)
PAIR_RESULTS = ("paired", "no_response", "orphan_response", "evicted")


# ----------------------------------------------------------------------------- the sink


@dataclass
class _Pending:
    first_mono: float
    request: Event | None = None
    response: Event | None = None
    ignore: bool = False  # not an inference call: acknowledged, never logged
    size: int = 0  # bytes of the bodies held


def parse_model_hashes(items: Iterable[str]) -> dict[str, str]:
    """``KEY=HASH`` strings as a map; ValueError naming a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"--model-hash {item!r}: expected KEY=HASH (KEY: a component)")
        out[key] = value
    return out


def _first(meta: dict[str, list[str]], key: str) -> str | None:
    values = meta.get(key)
    return values[0] if values else None


class LogSink:
    """Pairs request and response events and hands each pair to a `RequestLog`.

    Not thread-safe: the ASGI app calls it from its event loop only (the writer it feeds runs
    on its own thread).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        pair_timeout_s: float = PAIR_TIMEOUT_S,
        model_hashes: dict[str, str] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        flush_rows: int = 1_000,
        flush_s: float = 5.0,
    ) -> None:
        if not pair_timeout_s > 0:
            raise ValueError(f"pair_timeout_s must be positive, got {pair_timeout_s}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
        self.out_dir = Path(out_dir)
        self.pair_timeout_s = float(pair_timeout_s)
        self.model_hashes = dict(model_hashes or {})
        self.max_body_bytes = int(max_body_bytes)
        self.max_pending = max(1, int(max_pending))
        self.max_pending_bytes = max(1, int(max_pending_bytes))
        self.pending_bytes = 0
        # every record carries its own hash; the log's is never used
        self.log = RequestLog(self.out_dir, "isvc:unknown", flush_rows=flush_rows, flush_s=flush_s)
        self.pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self.events: Counter[str] = Counter()
        self.pairs: Counter[str] = Counter()
        self.user_id_invalid = 0
        self.closed = False

    # ------------------------------------------------------------------ events

    def accept(self, event: Event) -> dict[str, Any]:
        """Take one event; a pair complete with it is written. The answer's JSON body."""
        key = (event.source, event.id)
        entry = self.pending.get(key)
        if entry is None:
            entry = _Pending(first_mono=event.arrival_mono)
            self.pending[key] = entry
        slot = "request" if event.is_request else "response"
        if getattr(entry, slot) is not None:
            raise EventError(
                409,
                "duplicate",
                f"a {slot} event with ce-id {event.id[:80]!r} from ce-source "
                f"{event.source[:80]!r} is already waiting for its pair",
            )
        setattr(entry, slot, event)
        entry.size += event.size
        self.pending_bytes += event.size
        # bounded memory: the oldest waiting requests give way (written as unanswered)
        while len(self.pending) > 1 and (
            len(self.pending) > self.max_pending or self.pending_bytes > self.max_pending_bytes
        ):
            oldest = self._pop(next(iter(self.pending)))
            self._finish_unpaired(oldest, "evicted", f"{NO_RESPONSE} (too many waiting)")
        if key not in self.pending:  # evicted itself: nothing left to pair
            return {"accepted": slot, "id": event.id, "paired": False}
        if event.is_request and not entry.ignore:
            try:
                if parse_request_body(event.data) is None:
                    entry.ignore = True
            except PayloadError:
                pass  # an inference call with a bad body: logged with the reason
        if entry.ignore:
            self.events["ignored"] += 1
            if entry.request is not None and entry.response is not None:
                self._pop(key)
            return {"accepted": slot, "id": event.id, "logged": False}
        self.events[slot] += 1
        paired = entry.request is not None and entry.response is not None
        if paired:
            self._pop(key)
            self.pairs["paired"] += 1
            self.log.submit(self.record(entry.request, entry.response))
        return {"accepted": slot, "id": event.id, "paired": paired}

    def sweep(self, now_mono: float | None = None) -> int:
        """Finish the pairs waiting longer than the timeout; how many."""
        now = time.monotonic() if now_mono is None else now_mono
        done = 0
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            if now - entry.first_mono < self.pair_timeout_s:
                break
            self._pop(key)
            self._finish_unpaired(entry, "no_response", NO_RESPONSE, now)
            done += 1
        return done

    def _pop(self, key: tuple[str, str]) -> _Pending:
        entry = self.pending.pop(key)
        self.pending_bytes -= entry.size
        return entry

    def _finish_unpaired(
        self, entry: _Pending, result: str, error: str, now: float | None = None
    ) -> None:
        if entry.ignore:
            return
        if entry.request is None:
            self.pairs["orphan_response"] += 1
            n = self.pairs["orphan_response"]
            if n == 1 or n % 1000 == 0:
                assert entry.response is not None
                logger.warning(
                    "logsink: %d response event(s) without a request event (dropped); last "
                    "ce-id %s from %s",
                    n,
                    entry.response.id,
                    entry.response.source,
                )
            return
        self.pairs[result] += 1
        now = time.monotonic() if now is None else now
        record = self.record(entry.request, None, error=error)
        record.latency_ms = max(0.0, now - entry.request.arrival_mono) * 1000
        self.log.submit(record)

    # ------------------------------------------------------------------ rows

    def model_hash(self, event: Event) -> str:
        """The configured hash of the event's predictor, else a name for it."""
        comp, endpoint = event.component, event.endpoint
        for key in (f"{comp}/{endpoint}", endpoint, comp):
            if key and key != "/" and key in self.model_hashes:
                return self.model_hashes[key]
        prefixes = [k for k in self.model_hashes if event.source.startswith(k)]
        if prefixes:
            return self.model_hashes[max(prefixes, key=len)]
        name = f"isvc:{event.namespace}/{event.isvc}/{comp}"
        return f"{name}/{endpoint}" if endpoint else name

    def record(self, req: Event, resp: Event | None, error: str | None = None) -> Record:
        """The request log's record of a pair (``resp`` None: the request went unanswered)."""
        errors: list[str] = [error] if error else []
        meta = req.metadata or (resp.metadata if resp is not None else {})
        request_id = _first(meta, REQUEST_ID_KEY)
        if request_id is not None and (
            not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable()
        ):
            errors.append(f"unusable X-Request-Id {request_id[:40]!r}: ce-id used")
            request_id = None
        user_id = None
        raw_user = _first(meta, USER_ID_KEY)
        if raw_user is not None:
            try:
                user_id = int(raw_user)
            except ValueError:
                self.user_id_invalid += 1
                message = f"X-User-Id must be an integer, got {raw_user[:40]!r}"
                errors.append(message)
                if self.user_id_invalid == 1 or self.user_id_invalid % 1000 == 0:
                    logger.warning(
                        "logsink: %d request(s) with a bad user id (stored with a null "
                        "user_id): %s (ce-id %s)",
                        self.user_id_invalid,
                        message,
                        req.id,
                    )
        record = Record(
            request_id=request_id or req.id,
            ts=req.time or req.arrival,
            user_id=user_id,
            model_hash=self.model_hash(req),
        )
        try:
            inference = parse_request_body(req.data)
        except PayloadError as exc:
            inference = None
            errors.append(str(exc))
        if inference is not None:
            record.protocol = inference.protocol
            record.queries, record.top_ks = inference.queries, inference.top_ks  # type: ignore[assignment]
        if resp is None:
            record.status = 504
        else:
            record.latency_ms = max(0.0, resp.arrival_mono - req.arrival_mono) * 1000
            record.status = 200
            if inference is None:
                record.status = 502
            else:
                try:
                    results, body_hash = parse_response_body(resp.data, len(inference.queries))
                except PayloadError as exc:
                    record.status = 502
                    errors.append(str(exc))
                else:
                    record.results = results  # type: ignore[assignment]
                    if body_hash:
                        record.model_hash = body_hash
        record.error = "; ".join(errors) or None
        return record

    # ------------------------------------------------------------------ state

    def close(self) -> None:
        """Write every waiting request as unanswered, then flush and stop the writer."""
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        while self.pending:
            entry = self._pop(next(iter(self.pending)))
            self._finish_unpaired(entry, "no_response", NO_RESPONSE, now)
        self.log.close()

    def metrics_text(self) -> str:
        """The sink's counters in Prometheus' text format."""
        lines = [
            "# HELP crops_logsink_events_total CloudEvents posted to the sink, by outcome.",
            "# TYPE crops_logsink_events_total counter",
        ]
        for outcome in OUTCOMES:
            count = self.events[outcome]
            lines.append(f'crops_logsink_events_total{{outcome="{outcome}"}} {count}')
        lines += [
            "# HELP crops_logsink_pairs_total Requests finished, by how.",
            "# TYPE crops_logsink_pairs_total counter",
        ]
        for result in PAIR_RESULTS:
            lines.append(f'crops_logsink_pairs_total{{result="{result}"}} {self.pairs[result]}')
        gauges = [
            ("crops_logsink_pending", "gauge", "Events waiting for their pair.", len(self.pending)),
            (
                "crops_logsink_pending_bytes",
                "gauge",
                "Bytes of the bodies waiting for their pair.",
                self.pending_bytes,
            ),
            (
                "crops_logsink_user_id_invalid_total",
                "counter",
                "Requests whose X-User-Id is not an integer (stored with a null user_id).",
                self.user_id_invalid,
            ),
            (
                "crops_logsink_rows_written_total",
                "counter",
                "request_log rows written to files.",
                self.log.written,
            ),
            (
                "crops_logsink_requests_dropped_total",
                "counter",
                "Requests missing from the log (writer queue full or a write failed).",
                self.log.dropped,
            ),
            (
                "crops_logsink_write_errors_total",
                "counter",
                "Files that could not be written.",
                self.log.write_errors,
            ),
        ]
        for name, kind, doc, value in gauges:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the ASGI app


def _json_body(status: int, payload: dict[str, Any]) -> tuple[int, bytes, bytes]:
    return status, json.dumps(payload).encode(), b"application/json"


class LogSinkApp:
    """The sink over HTTP: ``POST /`` (events), ``GET /healthz``, ``GET /metrics``."""

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self._sweeper: asyncio.Task | None = None
        self.sweep_s = max(0.05, min(1.0, sink.pair_timeout_s / 4))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._start_sweeper()
        path, method = scope.get("path", ""), scope.get("method", "GET")
        extra: list[tuple[bytes, bytes]] = []
        try:
            if path in ("/healthz", "/metrics"):
                if method not in ("GET", "HEAD"):
                    extra.append((b"allow", b"GET, HEAD"))
                    raise EventError(405, "method_not_allowed", f"{method} {path}: use GET")
                if path == "/healthz":
                    answer = _json_body(200, {"status": "ok", "pending": len(self.sink.pending)})
                else:
                    text = self.sink.metrics_text().encode()
                    answer = (200, text, b"text/plain; version=0.0.4; charset=utf-8")
            elif path == "/":
                if method != "POST":
                    extra.append((b"allow", b"POST"))
                    raise EventError(
                        405, "method_not_allowed", f"{method} /: events are POSTed to /"
                    )
                answer = _json_body(200, await self._event(scope, receive))
            else:
                raise EventError(
                    404, "not_found", f"no {path[:80]!r}: POST events to /; GET /healthz, /metrics"
                )
        except EventError as exc:
            self.sink.events[exc.outcome] += 1
            if exc.status >= 500 or exc.outcome in ("method_not_allowed", "not_found"):
                logger.debug("logsink: %s", exc.message)
            else:
                logger.info("logsink: refused an event (%s): %s", exc.outcome, exc.message)
            answer = _json_body(exc.status, {"error": exc.message, "reason": exc.outcome})
        except Exception as exc:  # a bug, not bad input: say so, keep serving
            logger.exception("logsink: could not handle %s %s", method, path)
            self.sink.events["internal_error"] += 1
            answer = _json_body(500, {"error": f"{type(exc).__name__}: {exc}", "reason": "bug"})
        status, body, ctype = answer
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _event(self, scope, receive) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", ()):
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        limit = self.sink.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise EventError(
                413, "too_large", f"body: {int(length)} bytes, over the {limit}-byte limit"
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise EventError(413, "too_large", f"body: over the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        arrival, mono = datetime.now(UTC), time.monotonic()
        if ctype == BATCH:
            raise EventError(
                400,
                "unsupported_content_type",
                f"content-type {BATCH}: batched events are not read; send one event per POST",
            )
        if ctype == STRUCTURED:
            event = parse_structured(body, arrival, mono)
        else:
            event = parse_binary(headers, body, arrival, mono)
        return self.sink.accept(event)

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while not self.sink.closed:
            await asyncio.sleep(self.sweep_s)
            try:
                self.sink.sweep()
            except Exception:  # never let the sweeper die silently
                logger.exception("logsink: sweep failed")

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start_sweeper()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sweeper is not None:
                    self._sweeper.cancel()
                self.sink.close()  # no request is in flight now; the writer's join is short
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(sink: LogSink) -> LogSinkApp:
    """The ASGI app of `sink` (its lifespan's shutdown closes the sink)."""
    return LogSinkApp(sink)


def serve_logsink(
    out_dir: str | Path,
    host: str = "0.0.0.0",
    port: int = 8080,
    *,
    pair_timeout_s: float = PAIR_TIMEOUT_S,
    model_hashes: dict[str, str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_ready: Callable[[str], None] | None = None,
    access_log: bool = False,
) -> None:
    """Listen on ``host:port`` (0: any free port) until SIGTERM/SIGINT; ``on_ready(url)`` once
    it does. Stopping writes the waiting requests (504) and flushes the writer. Raises
    `crops.serve.server.ServeError` when it cannot listen."""
    import uvicorn

    from crops.serve.server import bind_socket, local_url

    sock = bind_socket(host, port)
    sink = LogSink(
        out_dir,
        pair_timeout_s=pair_timeout_s,
        model_hashes=model_hashes,
        max_body_bytes=max_body_bytes,
    )
    try:
        config = uvicorn.Config(
            create_app(sink), lifespan="on", access_log=access_log, log_level="info"
        )
        server = uvicorn.Server(config)
        url = local_url(host, sock.getsockname()[1])
        if on_ready is not None:

            def announce() -> None:
                while not server.started and not server.should_exit:
                    time.sleep(0.05)
                if server.started:
                    on_ready(url)

            threading.Thread(target=announce, daemon=True).start()
        server.run(sockets=[sock])  # uvicorn: SIGTERM/SIGINT end it; the lifespan closes
    finally:
        sink.close()  # no-op when the lifespan did it
        sock.close()


__all__ = [
    "MAX_BODY_BYTES",
    "NO_RESPONSE",
    "PAIR_TIMEOUT_S",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "Event",
    "EventError",
    "LogSink",
    "LogSinkApp",
    "create_app",
    "parse_binary",
    "parse_model_hashes",
    "parse_request_body",
    "parse_response_body",
    "parse_structured",
    "serve_logsink",
]
