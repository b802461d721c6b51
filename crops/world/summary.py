"""The filter bubble in numbers, measured from the written logs (plus the world's truth).

Behavioural metrics (CTR, long play, reformulation) read only the contract tables, exactly as
they would on a real platform; coverage and sense purity also need the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from crops.schema import long_play
from crops.world import taxonomy as tx


def request_pairs(search: pl.LazyFrame, window_s: int) -> pl.LazyFrame:
    """Consecutive requests of a session: (request, query) -> (next request, next query, gap).

    A pair is a reformulation when the next query differs and comes within `window_s`.
    """
    req = (
        search.group_by("request_id")
        .agg(pl.first("user_id"), pl.first("session_id"), pl.first("ts"), pl.first("query"))
        .sort(["session_id", "ts", "request_id"])
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


def behaviour(search: pl.LazyFrame, window_s: int, long_play_ms: int) -> dict[str, float]:
    """CTR, long-play rate and query-reformulation rate of whatever produced the log."""
    shown = search.filter(pl.col("stage") == "shown")
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    clicks = shown.select(
        pl.len().alias("impressions"),
        pl.col("clicked").sum().alias("clicks"),
        (pl.col("clicked") & lp).sum().alias("long_plays"),
    ).collect()
    pairs = request_pairs(search, window_s)
    ref = pairs.select(
        pl.len().alias("requests"),
        pl.col("reformulated").sum().alias("reformulated"),
        pl.col("session_id").filter(pl.col("reformulated")).n_unique().alias("sessions"),
    ).collect()
    imp, clk, lpl = (int(clicks[c][0]) for c in ("impressions", "clicks", "long_plays"))
    n_req, n_ref = int(ref["requests"][0]), int(ref["reformulated"][0])
    return {
        "requests": n_req,
        "impressions": imp,
        "ctr": clk / imp if imp else 0.0,
        "long_play_rate": lpl / clk if clk else 0.0,
        "reformulation_rate": n_ref / n_req if n_req else 0.0,
        "reformulation_sessions_90s": int(ref["sessions"][0]),
    }


def summarize(out: str | Path, world) -> dict:
    """All the numbers `crops simulate` prints and stores under world.json `summary`."""
    out = Path(out)
    cfg = world.cfg
    search = pl.scan_parquet(out / "search_log.parquet")
    window = cfg.reformulation_window_s
    result = behaviour(search, window, cfg.long_play_ms)

    # the share of videos consumed after a reformulation never shown for the original query
    pairs = request_pairs(search, window).filter(pl.col("reformulated"))
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), cfg.long_play_ms)
    consumed = search.filter(pl.col("clicked") & lp).select("request_id", "video_id")
    after = pairs.select(pl.col("next_request_id").alias("request_id"), "query").join(
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
    truth_req = pl.scan_parquet(out / "truth" / "requests.parquet").filter(
        pl.col("split") == "train"
    )
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
