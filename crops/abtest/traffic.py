"""Simulated users as a log source: the app in front of two arms, and the logs it writes.

A simulated A/B run stands in for the platform: users split between the arms by a salted hash
of their id (`assign`; a user stays in one arm for every day and across reruns), search that
arm's KServe v1 endpoint through the world's sessions (`crops.world.online.run_online`), and
the run writes, per simulated day and arm, exactly what a real app and endpoint would leave
under a log prefix (`crops.abtest.layout`): the ``search_log`` rows with the serving ``arm``,
and the app's own ``request_log`` of every request it sent, answered or not.

The request log is what an app knows of its requests and nothing more: its request, session
and user ids, the simulated time, the query, and what the endpoint sent back (ids, scores,
status, ``x-model-hash``) with the measured latency. The simulator's truth (intents, relations,
grades) never reaches it, so the analysis reads the same tables from a simulation as from
production. A request that got nothing (an error status, a timeout, a refused connection) still
has its request_log row, which is how errors reach the guardrails; it has no search_log rows.

The world's sessions run in rounds, and the retriever is called once per round with the
round's *distinct* queries: requests of one round that ask the same query share one HTTP call
(like an app coalescing identical in-flight queries), so they share its answer and latency.
The analysis, the ledger and the decision live in `crops.abtest.analyze`; the arms (URLs,
local servers) in `crops.abtest.arms`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crops.abtest.layout import ARMS, REQUESTS, SEARCH, SEARCH_WITH_ARM, partition, utc_day
from crops.schema import REQUEST_LOG
from crops.world.config import EPOCH_MS
from crops.world.online import CallOutcome, EndpointStats, HttpRetriever, run_online
from crops.world.simulate import DAY_MS
from crops.world.world import World

#: The status the app logs when the endpoint's answer did not come in time.
TIMEOUT_STATUS = 504
#: The status the app logs when no HTTP answer came at all (refused, reset, unreachable).
NO_ANSWER_STATUS = 503
#: The status the app logs for a 2xx answer it could not use (bad JSON, truncated body).
BAD_ANSWER_STATUS = 502
PROTOCOL = "v1"

# --------------------------------------------------------------------------- assignment


def assignment_hash(user_id: int, salt: str) -> float:
    """A user's stable position in [0, 1): the first 64 bits of sha256("salt:user_id")."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def assign(user_ids: np.ndarray, share: float, salt: str) -> np.ndarray:
    """True where the user is in the treatment arm; the same ids and salt always split alike."""
    return np.array([assignment_hash(int(u), salt) < share for u in user_ids], dtype=bool)


# --------------------------------------------------------------------------- a day of traffic


@dataclass
class DayTraffic:
    """One arm's day: its search_log rows (`SEARCH_WITH_ARM`), the app's request log
    (`REQUEST_LOG`, one row per request), the next free ids and the endpoint's call stats."""

    search: pa.Table
    requests: pa.Table
    next_request_id: int
    next_session_id: int
    stats: EndpointStats = field(default_factory=EndpointStats)


def log_day(day: int) -> date:
    """The partition of simulated day `day`: the UTC day of its start (partitions are by
    arrival, so a session running past midnight still lands in its day's partition)."""
    return utc_day(datetime.fromtimestamp((EPOCH_MS + day * DAY_MS) / 1000, UTC))


def _check_arm(arm: str) -> None:
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")


def _status(o: CallOutcome) -> int:
    """What the app logs as the request's status (see the *_STATUS constants)."""
    if o.timed_out:
        return TIMEOUT_STATUS
    if o.status is None:
        return NO_ANSWER_STATUS
    if o.error is not None and 200 <= o.status < 300:
        return BAD_ANSWER_STATUS
    return o.status


def _empty(request_id_base: int, session_id_base: int, stats: EndpointStats) -> DayTraffic:
    return DayTraffic(
        SEARCH_WITH_ARM.empty_table(),
        REQUEST_LOG.empty_table(),
        request_id_base,
        session_id_base,
        stats,
    )


