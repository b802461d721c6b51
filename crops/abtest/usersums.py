"""Per-user sums of an A/B look, kept per (user, day) so that a look adds days up.

A look needs, per user, the arm that served them first, whether both arms did, and the counts
of `crops.evaluate.abstats.COUNTS`. They are additive over days except two things that are
not: the first arm (the arm of the earliest event, kept per day with its time) and the
reformulations (a user's next request within the window and with another query), which can
pair the last request of one day with the first of the next: each day keeps its first and
last request, and `merge_users` pairs them. So `user_day_sums` runs once per day of logs
(`crops.abtest.digest` caches it) and a look merges the days of its window, with the same
result as summing the window's rows at once; `user_sums` is that composition.

A request's impressions and its request count go to the day of its earliest search row; a
request-log row counts on the day of its own time.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from crops.abtest.layout import ARM
from crops.evaluate.abstats import COUNTS
from crops.rowcheck import run_starts
from crops.schema import long_play

SHOWN = ("impressions", "clicks", "long_plays")

#: The columns of `user_day_sums`.
DAY_COLUMNS = (
    "user_id",
    "day",
    "first_ts",
    "first_arm",
    "has_control",
    "has_treatment",
    *COUNTS,
    "rq_first_ts",
    "rq_first_q",
    "rq_last_ts",
    "rq_last_q",
)

#: a query's 64-bit hash: enough to tell two queries apart across days (stored per day)
QUERY_HASH_SEED = 20260105


def query_hash(col: str) -> pl.Expr:
    return pl.col(col).hash(QUERY_HASH_SEED)


def request_blocks(
    search: pl.DataFrame, long_play_ms: int, memo: dict[str, Any] | None = None
) -> tuple[pl.DataFrame, bool]:
    """One row per run of a request's rows (request_id, user_id, arm, first query, earliest ts,
    rows) with its shown rows' counts; and whether the rows are runs of consecutive rows.

    Logs keep a request's rows together, so the runs are few per request and a group-by over
    them replaces one over every row, with the same sums and the same first values. With a
    null ts the rows are grouped instead (False). `memo` (`Logs.memo`) keeps the result for
    the same frame, which the experiment's hygiene and the sums both read.
    """
    if memo is not None:
        hit = memo.get("blocks")
        if hit is not None and hit[0] is search and hit[1] == long_play_ms:
            return hit[2]
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    shown = pl.col("stage") == "shown"
    flags = {
        "impressions": shown,
        "clicks": shown & pl.col("clicked"),
        "long_plays": shown & pl.col("clicked") & lp,
    }
    keys = ["request_id", "user_id", ARM]
    if search.height == 0 or search["ts"].null_count():
        out = search.group_by(keys, maintain_order=True).agg(
            pl.col("query").first(),
            pl.col("ts").min(),
            *(e.fill_null(False).sum().cast(pl.Int64).alias(n) for n, e in flags.items()),
            pl.len().cast(pl.Int64).alias("rows"),
        )
        result = (out, False)
    else:
        starts = run_starts(search, keys)
        cols: dict[str, Any] = {c: search[c].gather(starts) for c in (*keys, "query")}
        ts = search["ts"]
        physical = ts.to_physical().to_numpy()
        cols["ts"] = pl.Series("ts", np.minimum.reduceat(physical, starts)).cast(ts.dtype)
        got = search.select(**{n: e.fill_null(False) for n, e in flags.items()})
        for n in flags:
            cols[n] = np.add.reduceat(got[n].to_numpy(), starts, dtype=np.int64)
        cols["rows"] = np.diff(np.append(starts, search.height)).astype(np.int64)
        result = (pl.DataFrame(cols), True)
    if memo is not None:
        memo["blocks"] = (search, long_play_ms, result)
    return result


def user_day_sums(
    search: pl.DataFrame,
    requests: pl.DataFrame,
    *,
    window_s: int,
    long_play_ms: int,
    memo: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Per (user, day): first event and its arm, arms seen, COUNTS, first and last request.

    `search` is the search log's valid rows with `arm`; `requests` the request log's with `arm`.
    """
    blocks = request_blocks(search, long_play_ms, memo)[0]
    day = pl.col("ts").dt.date().alias("day")
    logged = requests.filter(pl.col("user_id").is_not_null())
    events = pl.concat([blocks.select("user_id", "ts", ARM), logged.select("user_id", "ts", ARM)])
    firsts = events.group_by("user_id", day).agg(
        pl.col("ts").min().alias("first_ts"),
        pl.col(ARM).sort_by("ts").first().alias("first_arm"),
        (pl.col(ARM) == "control").any().alias("has_control"),
        (pl.col(ARM) == "treatment").any().alias("has_treatment"),
    )
    from_search = blocks.group_by("request_id").agg(
        pl.col("user_id").first(), pl.col("ts").min(), pl.col("query").first()
    )
    shown = blocks.group_by("user_id", day).agg(pl.col(c).sum().cast(pl.Int64) for c in SHOWN)
    only_logged = (
        logged.with_columns(pl.col("request_id").cast(pl.Int64, strict=False).alias("_rid"))
        .join(from_search.select(pl.col("request_id").alias("_rid")), on="_rid", how="anti")
        .select("user_id", "ts", "query")
    )
    reqs = (
        pl.concat([from_search.select("user_id", "ts", "query"), only_logged])
        .with_columns(day)
        .sort(["user_id", "ts"])
    )
    nxt = {c: pl.col(c).shift(-1) for c in ("user_id", "day", "query", "ts")}
    reform = (
        (nxt["user_id"] == pl.col("user_id"))
        & (nxt["day"] == pl.col("day"))
        & (nxt["query"] != pl.col("query"))
        & ((nxt["ts"] - pl.col("ts")).dt.total_milliseconds() <= window_s * 1000)
    ).fill_null(False)
    per_req = (
        reqs.with_columns(reform.alias("reformulated"))
        .group_by("user_id", "day")
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            pl.col("reformulated").sum().cast(pl.Int64),
            pl.col("ts").first().alias("rq_first_ts"),
            query_hash("query").first().alias("rq_first_q"),
            pl.col("ts").last().alias("rq_last_ts"),
            query_hash("query").last().alias("rq_last_q"),
        )
    )
    return (
        firsts.join(shown, on=["user_id", "day"], how="left")
        .join(per_req, on=["user_id", "day"], how="left")
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in COUNTS)
        .select(DAY_COLUMNS)
    )


