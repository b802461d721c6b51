"""A FAKE OpenAI-compatible chat server for the synthesis tests (no GPU, no model, no network).

It stands in for ``vllm serve``: POST /v1/chat/completions and GET /v1/models on 127.0.0.1.
The behaviour is chosen by words in the query (read back from the <query> JSON literal that
crops.mining.synthesis.render_messages writes), so each test drives one failure kind:

    malformed  -> content "{not json"         truncated -> half a JSON object, finish "length"
    empty      -> content ""                   refuse    -> "I'm sorry, but I can't help with that."
    slow       -> sleeps past the client timeout
    error500   -> HTTP 500                     flaky     -> HTTP 500 twice for a query, then good
    badfield   -> JSON with tags = []          fenced    -> good JSON inside ```json fences
    dup        -> good JSON, caption "same caption"
    listy      -> each choice a JSON list of five good videos
    otherwise  -> good JSON whose caption mentions the query

Structured output is read as the pinned vLLM (0.32) reads it: ``response_format`` with a
json_schema, else ``structured_outputs`` = {"json": schema}; the removed ``guided_json`` is
ignored (vLLM only logs it), so such a request counts as unconstrained. `schemas` records, per
request, the schema the server would have constrained the reply to (None: unconstrained).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

QUERY_RE = re.compile(r"<query>(.*?)</query>", re.DOTALL)
BEHAVIOURS = (
    "malformed",
    "truncated",
    "empty",
    "refuse",
    "slow",
    "error500",
    "flaky",
    "badfield",
    "fenced",
    "dup",
    "listy",
)


#: StructuredOutputsParams' constraint kinds in vLLM 0.32 (vllm/sampling_params.py): exactly one.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def enforced_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema vLLM 0.32 would constrain the reply to, as its ChatCompletionRequest
    does (structured_outputs_from_response_format: a json_schema response_format overrides
    structured_outputs). Raises ValueError where vLLM answers 400."""
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        if not isinstance(rf.get("json_schema"), dict):
            raise ValueError("response_format type 'json_schema' needs the 'json_schema' field")
        return rf["json_schema"].get("schema")
    so = body.get("structured_outputs")
    if so is None:
        return None
    kinds = [k for k in CONSTRAINTS if isinstance(so, dict) and so.get(k) is not None]
    if len(kinds) != 1:
        raise ValueError(f"structured_outputs needs exactly one constraint, got {so!r}")
    return so.get("json")


def good_video(query: str, index: int = 0) -> dict[str, Any]:
    flat = " ".join(query.split())[:200]
    suffix = f" (take {index + 1})" if index else ""
    return {
        "caption": f"Short video about {flat}{suffix}",
        "tags": ["howto", "Howto", "short video"],  # the duplicate tag must be dropped
        "cover_text": "Watch this",
        "keywords": [flat[:40] or "video", "tutorial"],
        "related_queries": [f"{flat[:80]} tips"],
    }


class FakeOpenAIServer:
    """A FAKE OpenAI-compatible server on a random free loopback port; use as a context manager.

    `calls` counts chat requests per query, `requests` keeps every body received, `headers`
    every request's headers, `schemas` the schema each request's reply was constrained to
    (see enforced_schema), `max_in_flight` the most chat requests handled at once.
    """

    def __init__(self, *, slow_s: float = 2.0, delay_s: float = 0.0, model: str = "fake-llm"):
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.model = model
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.schemas: list[dict[str, Any] | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def __enter__(self) -> FakeOpenAIServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": fake.model}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._json(400, {"error": {"message": "body is not JSON"}})
                    return
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload = fake._complete(body, dict(self.headers))
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._json(status, payload)  # the client may have given up (timeout test)

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a timed-out client closing its socket is expected here

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "use FakeOpenAIServer as a context manager"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- behaviour

    @staticmethod
    def query_of(body: dict[str, Any]) -> str | None:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        if not users:
            return None
        found = QUERY_RE.findall(users[-1].get("content", ""))
        if len(found) != 1:
            return None
        try:
            query = json.loads(found[0])
        except json.JSONDecodeError:
            return None
        return query if isinstance(query, str) else None

    def _complete(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict]:
        query = self.query_of(body)
        if query is None:
            return 400, {
                "error": {"message": "no single <query> JSON string in the last user message"}
            }
        try:
            schema = enforced_schema(body)
        except ValueError as e:
            return 400, {"error": {"message": str(e), "type": "BadRequestError"}}
        with self._lock:
            self.calls[query] += 1
            call = self.calls[query]
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in headers.items()})
            self.schemas.append(schema)
        if self.delay_s:
            time.sleep(self.delay_s)
        kind = next((b for b in BEHAVIOURS if b in query), "good")
        n = int(body.get("n", 1))
        finish = "stop"
        if kind == "error500" or (kind == "flaky" and call <= 2):
            return 500, {"error": {"message": "fake internal error", "type": "server_error"}}
        if kind == "slow":
            time.sleep(self.slow_s)
        if kind == "malformed":
            contents = ["{not json"] * n
        elif kind == "truncated":
            full = json.dumps(good_video(query))
            contents, finish = [full[: len(full) // 2]] * n, "length"
        elif kind == "empty":
            contents = [""] * n
        elif kind == "refuse":
            contents = ["I'm sorry, but I can't help with that."] * n
        elif kind == "badfield":
            contents = [json.dumps({**good_video(query), "tags": []})] * n
        elif kind == "fenced":
            contents = [f"```json\n{json.dumps(good_video(query, i))}\n```" for i in range(n)]
        elif kind == "dup":
            contents = [json.dumps({**good_video(query), "caption": "same caption"})] * n
        elif kind == "listy":  # each choice a JSON list of five videos
            contents = [
                json.dumps([good_video(query, 10 * i + j) for j in range(5)]) for i in range(n)
            ]
        else:
            contents = [json.dumps(good_video(query, i)) for i in range(n)]
        return 200, {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c},
                    "finish_reason": finish,
                }
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
