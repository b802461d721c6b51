"""Hierarchical Label Assignment (the paper's Table 1) and the samples table.

Labels 1..4 of the search cascade come straight from the log: clicked (4), shown but not
clicked (3), ranked but never shown (2), filtered out before ranking (1). The miners add 5
(reformulation) and 4 (recfeed, llm). A (query, video) pair seen several ways keeps its highest
label; among equal labels, the more direct evidence wins (SOURCE_PRIORITY).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from crops.schema import HLA_LABELS, SAMPLES

#: Tie-break between sources of the same label: observed behaviour before inferred.
SOURCE_PRIORITY = ("reformulation", "click", "recfeed", "llm", "exposed", "ranked", "prefiltered")

STAGE_SOURCE = (
    pl.when(pl.col("clicked"))
    .then(pl.lit("click"))
    .when(pl.col("stage") == "shown")
    .then(pl.lit("exposed"))
    .when(pl.col("stage") == "ranked")
    .then(pl.lit("ranked"))
    .otherwise(pl.lit("prefiltered"))
)


def cascade_samples(search: pl.LazyFrame) -> pl.LazyFrame:
    """Labels 1..4 per (query, video): the best stage it reached, with one request as provenance."""
    rows = search.select(
        "query",
        "video_id",
        "request_id",
        "session_id",
        STAGE_SOURCE.alias("source"),
    ).with_columns(pl.col("source").replace_strict(HLA_LABELS, return_dtype=pl.Int8).alias("label"))
    best = pl.col("label") == pl.col("label").max()
    return rows.group_by(["query", "video_id"]).agg(
        pl.col("label").max(),
        pl.col("source").filter(best).first(),
        pl.col("request_id").filter(best).min(),
        # the session of that same request (not the smallest session id among the best)
        pl.col("session_id").filter(best).sort_by(pl.col("request_id").filter(best)).first(),
    )


def labelled(frame: pl.LazyFrame, source: str, relevance: str | None = None) -> pl.LazyFrame:
    """A miner's (query, video_id, request_id, session_id[, score]) as samples of `source`."""
    return frame.select(
        "query",
        "video_id",
        pl.lit(HLA_LABELS[source], pl.Int8).alias("label"),
        pl.lit(source).alias("source"),
        (pl.col(relevance) if relevance else pl.lit(None)).cast(pl.Float32).alias("relevance"),
        pl.col("request_id").cast(pl.Int64),
        pl.col("session_id").cast(pl.Int64),
    )


def assemble(parts: list[pl.LazyFrame]) -> pl.DataFrame:
    """Union the sources; one row per (query, video): highest label, then SOURCE_PRIORITY."""
    columns = [f.name for f in SAMPLES]
    frames = []
    for part in parts:
        p = part
        if "relevance" not in p.collect_schema().names():
            p = p.with_columns(pl.lit(None, pl.Float32).alias("relevance"))
        frames.append(p.select(columns).with_columns(pl.col("relevance").cast(pl.Float32)))
    priority = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    return (
        pl.concat(frames, how="vertical_relaxed")
        .with_columns(pl.col("source").replace_strict(priority, return_dtype=pl.Int8).alias("_p"))
        .sort(["query", "video_id", "label", "_p"], descending=[False, False, True, False])
        .unique(subset=["query", "video_id"], keep="first", maintain_order=True)
        .drop("_p")
        .collect()
    )


def to_arrow(samples: pl.DataFrame) -> pa.Table:
    """The samples frame in the exact `samples` contract schema."""
    return samples.to_arrow().cast(SAMPLES)