def _cross_day_pairs(g: pl.DataFrame, window_s: int) -> pl.DataFrame:
    """Per user, reformulations that pair the last request of one group with the first of the
    next (user_id, _cross).

    Only groups that can take part are paired: those with a request within the window of their
    day's start or end, and those sharing their (user, day) with another group (two log
    partitions). Two groups further apart in time cannot pair, as the window is under a day.
    Precondition (`crops.abtest.digest.interleaved`): one user's groups of one day do not
    overlap in time.
    """
    w = window_s * 1000
    r = g.filter(pl.col("requests") > 0)
    if window_s < 86_400:
        start = pl.col("day").cast(pl.Datetime("ms", "UTC"))
        after_start = (pl.col("rq_first_ts") - start).dt.total_milliseconds()
        before_end = (start + pl.duration(days=1) - pl.col("rq_last_ts")).dt.total_milliseconds()
        near = (after_start <= w) | (before_end <= w)
        r = r.filter(near | pl.struct("user_id", "day").is_duplicated())
    r = r.sort(["user_id", "rq_first_ts", "rq_last_ts"])
    same = pl.col("user_id").shift(-1) == pl.col("user_id")
    nxt_ts, nxt_q = pl.col("rq_first_ts").shift(-1), pl.col("rq_first_q").shift(-1)
    gap = (nxt_ts - pl.col("rq_last_ts")).dt.total_milliseconds()
    pairs = (same & (nxt_q != pl.col("rq_last_q")) & (gap <= w)).fill_null(False)
    return r.group_by("user_id").agg(pairs.sum().cast(pl.Int64).alias("_cross"))


def merge_users(
    groups: pl.DataFrame, *, window_s: int, first_day: date | None = None, end_day: date
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Per user (user_id, arm by first assignment, COUNTS) over the groups of days in
    [`first_day`, `end_day`), and the contamination figures.

    One user's groups of one day must not overlap in time (`crops.abtest.digest.interleaved`
    checks it): their reformulation pairs would then cross between groups.
    """
    window = pl.col("day") < end_day
    if first_day is not None:
        window = window & (pl.col("day") >= first_day)
    g = groups.filter(window)
    users = (
        g.group_by("user_id")
        .agg(
            pl.col("first_arm").sort_by("first_ts").first().alias(ARM),
            (pl.col("has_control").any() & pl.col("has_treatment").any()).alias("_both"),
            *(pl.col(c).sum().cast(pl.Int64) for c in COUNTS),
        )
        .join(_cross_day_pairs(g, window_s), on="user_id", how="left")
        .with_columns(pl.col("reformulated") + pl.col("_cross").fill_null(0))
        .drop("_cross")
        .sort("user_id")
    )
    both = int(users["_both"].sum()) if users.height else 0
    contamination = {
        "users_both_arms": both,
        "users": users.height,
        "share": round(both / users.height, 6) if users.height else None,
        "rule": "first assignment",
    }
    return users.select("user_id", ARM, *COUNTS), contamination


def user_sums(
    search: pl.DataFrame, requests: pl.DataFrame, *, window_s: int, long_play_ms: int
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Per user: first arm and COUNTS over both arms; and the contamination figures."""
    groups = user_day_sums(search, requests, window_s=window_s, long_play_ms=long_play_ms)
    end = groups["day"].max()
    if end is None:
        return merge_users(groups, window_s=window_s, end_day=date.min)
    return merge_users(groups, window_s=window_s, end_day=end + timedelta(days=1))


__all__ = [
    "DAY_COLUMNS",
    "merge_users",
    "request_blocks",
    "user_day_sums",
    "user_sums",
]
