"""Query-level positives: what a user consumed after reformulating.

A user types A, finds nothing good, types B within the window and consumes v: v becomes a
positive for A. A chain is a user's requests (by time, across session ids) within the window
of the chain's FIRST request (the paper's "a later query within 90 s"): the first request
more than the window after it starts the next chain, so no chain spans more than the window
however closely its queries follow each other. A video consumed at any step is given to every
earlier query of the chain that differs from the consuming query (A -> B -> C within 90 s of A
gives C's videos to A and B).

The rule is computed for several windows at once over one stacked frame (`windowed_*`): the
miner's window is one of them, so what `crops mine` mines and the yield it reports per window
(`crops.mining.reformulation_window`) are one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from crops.schema import log_requests, long_play


def window_ms(window_s: float) -> int:
    """A window in whole milliseconds, the unit the chains compare timestamps in."""
    return int(round(window_s * 1000))


def chains(search: pl.LazyFrame, window_s: float) -> pl.LazyFrame:
    """Requests with their chain id, step in the chain and whether the chain has several.

    Sorted by (user, ts, request). The one-window case of `windowed_chains`.
    """
    return windowed_chains(search, [window_s]).drop("window_ms")


def windowed_chains(search: pl.LazyFrame, windows_s: Sequence[float]) -> pl.LazyFrame:
    """`chains` for each window, stacked: the requests once per window (window_ms column).

    Sorted by (window, user, ts, request); chain ids are unique across windows. A request
    starts a chain when it is the user's first, or more than the window after the start of
    the chain before it. That start depends on the previous starts, so it is found in rounds
    over sorted columns (running sums and forward fills, no per-group windows; this is the hot
    path of mining a large log): the chains of consecutive gaps within the window are the
    first guess, and each round splits off, from every chain that still spans more than the
    window, the suffix beyond it. Each round works only on the rows still beyond the window,
    and there are as many rounds as the longest run of closely spaced queries holds windows
    (one or two in search logs at 90 s; more at wider windows).
    """
    windows = sorted({window_ms(w) for w in windows_s})
    if not windows:
        raise ValueError("windowed_chains: no window given")
    req = (
        log_requests(search)
        .sort(["user_id", "ts", "request_id"])
        .with_columns(pl.col("ts").dt.epoch("ms").alias("_ms"))
        .collect()
    )
    # window-major copies, each sorted: the stack is sorted by (window, user, ts, request)
    req = pl.concat([req.with_columns(pl.lit(w, pl.Int64).alias("window_ms")) for w in windows])
    gap = pl.col("_ms") - pl.col("_ms").shift(1)
    same_user = (pl.col("user_id") == pl.col("user_id").shift(1)) & (
        pl.col("window_ms") == pl.col("window_ms").shift(1)
    )
    start = (~(same_user & (gap <= pl.col("window_ms")))).fill_null(True).alias("_start")
    rows = req.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"), "_ms", "window_ms", start)
    starts = rows["_start"].clone()
    # rows beyond the window of their chain's start; their first row per chain starts a chain
    beyond = _beyond(rows)
    while beyond.height:
        first = beyond["_i"] != beyond["_i"].shift(1).fill_null(-2) + 1
        starts = starts.scatter(beyond["_i"].filter(first), True)
        beyond = _beyond(beyond.with_columns(first.alias("_start")))
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    linked = ~pl.col("_start")
    return (
        req.drop("_ms")
        .with_columns(starts.alias("_start"))
        .with_columns(
            pl.col("_start").cast(pl.Int64).cum_sum().alias("chain"),
            (idx - pl.when(pl.col("_start")).then(idx).forward_fill()).alias("step"),
            (linked | linked.shift(-1).fill_null(False)).alias("in_chain"),
        )
        .drop("_start")
        .lazy()
    )


def _beyond(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows (_i, _ms, window_ms, _start; consecutive runs sorted by _i) more than their
    window after the start of their chain: the run's first row with _start, or the row after
    a gap in _i."""
    run_start = pl.col("_start") | (pl.col("_i") != pl.col("_i").shift(1) + 1).fill_null(True)
    start_ms = pl.when(run_start).then(pl.col("_ms")).forward_fill()
    return rows.filter(pl.col("_ms") - start_ms > pl.col("window_ms")).select(
        "_i", "_ms", "window_ms", pl.lit(False).alias("_start")
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
    The one-window case of `windowed_candidates`.
    """
    return windowed_candidates(search, [window_s], long_play_ms).drop("window_ms")


def windowed_candidates(
    search: pl.LazyFrame, windows_s: Sequence[float], long_play_ms: int
) -> pl.LazyFrame:
    """(window_ms, query, video_id, request_id, session_id, later_query) for each window:
    what the miner proposes at that window, one row per (query, video) within a window."""
    multi = windowed_chains(search, windows_s).filter(pl.col("in_chain"))
    earlier = multi.select(
        "chain",
        pl.col("step").alias("e_step"),
        pl.col("query"),
        "request_id",
        "session_id",
    )
    # only consuming requests can give a positive: joined before the pairs, not after them
    later = multi.select(
        "window_ms",
        "chain",
        pl.col("step").alias("l_step"),
        pl.col("query").alias("later_query"),
        pl.col("request_id").alias("later_request_id"),
    ).join(
        consumed(search, long_play_ms).rename({"request_id": "later_request_id"}),
        on="later_request_id",
    )
    pairs = earlier.join(later, on="chain").filter(
        (pl.col("e_step") < pl.col("l_step")) & (pl.col("query") != pl.col("later_query"))
    )
    key = ["window_ms", "query", "video_id"]
    return (
        # l_step breaks ties (one earlier request, several later consumers): the nearest wins
        pairs.sort([*key, "request_id", "l_step"])
        .unique(subset=key, keep="first", maintain_order=True)
        .select(*key, "request_id", "session_id", "later_query")
    )
