"""What the reformulation window costs and recovers: evidence for setting it from one's logs.

Two figures over the search log, in one pass each: (a) the gap from each request to the
user's next different query (the miner's pairing: the same user across session ids, any
later query that differs), whatever the gap; (b) the miner's yield at several windows: the
reformulation positives it proposes (long-play clicks of a later, different query of the
chain, one per (query, video)) before the relevance filter, which keeps or drops a pair
whatever the window. The windows, gap edges and quantiles are the constants below.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from crops.mining.reformulation import window_ms
from crops.schema import log_requests

#: The windows the yield is reported at (s); the mined window is always added.
YIELD_WINDOWS_S: tuple[float, ...] = (30, 60, 90, 180, 300, 600, 1800)
#: The gap histogram's upper bin edges (s), inclusive like the window; a last bin takes the rest.
GAP_EDGES_S: tuple[float, ...] = (10, 30, 60, 90, 180, 300, 600, 1800)
#: The gap quantiles reported (linear interpolation, as numpy's default).
GAP_QUANTILES: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)


def report_windows(mined_window_s: float) -> list[float]:
    """The windows to count the yield at: YIELD_WINDOWS_S and the mined one, ascending."""
    return sorted({*map(float, YIELD_WINDOWS_S), float(mined_window_s)})


def next_query_gaps(search: pl.LazyFrame) -> pl.LazyFrame:
    """(request_id, gap_s): each request's gap to its user's next different query (null when
    the user searched nothing else after it). Requests by (user, ts, request) as the miner's
    chains; a run of the same query ends at the next query that differs."""
    same_run = (pl.col("user_id") == pl.col("user_id").shift(1)) & (
        pl.col("query") == pl.col("query").shift(1)
    )
    run_start = (~same_run).fill_null(True)

    def next_run(column: str) -> pl.Expr:
        """The column at the first row of the next run after each row."""
        return pl.when(run_start).then(pl.col(column)).shift(-1).backward_fill()

    ms = pl.col("ts").dt.epoch("ms")
    return (
        log_requests(search)
        .sort(["user_id", "ts", "request_id"])
        .with_columns(ms.alias("_ms"))
        .select(
            "request_id",
            pl.when(next_run("user_id") == pl.col("user_id"))
            .then((next_run("_ms") - pl.col("_ms")) / 1000)
            .alias("gap_s"),
        )
    )


def gap_summary(gaps: pl.Series) -> dict:
    """Counts, quantiles and the fixed-edge histogram of gaps (s; nulls: no next query)."""
    known = gaps.drop_nulls()
    edges = [0.0, *map(float, GAP_EDGES_S)]
    labels = [f"{_s(lo)}-{_s(hi)} s" for lo, hi in zip(edges, edges[1:], strict=False)]
    labels.append(f">{_s(edges[-1])} s")
    counts = dict.fromkeys(labels, 0)
    if known.len():
        binned = known.cut(list(edges[1:]), labels=labels, left_closed=False)
        counts |= {str(k): int(v) for k, v in binned.value_counts().iter_rows()}
    return {
        "requests": gaps.len(),
        "with_next_query": known.len(),
        "quantiles_s": {
            f"p{round(q * 100)}": (None if not known.len() else known.quantile(q, "linear"))
            for q in GAP_QUANTILES
        },
        "histogram": counts,
    }


def window_yield(candidates: pl.DataFrame, windows_s: Sequence[float], mined_s: float) -> list:
    """Per window: the positives proposed (rows of `windowed_candidates`) and their share of
    the widest window's."""
    counts = dict(candidates.group_by("window_ms").len().iter_rows())
    widest = counts.get(window_ms(max(windows_s)), 0)
    return [
        {
            "window_s": w,
            "positives": (n := counts.get(window_ms(w), 0)),
            "share_of_widest": n / widest if widest else None,
            "mined": window_ms(w) == window_ms(mined_s),
        }
        for w in windows_s
    ]


def window_report(gaps: pl.Series, candidates: pl.DataFrame, mined_s: float) -> dict:
    """report.json's `reformulation_window`: gaps and yield, and what they count."""
    return {
        "mined_window_s": mined_s,
        "gaps": {
            "definition": "each request to its user's next different query (across session"
            " ids), whatever the gap",
            **gap_summary(gaps),
        },
        "yield": window_yield(candidates, report_windows(mined_s), mined_s),
        "yield_counts": "reformulation positives the miner proposes at each window (long-play"
        " clicks, one per (query, video)), before the relevance filter",
    }


def _s(x: float) -> str:
    """An edge in seconds without a trailing .0."""
    return f"{x:g}"
