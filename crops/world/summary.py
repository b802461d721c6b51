"""The filter bubble in numbers, measured from the written logs (plus the world's truth).

Behavioural metrics (CTR, long-play rate, query-reformulation rate) read only the contract
tables, exactly as they would on a real platform. The rest uses the ground truth: exposure
coverage, sense purity, and true reformulations (same intent, within the window) for the
reformulation sessions and what was consumed after them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from crops.schema import log_requests, long_play
from crops.world import taxonomy as tx


def request_pairs(requests: pl.LazyFrame, window_s: int) -> pl.LazyFrame:
    """Consecutive requests of a session: (request, query) -> (next request, next query, gap).

    A pair is a behavioural reformulation when the same user's next query differs and comes
    within `window_s`: what a platform can see without knowing intents.
    """
    req = requests.select("request_id", "session_id", "user_id", "ts", "query").sort(
        ["session_id", "ts", "request_id"]
    )
    nxt = [
        pl.col(c).shift(-1).over("session_id").alias(f"next_{c}")
        for c in ("request_id", "ts", "query", "user_id")
    ]
    return req.with_columns(nxt).with_columns(
        (
            pl.col("next_request_id").is_not_null()
            & (pl.col("next_user_id") == pl.col("user_id"))
            & (pl.col("next_query") != pl.col("query"))
            & ((pl.col("next_ts") - pl.col("ts")).dt.total_milliseconds() <= window_s * 1000)
        ).alias("reformulated")
    )


def behaviour(
    search: pl.LazyFrame,
    window_s: int,
    long_play_ms: int,
    requests: pl.LazyFrame | None = None,
) -> dict[str, float]:
    """CTR, long-play rate and query-reformulation rate of whatever produced the log.

    `requests` lists every request (an online run's requests include those that got no
    results and so wrote no log row); without it the requests are those seen in the log.
    """
    shown = search.filter(pl.col("stage") == "shown")
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    clicks = shown.select(
        pl.len().alias("impressions"),
        pl.col("clicked").sum().alias("clicks"),
        (pl.col("clicked") & lp).sum().alias("long_plays"),
    ).collect()
    pairs = request_pairs(log_requests(search) if requests is None else requests, window_s)
    ref = pairs.select(
        pl.len().alias("requests"),
        pl.col("reformulated").sum().alias("reformulated"),
    ).collect()
    seen = search.select(pl.col("request_id").n_unique()).collect().item()
    imp, clk, lpl = (int(clicks[c][0]) for c in ("impressions", "clicks", "long_plays"))
    n_req, n_ref = int(ref["requests"][0]), int(ref["reformulated"][0])
    return {
        "requests": n_req,
        "requests_without_results": n_req - int(seen),
        "impressions": imp,
        "ctr": clk / imp if imp else 0.0,
        "long_play_rate": lpl / clk if clk else 0.0,
        "reformulation_rate": n_ref / n_req if n_req else 0.0,
        "reformulated_requests": n_ref,
    }


def summarize(out: str | Path, world) -> dict:
    """All the numbers `crops simulate` prints and stores under world.json `summary`."""
    out = Path(out)
    cfg = world.cfg
    search = pl.scan_parquet(out / "search_log.parquet")
    window = cfg.reformulation_window_s
    result = behaviour(search, window, cfg.long_play_ms)

    # true reformulations (same intent, by the truth) within the window, and what they found
    truth_req = pl.scan_parquet(out / "truth" / "requests.parquet").filter(
        pl.col("split") == "train"
    )
    reform = (
        truth_req.filter(pl.col("relation") == "reformulation")
        .select("request_id", "session_id", "ts", pl.col("prev_request_id"))
        .join(
            truth_req.select(
                pl.col("request_id").alias("prev_request_id"),
                pl.col("ts").alias("prev_ts"),
                pl.col("query").alias("orig_query"),
            ),
            on="prev_request_id",
        )
        .filter((pl.col("ts") - pl.col("prev_ts")).dt.total_milliseconds() <= window * 1000)
    )
    result["reformulation_sessions_90s"] = (
        reform.select(pl.col("session_id").n_unique()).collect().item()
    )
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), cfg.long_play_ms)
    consumed = search.filter(pl.col("clicked") & lp).select("request_id", "video_id")
    after = reform.select("request_id", pl.col("orig_query").alias("query")).join(
        consumed, on="request_id"
    )
    shown_q = (
        search.filter(pl.col("stage") == "shown")
        .select("query", "video_id")
        .unique()
        .with_columns(pl.lit(True).alias("was_shown"))
    )
    after = after.join(shown_q, on=["query", "video_id"], how="left").collect()
    result["consumed_after_reformulation"] = after.height
    result["consumed_after_reformulation_never_shown_share"] = (
        float(after["was_shown"].is_null().mean()) if after.height else 0.0
    )

    # exposure coverage: relevant (grade >= 2: same topic) pairs ever shown for the intent
    vtruth = pl.scan_parquet(out / "truth" / "videos.parquet").select("video_id", "topic")
    intents = pl.read_parquet(out / "truth" / "intents.parquet")
    shown_pairs = (
        search.filter(pl.col("stage") == "shown")
        .select("request_id", "video_id")
        .join(truth_req.select("request_id", "intent_id"), on="request_id")
        .join(vtruth, on="video_id")
        .join(
            intents.lazy().select("intent_id", pl.col("topic").alias("intent_topic")),
            on="intent_id",
        )
        .filter(pl.col("topic") == pl.col("intent_topic"))
        .select("intent_id", "video_id")
        .unique()
        .select(pl.len())
        .collect()
        .item()
    )
    per_topic = pl.read_parquet(out / "truth" / "videos.parquet").group_by("topic").len()
    relevant = intents.join(per_topic, on="topic", how="left")["len"].fill_null(0).sum()
    result["relevant_pairs"] = int(relevant)
    result["relevant_pairs_shown"] = int(shown_pairs)
    result["exposure_coverage"] = shown_pairs / relevant if relevant else 0.0

    # ambiguous queries: which sense fills the top three results
    dominant = pl.DataFrame(
        {"query": list(tx.POLYSEMOUS), "dominant": [d for d, _ in tx.POLYSEMOUS.values()]}
    )
    head = (
        search.filter((pl.col("stage") == "shown") & (pl.col("position") < 3))
        .join(dominant.lazy(), on="query")
        .join(vtruth, on="video_id")
        .group_by("request_id")
        .agg(
            (pl.col("topic") == pl.col("dominant")).mean().alias("dominant_share"),
            (pl.col("topic").n_unique() == 1).alias("one_sense"),
        )
        .collect()
    )
    result["ambiguous_requests"] = head.height
    result["ambiguous_head_dominant_sense_share"] = (
        float(head["dominant_share"].mean()) if head.height else 0.0
    )
    result["ambiguous_head_one_sense_share"] = (
        float(head["one_sense"].mean()) if head.height else 0.0
    )
    minor_users = (
        truth_req.join(
            pl.scan_parquet(out / "truth" / "forms.parquet").select("form_id", "kind"), on="form_id"
        )
        .filter(pl.col("kind") == "ambiguous")
        .join(intents.lazy().select("intent_id", "topic"), on="intent_id")
        .join(dominant.lazy().rename({"query": "q"}), left_on="query", right_on="q")
        .select((pl.col("topic") != pl.col("dominant")).mean())
        .collect()
        .item()
    )
    result["ambiguous_minor_sense_request_share"] = float(minor_users or 0.0)

    # the feed reaches what search does not show
    rec = pl.scan_parquet(out / "rec_log.parquet")
    deep = rec.filter(long_play(pl.col("watch_ms"), pl.col("duration_ms"), cfg.long_play_ms))
    shown_any = search.filter(pl.col("stage") == "shown").select("video_id").unique()
    feed = (
        deep.select("video_id")
        .unique()
        .join(shown_any.with_columns(pl.lit(True).alias("s")), on="video_id", how="left")
        .collect()
    )
    result["feed_deep_videos"] = feed.height
    result["feed_deep_videos_never_shown_in_search_share"] = (
        float(feed["s"].is_null().mean()) if feed.height else 0.0
    )
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}
