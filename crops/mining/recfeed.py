"""System-level positives: what the same user consumed deeply in the feed around a search.

For each search (user, query, time), the user's long plays in the recommendation feed within
`window_s` before or after it are candidates for the query. The paper caps them per user ("up
to 100 per user"): of all the (query, video) pairs a user's searches gather, the
`max_per_user` closest in time to their search are kept, so a user who searches often does not
contribute more than one who searches once. The relevance filter then decides which stay.
"""

from __future__ import annotations

import polars as pl

from crops.schema import log_requests, long_play


def recfeed_candidates(
    search: pl.LazyFrame,
    rec: pl.LazyFrame,
    window_s: float,
    max_per_user: int,
    long_play_ms: int,
) -> pl.LazyFrame:
    """(query, video_id, request_id, session_id, gap_s) before the relevance filter."""
    window_ms = int(round(window_s * 1000))
    searches = log_requests(search).select("request_id", "session_id", "user_id", "ts", "query")
    deep = rec.filter(long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)).select(
        "user_id", pl.col("ts").alias("feed_ts"), "video_id"
    )
    gap = (pl.col("feed_ts") - pl.col("ts")).dt.total_milliseconds().abs()
    near = (
        searches.join(deep, on="user_id")
        .with_columns(gap.alias("gap_ms"))
        .filter(pl.col("gap_ms") <= window_ms)
        # one candidate per (user, query, video): its closest search
        .sort(["user_id", "query", "video_id", "gap_ms", "request_id"])
        .unique(subset=["user_id", "query", "video_id"], keep="first", maintain_order=True)
    )
    # the user's closest pairs first (ties: query, video), counted by a running index per user
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    first_of_user = pl.col("user_id") != pl.col("user_id").shift(1)
    rank = idx - pl.when(first_of_user.fill_null(True)).then(idx).forward_fill()
    capped = near.sort(["user_id", "gap_ms", "query", "video_id"]).filter(rank < max_per_user)
    return (
        capped.sort(["query", "video_id", "gap_ms", "request_id"])
        .unique(subset=["query", "video_id"], keep="first", maintain_order=True)
        .select(
            "query",
            "video_id",
            "request_id",
            "session_id",
            (pl.col("gap_ms") / 1000).alias("gap_s"),
        )
    )
