"""The online mode: simulated users search through a retriever under test.

The retriever replaces the production first stage (lexical retrieval); pre-ranking, ranking,
display, clicks and reformulations stay the world's own, so CTR, long-play and reformulation
rates compare retrievers the way a live A/B test does. A retriever is either a function
(`Retriever`: queries, k -> ranked video ids) or a retrieval endpoint speaking the KServe v1
protocol, which `crops serve` implements:

    POST {url}/v1/models/{model}:predict
    {"instances": [{"query": "...", "top_k": 60}]}
    -> {"predictions": [{"video_ids": [...], "scores": [...]}]}
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from crops.world.platform import Retriever
from crops.world.simulate import IdCounter, search_rows, session_starts, sorted_by
from crops.world.summary import behaviour
from crops.world.world import World


@dataclass
class EndpointStats:
    """What the endpoint did: counts and latencies (ms), for the A/B job's guardrails."""

    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_error: str | None = None

    def as_dict(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "last_error": self.last_error,
        }


MODEL_HASH_HEADER = "x-model-hash"


@dataclass(frozen=True)
class CallOutcome:
    """One POST as the caller saw it, for an app's own request log.

    `status` is the HTTP status, None when no answer came (refused, reset, timed out before
    the status line); `video_ids` is None unless a 2xx answer could be read; `timed_out` says
    the client gave up waiting; `model_hash` is the answer's ``x-model-hash`` header, if any.
    """

    video_ids: list[int] | None
    scores: list[float] | None
    status: int | None
    latency_ms: float
    model_hash: str | None
    error: str | None
    timed_out: bool = False


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


class HttpRetriever:
    """A retrieval endpoint as a `Retriever`: one POST per query, bounded concurrency.

    A failed or timed-out request yields no candidates for that query (the user sees an empty
    page) and is counted in `stats`; it never stops the simulation. With ``record=True`` each
    call (one per round of `Platform.run_sessions`, with that round's distinct queries) appends
    a ``{query: CallOutcome}`` dict to `calls`, so a caller can log what each request got.
    """

    def __init__(
        self,
        url: str,
        model: str = "crops",
        timeout_s: float = 2.0,
        concurrency: int = 8,
        *,
        record: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/v1/models/{model}:predict"
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.stats = EndpointStats()
        self.calls: list[dict[str, CallOutcome]] | None = [] if record else None
        self._lock = threading.Lock()

    def _one(self, query: str, k: int) -> CallOutcome:
        body = json.dumps({"instances": [{"query": query, "top_k": k}]}).encode()
        req = urllib.request.Request(
            self.endpoint, data=body, headers={"Content-Type": "application/json"}
        )
        status: int | None = None
        model_hash: str | None = None
        ids: list[int] | None = None
        scores: list[float] | None = None
        error: str | None = None
        timed_out = False
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status, model_hash = resp.status, resp.headers.get(MODEL_HASH_HEADER)
                payload = json.loads(resp.read())
            pred = payload["predictions"][0]
            ids = [int(v) for v in pred["video_ids"]]
            try:
                scores = [float(s) for s in pred["scores"]]
            except (KeyError, TypeError, ValueError):
                scores = None  # the ids are the answer; scores are for the log only
        except urllib.error.HTTPError as exc:  # an answer, with a 4xx/5xx status
            status, model_hash = exc.code, (exc.headers or {}).get(MODEL_HASH_HEADER)
            error = f"{type(exc).__name__}: {exc}"
            exc.close()
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            TimeoutError,
            OSError,
            ValueError,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            error = f"{type(exc).__name__}: {exc}"
            timed_out = _timed_out(exc)
            ids = scores = None
        latency_ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            self.stats.requests += 1
            self.stats.latencies_ms.append(latency_ms)
            if error is not None:
                self.stats.errors += 1
                self.stats.last_error = error
        return CallOutcome(ids, scores, status, latency_ms, model_hash, error, timed_out)

    def __call__(self, queries: Sequence[str], k: int) -> list[Sequence[int]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            outcomes = list(pool.map(lambda q: self._one(q, k), queries))
        if self.calls is not None:
            with self._lock:
                self.calls.append(dict(zip(queries, outcomes, strict=True)))
        return [o.video_ids or [] for o in outcomes]


class LexicalRetriever:
    """The world's own lexical first stage as a `Retriever` (for A/A runs and as control).

    Inside `run_online` its per-request noise comes from the run's seeded generator, so reruns
    match; called directly it draws from its own generator.
    """

    def __init__(self, world: World, seed: int = 9) -> None:
        self.world = world
        self.rng = np.random.default_rng([world.cfg.seed, seed])

    def __call__(self, queries: Sequence[str], k: int) -> list[Sequence[int]]:
        out: list[Sequence[int]] = []
        for q in queries:
            f = self.world.form_id(q)
            if f is None:
                out.append([])
                continue
            rows = self.world.platform.lexical_candidates(np.array([f]), self.rng, ordered=True)[0]
            rows = rows[rows >= 0][:k]
            out.append(self.world.videos.video_id[rows].tolist())
        return out


def production_retriever(world: World) -> LexicalRetriever:
    return LexicalRetriever(world)


@dataclass
class OnlineRun:
    """Logs of an online run in the contracts, plus the truth per request."""

    search_log: pa.Table
    requests: pa.Table

    def metrics(self, world: World) -> dict[str, float]:
        """CTR, long-play and reformulation rates; every request counts, even an empty one."""
        requests = pl.from_arrow(
            self.requests.select(["request_id", "session_id", "user_id", "ts", "query"])
        )
        return behaviour(
            pl.from_arrow(self.search_log).lazy(),
            world.cfg.reformulation_window_s,
            world.cfg.long_play_ms,
            requests=requests.lazy(),
        )


def run_online(
    world: World,
    retriever: Retriever,
    *,
    users: np.ndarray | None = None,
    day: int | None = None,
    seed: int = 0,
    searches_per_user: float = 1.0,
    on_round: Callable[[int], None] | None = None,
) -> OnlineRun:
    """Send a day of simulated users' searches through `retriever`; return their logs.

    `users` (row indices) restricts traffic to some users, e.g. one arm of an A/B split. The
    day defaults to the one after the test day, so online traffic is new traffic. `on_round`
    hears the number of requests of each session round, in order (`Platform.run_sessions`):
    `requests` lists them round after round, and the retriever is called once per round.
    """
    day = world.cfg.days + 1 if day is None else day
    rng = np.random.default_rng([world.cfg.seed, 7, day, seed])
    all_users, start = session_starts(world, day, searches_per_user, rng)
    if users is not None:
        keep = np.isin(all_users, users)
        all_users, start = all_users[keep], start[keep]
    if len(all_users) == 0:
        raise ValueError("no traffic: the user selection holds no searching users")
    own = isinstance(retriever, LexicalRetriever) and retriever.world is world
    req, imp = world.platform.run_sessions(
        all_users, start, rng, retriever=None if own else retriever, on_round=on_round
    )
    ids = IdCounter()
    search, truth = search_rows(world, req, imp, ids, day)
    return OnlineRun(sorted_by(search, ["ts", "request_id", "position"]), truth)


__all__ = [
    "CallOutcome",
    "LexicalRetriever",
    "EndpointStats",
    "HttpRetriever",
    "OnlineRun",
    "production_retriever",
    "run_online",
]
