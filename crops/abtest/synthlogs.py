"""Synthetic A/B logs with a known truth, at any size: for validation runs and benchmarks.

Writes the layout of `crops.abtest.layout` (search log with ``arm``, request log) the way an
app and two endpoints would, one partition per day, so `crops abtest analyze` reads them like
any logs; the truth (each arm's CTR multiplier) is known because it is a parameter. Users are
clustered like real traffic: each has their own CTR, long-play and reformulation propensities
(Beta draws), arrives on a random day and comes back on later days at random, and makes a few
requests of `shown` impressions on each active day. Vectorised (numpy, pyarrow): 10 million
impressions take seconds. The simulated short-video platform (`crops abtest --world`) is the
other log source; this one exists so that false-promotion rates can be measured over hundreds
of experiments and the analysis timed on tens of millions of rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crops.abtest.layout import ARMS, REQUESTS, SEARCH, SEARCH_WITH_ARM, day_start, partition
from crops.schema import REQUEST_LOG

CTR, LONG_PLAY, REFORM = 0.14, 0.77, 0.30
CONCENTRATION = 20.0  # Beta a + b: per-user spread
DURATION_MS = 30_000
HASHES = {"control": "sha256:" + "c" * 64, "treatment": "sha256:" + "t" * 64}


@dataclass(frozen=True)
class SynthSpec:
    """One synthetic experiment: users, days, split, planted lift, logging quirks."""

    users: int = 2_000
    days: int = 5
    treatment_share: float = 0.5
    ctr_lift: float = 0.0  # treatment CTR = control CTR x (1 + lift)
    impressions_per_request: int = 8
    start: date = date(2026, 1, 5)
    seed: int = 0
    error_rate: float = 0.0  # share of requests answered 503 (no search rows)
    duplicate_share: float = 0.0  # share of search rows written twice
    skew_s: float = 0.0  # request log clock minus app clock
    hashes: tuple[str, str] = (HASHES["control"], HASHES["treatment"])


def _beta(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.beta(mean * CONCENTRATION, (1 - mean) * CONCENTRATION, n)


def _atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_logs(spec: SynthSpec, logs: Path, days: range | None = None) -> dict[str, int]:
    """Write the experiment's logs for `days` (default all) under `logs`; row counts.

    The same spec always draws the same users and traffic, so writing days one at a time (as
    a daily job would find them) gives the same rows as writing them all at once.
    """
    rng = np.random.default_rng([spec.seed, 11])
    n = spec.users
    treated = rng.random(n) < spec.treatment_share
    ctr = np.minimum(_beta(rng, CTR, n) * np.where(treated, 1 + spec.ctr_lift, 1.0), 1.0)
    lp, ref = _beta(rng, LONG_PLAY, n), _beta(rng, REFORM, n)
    arrival = rng.integers(0, spec.days, n)
    back = rng.random((n, spec.days)) < 0.5
    per_day_seed = rng.integers(0, 2**63 - 1, spec.days)
    counts = {SEARCH: 0, REQUESTS: 0}
    for d in days if days is not None else range(spec.days):
        active = (arrival == d) | ((arrival < d) & back[:, d])
        users = np.flatnonzero(active)
        r = np.random.default_rng(int(per_day_seed[d]))
        search, requests = _day(spec, d, users, treated, ctr, lp, ref, r)
        day = spec.start + timedelta(days=d)
        _atomic(search, logs / partition(SEARCH, day) / "part-0.parquet")
        _atomic(requests, logs / partition(REQUESTS, day) / "requests-0.parquet")
        counts[SEARCH] += search.num_rows
        counts[REQUESTS] += requests.num_rows
    return counts


def _day(
    spec: SynthSpec,
    d: int,
    users: np.ndarray,
    treated: np.ndarray,
    ctr: np.ndarray,
    lp: np.ndarray,
    ref: np.ndarray,
    rng: np.random.Generator,
) -> tuple[pa.Table, pa.Table]:
    """One day's rows: each active user's requests, their impressions, the request log."""
    k = spec.impressions_per_request
    per_user = 1 + rng.poisson(0.6, len(users))
    req_user = np.repeat(users, per_user)
    m = len(req_user)
    first = np.r_[True, req_user[1:] != req_user[:-1]]
    # a request is reformulated (its next comes within 20 s with another query) with the
    # user's propensity; otherwise the next comes 10-60 minutes later
    reform = rng.random(m) < ref[req_user]
    gap = np.where(reform, 20_000, rng.integers(600_000, 3_600_000, m))
    gap = np.r_[0, gap[:-1]]
    gap[first] = 0
    base = int(day_start(spec.start).timestamp() * 1000) + d * 86_400_000
    start = base + 8 * 3_600_000 + rng.integers(0, 4 * 3_600_000, m)
    start = np.where(first, start, 0)
    seg = np.cumsum(first) - 1
    ts = start[first][seg] + _segmented_cumsum(gap, first)
    query_id = rng.integers(0, 50_000, m)
    # the request id: day and ordinal, unique across days and arms
    request_id = (d + 1) * 10_000_000_000 + np.arange(m, dtype=np.int64)
    session_id = request_id[first][seg]
    arm = np.where(treated[req_user], 1, 0)
    failed = rng.random(m) < spec.error_rate
    ok = ~failed
    # impressions of answered requests
    rows_r = np.repeat(np.flatnonzero(ok), k)
    nrows = len(rows_r)
    u = req_user[rows_r]
    clicked = rng.random(nrows) < ctr[u]
    long_ = clicked & (rng.random(nrows) < lp[u])
    watch = np.where(long_, DURATION_MS, np.where(clicked, 5_000, 0)).astype(np.int64)
    video = rng.integers(1, 100_000, nrows)
    position = np.tile(np.arange(k, dtype=np.int32), len(np.flatnonzero(ok)))
    if spec.duplicate_share > 0:
        dup = np.flatnonzero(rng.random(nrows) < spec.duplicate_share)
        order = np.sort(np.r_[np.arange(nrows), dup])
        rows_r, u, clicked, watch, video, position = (
            a[order] for a in (rows_r, u, clicked, watch, video, position)
        )
        nrows = len(rows_r)
    queries = pc.binary_join_element_wise("q", pa.array(query_id).cast(pa.string()), "")
    arms = pa.array(ARMS, pa.string()).take(pa.array(arm))
    ts_arr = pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    idx = pa.array(rows_r)
    search = pa.table(
        {
            "user_id": pa.array(req_user[rows_r] + 1, pa.int64()),
            "session_id": pa.array(session_id[rows_r], pa.int64()),
            "request_id": pa.array(request_id[rows_r], pa.int64()),
            "ts": ts_arr.take(idx),
            "query": queries.take(idx),
            "video_id": pa.array(video, pa.int64()),
            "stage": pa.repeat(pa.scalar("shown", pa.string()), nrows),
            "position": pa.array(position, pa.int32()),
            "clicked": pa.array(clicked),
            "watch_ms": pa.array(watch, pa.int64()),
            "duration_ms": pa.array(np.full(nrows, DURATION_MS, np.int64)),
            "arm": arms.take(idx),
        },
        schema=SEARCH_WITH_ARM,
    )
    status = np.where(failed, 503, 200).astype(np.int16)
    offsets = np.r_[0, np.cumsum(np.where(ok, k, 0))].astype(np.int32)
    ids = pa.array(rng.integers(1, 100_000, int(offsets[-1])), pa.int64())
    scores = pa.array(rng.random(int(offsets[-1])).astype(np.float32), pa.float32())
    null_mask = pa.array(failed)
    video_ids = pa.ListArray.from_arrays(pa.array(offsets), ids, mask=null_mask)
    score_lists = pa.ListArray.from_arrays(pa.array(offsets), scores, mask=null_mask)
    hashes = pa.array(np.array(spec.hashes)[arm], pa.string())
    skew = int(spec.skew_s * 1000)
    requests = pa.table(
        {
            "request_id": pa.array(request_id.astype(str), pa.string()),
            "instance": pa.array(np.zeros(m, np.int32)),
            "ts": pa.array(ts - skew, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "user_id": pa.array(req_user + 1, pa.int64()),
            "query": queries,
            "top_k": pa.array(np.full(m, k, np.int32)),
            "video_ids": video_ids,
            "scores": score_lists,
            "model_hash": hashes,
            "latency_ms": pa.array(rng.lognormal(np.log(12), 0.4, m).astype(np.float32)),
            "status": pa.array(status),
            "protocol": pa.repeat(pa.scalar("v1", pa.string()), m),
            "error": pa.array(np.where(failed, "HTTP 503", None), pa.string()),
        },
        schema=REQUEST_LOG,
    )
    return search, requests


def _segmented_cumsum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum of `x` restarting wherever `starts` is True."""
    c = np.cumsum(x)
    seg_start = np.flatnonzero(starts)
    offset = np.repeat(c[seg_start] - x[seg_start], np.diff(np.r_[seg_start, len(x)]))
    return c - offset


__all__ = ["HASHES", "SynthSpec", "write_logs"]
