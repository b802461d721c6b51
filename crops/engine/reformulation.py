"""Query-level positives: what a user consumed after reformulating.

A user types A, finds nothing good, types B within the window and consumes v: v becomes a
positive for A. Consecutive requests of one user (by time, across session ids) no further
apart than the window form a chain; a video consumed at any step is given to every earlier
query of the chain that differs from the consuming query (A -> B -> C gives C's videos to
A and B).
"""

from __future__ import annotations

import polars as pl

from crops.schema import log_requests, long_play


def chains(search: pl.LazyFrame, window_s: float) -> pl.LazyFrame:
    """Requests with their chain id, step in the chain and whether the chain has several.

    Sorted by (user, ts, request), so chain starts are where the link to the previous row
    breaks; ids and steps come from running sums, not per-group windows (this is the hot
    path of mining a large log).
    """
    window_ms = int(round(window_s * 1000))
    req = log_requests(search).sort(["user_id", "ts", "request_id"])
    gap = (pl.col("ts") - pl.col("ts").shift(1)).dt.total_milliseconds()
    same_user = pl.col("user_id") == pl.col("user_id").shift(1)
    linked = (same_user & (gap <= window_ms)).fill_null(False)
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    return (
        req.with_columns(linked.alias("_linked"))
        .with_columns(
            (~pl.col("_linked")).cast(pl.Int64).cum_sum().alias("chain"),
            (idx - pl.when(~pl.col("_linked")).then(idx).forward_fill()).alias("step"),
            (pl.col("_linked") | pl.col("_linked").shift(-1).fill_null(False)).alias("in_chain"),
        )
        .drop("_linked")
    )


def consumed(search: pl.LazyFrame, long_play_ms: int) -> pl.LazyFrame:
    """(request_id, video_id) of clicks that became long plays: the one consumption rule."""
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    return search.filter(pl.col("clicked") & lp).select("request_id", "video_id").unique()


def reformulation_candidates(
    search: pl.LazyFrame, window_s: float, long_play_ms: int
) -> pl.LazyFrame:
    """(query, video_id, request_id, session_id, later_query) before the relevance filter.

    request_id and session_id are the earlier query's (the provenance of the positive).
    """
    ch = chains(search, window_s)
    multi = ch.filter(pl.col("in_chain"))
    earlier = multi.select(
        "chain",
        pl.col("step").alias("e_step"),
        pl.col("query"),
        "request_id",
        "session_id",
    )
    later = multi.select(
        "chain",
        pl.col("step").alias("l_step"),
        pl.col("query").alias("later_query"),
        pl.col("request_id").alias("later_request_id"),
    )
    pairs = (
        earlier.join(later, on="chain")
        .filter((pl.col("e_step") < pl.col("l_step")) & (pl.col("query") != pl.col("later_query")))
        .join(
            consumed(search, long_play_ms).rename({"request_id": "later_request_id"}),
            on="later_request_id",
        )
    )
    return (
        # l_step breaks ties (one earlier request, several later consumers): the nearest wins
        pairs.sort(["query", "video_id", "request_id", "l_step"])
        .unique(subset=["query", "video_id"], keep="first", maintain_order=True)
        .select("query", "video_id", "request_id", "session_id", "later_query")
    )
