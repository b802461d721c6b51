"""The online mode: simulated users through a retriever function or a real endpoint."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fakes.fake_oracle_server import oracle, random_retriever

from crops.schema import check_rows, conform
from crops.world.online import HttpRetriever, production_retriever, run_online


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_logs_meet_the_contract(tiny_world) -> None:
    run = run_online(tiny_world, production_retriever(tiny_world), seed=3)
    table, flags = conform(run.search_log, "search_log", "online")
    _, quarantine, report = check_rows("search_log", table, "online", flags=flags)
    assert report.rows > 0 and quarantine.height == 0
    assert run.requests.num_rows == len(run.search_log["request_id"].unique())


def test_better_retrieval_gives_better_online_metrics(tiny_world) -> None:
    kw = dict(seed=5, searches_per_user=3.0)
    best = run_online(tiny_world, oracle(tiny_world), **kw).metrics(tiny_world)
    prod = run_online(tiny_world, production_retriever(tiny_world), **kw).metrics(tiny_world)
    worst = run_online(tiny_world, random_retriever(tiny_world), **kw).metrics(tiny_world)
    assert best["ctr"] > prod["ctr"] > worst["ctr"]
    assert best["reformulation_rate"] < prod["reformulation_rate"] < worst["reformulation_rate"]
    assert best["long_play_rate"] > worst["long_play_rate"]


def test_online_traffic_is_seeded_and_can_be_split_by_user(tiny_world) -> None:
    retr = production_retriever(tiny_world)
    a = run_online(tiny_world, retr, seed=1)
    b = run_online(tiny_world, retr, seed=1)
    assert a.requests["query"].to_pylist() == b.requests["query"].to_pylist()
    arm = np.arange(0, len(tiny_world.users), 2)
    half = run_online(tiny_world, retr, seed=1, users=arm)
    assert set(half.search_log["user_id"].to_pylist()) <= set((arm + 1).tolist())
    with pytest.raises(ValueError, match="no traffic"):
        run_online(tiny_world, retr, users=np.array([], dtype=int))


def test_online_through_a_real_kserve_endpoint(tiny_dir: Path, tiny_world, tmp_path) -> None:
    port = _free_port()
    log = tmp_path / "kserve.log"
    script = Path(__file__).parents[1] / "fakes" / "fake_oracle_server.py"
    server = subprocess.Popen(
        [sys.executable, str(script), str(tiny_dir), str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models/crops", timeout=1) as r:
                    if json.loads(r.read()).get("ready"):
                        break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "kserve server did not become ready"
            time.sleep(0.3)
        endpoint = HttpRetriever(url, timeout_s=10)
        over_http = run_online(tiny_world, endpoint, seed=7)
        in_process = run_online(tiny_world, oracle(tiny_world), seed=7)
        stats = endpoint.stats.as_dict()
        assert stats["errors"] == 0 and stats["requests"] > 0
        # the same retriever gives the same logs whether called in-process or over HTTP
        assert over_http.search_log.equals(in_process.search_log)
    finally:
        server.kill()
        server.wait(timeout=30)


class FlakyEndpoint(http.server.BaseHTTPRequestHandler):
    """A fake endpoint (stdlib, not KServe) that fails in the ways real ones do."""

    calls = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        FlakyEndpoint.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = FlakyEndpoint.calls % 4
        if n == 0:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        if n == 1:
            time.sleep(0.5)  # past the client's timeout
        payload = (
            b"{not json"
            if n == 2
            else json.dumps(
                {"predictions": [{"video_ids": [1, 2, 3], "scores": [3, 2, 1]}]}
            ).encode()
        )
        assert body["instances"][0]["top_k"] > 0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_a_failing_endpoint_is_counted_not_fatal(tiny_world) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = HttpRetriever(f"http://127.0.0.1:{server.server_port}", timeout_s=0.2)
        run = run_online(tiny_world, endpoint, seed=2)
        stats = endpoint.stats.as_dict()
        assert stats["requests"] > 10
        assert 0.5 < stats["error_rate"] < 1.0  # 500s, timeouts and bad JSON; some succeed
        assert stats["last_error"]
        assert run.search_log.num_rows > 0
    finally:
        server.shutdown()


def test_endpoint_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpRetriever("ftp://example.invalid")


def test_requests_without_results_still_count(tiny_world) -> None:
    """A retriever that answers nothing for half the queries must look worse, not better."""
    best = oracle(tiny_world)

    def half_dead(queries, k):
        return [ids if i % 2 else [] for i, ids in enumerate(best(queries, k))]

    good = run_online(tiny_world, best, seed=4, searches_per_user=3.0)
    broken = run_online(tiny_world, half_dead, seed=4, searches_per_user=3.0)
    m_good, m_broken = good.metrics(tiny_world), broken.metrics(tiny_world)
    assert m_broken["requests"] == broken.requests.num_rows
    assert m_broken["requests_without_results"] > 0
    assert m_good["requests_without_results"] == 0
    assert m_broken["reformulation_rate"] > m_good["reformulation_rate"]


def test_lexical_retriever_returns_real_ids_best_first(tiny_world) -> None:
    from crops.world.online import LexicalRetriever

    retr = LexicalRetriever(tiny_world)
    known = set(tiny_world.videos.video_id.tolist())
    answers = retr(tiny_world.forms.text, 60)
    for q, ids in zip(tiny_world.forms.text, answers, strict=True):
        assert ids and set(ids) <= known, q
        assert len(set(ids)) == len(ids), q
    # the head query's first results match its words better than its last lexical ones
    head = tiny_world.forms.text[0]
    first = retr([head], 60)[0]
    text = {
        int(v): c
        for v, c in zip(tiny_world.videos.video_id, tiny_world.videos.caption, strict=True)
    }
    words = set(head.split())
    hits = [len(words & set(text[v].split())) for v in first[:35]]
    assert np.mean(hits[:5]) >= np.mean(hits[-5:])
    assert retr(["no such query anywhere"], 10) == [[]]


class TruncatedEndpoint(http.server.BaseHTTPRequestHandler):
    """A fake endpoint whose response body is shorter than its Content-Length."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"predictions": [')
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args) -> None:
        pass


def test_a_truncated_reply_is_an_error_not_a_crash(tiny_world) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatedEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = HttpRetriever(f"http://127.0.0.1:{server.server_port}", timeout_s=2)
        run = run_online(tiny_world, endpoint, seed=2)
        stats = endpoint.stats.as_dict()
        assert stats["error_rate"] == 1.0
        assert run.metrics(tiny_world)["requests_without_results"] == run.requests.num_rows
    finally:
        server.shutdown()