def serve_day(
    world: World,
    arm_name: str,
    url: str,
    rows: np.ndarray,
    day: int,
    *,
    seed: int,
    searches_per_user: float,
    model_name: str,
    timeout_s: float,
    concurrency: int,
    request_id_base: int,
    session_id_base: int,
) -> DayTraffic:
    """A day of one arm's users (`rows`: user row indices) searching the endpoint at `url`.

    Request and session ids start at the bases given (pass one running base shared by both
    arms, so ids are unique across arms and days); the returned `next_*_id` are the next free
    ones. Every request has a request_log row keyed by its search_log request id as a string.
    """
    _check_arm(arm_name)
    retriever = HttpRetriever(url, model_name, timeout_s, concurrency, record=True)
    if len(rows) == 0:
        return _empty(request_id_base, session_id_base, retriever.stats)
    rounds: list[int] = []
    try:
        run = run_online(
            world,
            retriever,
            users=rows,
            day=day,
            seed=seed,
            searches_per_user=searches_per_user,
            on_round=rounds.append,
        )
    except ValueError as exc:
        if "no traffic" not in str(exc):
            raise
        return _empty(request_id_base, session_id_base, retriever.stats)
    # What the app knows of its requests; the rest of run.requests is the simulator's truth.
    app = run.requests.select(["request_id", "session_id", "user_id", "ts", "query"])
    calls = retriever.calls or []
    if len(calls) != len(rounds) or sum(rounds) != app.num_rows:
        raise RuntimeError(
            f"{len(calls)} endpoint calls for {len(rounds)} rounds of {sum(rounds)} requests "
            f"({app.num_rows} logged): the round/call mapping is broken"
        )
    round_of = np.repeat(np.arange(len(rounds)), rounds)  # requests come round after round
    outcomes = [
        calls[r][q] for r, q in zip(round_of.tolist(), app["query"].to_pylist(), strict=True)
    ]
    requests = _request_log(app, outcomes, request_id_base, world.cfg.retrieve_k, url)
    search = run.search_log
    search = search.set_column(
        search.schema.get_field_index("request_id"),
        "request_id",
        pc.add(search["request_id"], request_id_base),
    )
    search = search.set_column(
        search.schema.get_field_index("session_id"),
        "session_id",
        pc.add(search["session_id"], session_id_base),
    )
    search = search.append_column("arm", pa.array([arm_name] * search.num_rows, pa.string()))
    n = app.num_rows
    sessions = pc.max(app["session_id"]).as_py()
    return DayTraffic(
        search.cast(SEARCH_WITH_ARM),
        requests,
        request_id_base + (int(pc.max(app["request_id"]).as_py()) + 1 if n else 0),
        session_id_base + (int(sessions) + 1 if n else 0),
        retriever.stats,
    )


def _request_log(
    app: pa.Table, outcomes: list[CallOutcome], base: int, top_k: int, url: str
) -> pa.Table:
    """The app's request_log rows: one per request (instance 0), in ts then id order."""
    n = app.num_rows
    ok = [o.video_ids is not None and o.error is None for o in outcomes]
    fallback_hash = f"url:{url.rstrip('/')}"
    table = pa.table(
        {
            "request_id": pc.cast(pc.add(app["request_id"], base), pa.string()),
            "instance": pa.array(np.zeros(n, dtype=np.int32)),
            "ts": app["ts"],
            "user_id": app["user_id"],
            "query": app["query"],
            "top_k": pa.array(np.full(n, top_k, dtype=np.int32)),
            "video_ids": pa.array(
                [o.video_ids if good else None for o, good in zip(outcomes, ok, strict=True)],
                pa.list_(pa.int64()),
            ),
            "scores": pa.array(
                [o.scores if good else None for o, good in zip(outcomes, ok, strict=True)],
                pa.list_(pa.float32()),
            ),
            "model_hash": pa.array([o.model_hash or fallback_hash for o in outcomes], pa.string()),
            "latency_ms": pa.array([o.latency_ms for o in outcomes], pa.float32()),
            "status": pa.array([_status(o) for o in outcomes], pa.int16()),
            "protocol": pa.array([PROTOCOL] * n, pa.string()),
            "error": pa.array([o.error for o in outcomes], pa.string()),
        }
    ).cast(REQUEST_LOG)
    order = pc.sort_indices(app, [("ts", "ascending"), ("request_id", "ascending")])
    return table.take(order)


# --------------------------------------------------------------------------- writing


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: readers skip it (`layout.list_logs`)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_day(logs: Path, day: date, arm: str, traffic: DayTraffic) -> list[Path]:
    """Write one arm's day under the log prefix `logs`, in the day's partitions (`log_day`):
    ``search_log/day=D/part-<arm>.parquet`` and ``request_log/day=D/requests-<arm>.parquet``,
    each atomically (a temporary file, then a rename), so a reader never sees half a file and
    a rerun replaces the day. An arm with no traffic writes empty tables. Returns the paths."""
    _check_arm(arm)
    out = []
    for kind, name, table, schema in (
        (SEARCH, f"part-{arm}.parquet", traffic.search, SEARCH_WITH_ARM),
        (REQUESTS, f"requests-{arm}.parquet", traffic.requests, REQUEST_LOG),
    ):
        folder = Path(logs) / partition(kind, day)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(table.cast(schema), folder / name)
        out.append(folder / name)
    return out


__all__ = [
    "BAD_ANSWER_STATUS",
    "NO_ANSWER_STATUS",
    "TIMEOUT_STATUS",
    "DayTraffic",
    "assign",
    "assignment_hash",
    "log_day",
    "serve_day",
    "write_day",
]
