"""Test fake: a KServe v1 endpoint answering with the simulated world's lexical retrieval."""

from __future__ import annotations

import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from crops.world.online import LexicalRetriever
from crops.world.world import World


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = (
        128  # the default backlog of 5 drops bursts of connections (SYN retry: 1 s)
    )

    def handle_error(self, request, client_address) -> None:
        """A client that timed out and hung up is expected here, not a test failure."""


class FakeKServeEndpoint:
    """Test fake: a real HTTP server speaking the KServe v1 predict contract (and v2 health).

    It answers with the world's own lexical retrieval, seeded per query so answers do not depend
    on request order. `fail_share` of the queries (chosen by a hash of the text, so the same
    ones every run) get HTTP 500 and `slow_share` sleep `slow_s` before answering, past a short
    client timeout.
    """

    def __init__(
        self, world: World, *, fail_share: float = 0.0, slow_share: float = 0.0, slow_s: float = 0
    ) -> None:
        self.world, self.fail_share, self.slow_share, self.slow_s = (
            world,
            fail_share,
            slow_share,
            slow_s,
        )
        self.lock = threading.Lock()
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path in ("/v2/health/ready", "/v1/models/crops"):
                    self._send(200, {"name": "crops", "ready": True})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path != "/v1/models/crops:predict":
                    self._send(404, {"error": "not found"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                inst = body["instances"][0]
                self._send(*fake.answer(inst["query"], int(inst["top_k"])))

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, query: str, k: int) -> tuple[int, dict]:
        with self.lock:
            self.calls += 1
        u = (zlib.crc32(query.encode()) % 1000) / 1000
        if u < self.fail_share:
            return 500, {"error": "injected failure"}
        if u < self.fail_share + self.slow_share:
            time.sleep(self.slow_s)
        with self.lock:  # the platform's candidate generator is not meant for threads
            ids = LexicalRetriever(self.world, seed=zlib.crc32(query.encode()))([query], k)[0]
        return 200, {"predictions": [{"video_ids": list(ids), "scores": [0.0] * len(ids)}]}

    def __enter__(self) -> FakeKServeEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
