"""Benchmark: the miners' precision against the simulator's truth at several relevance thresholds.

Mines a simulated world's logs with `MineConfig`'s rules (reformulation chains, the per-user
feed cap, the search cascade's levels), scores every candidate once with the relevance filter
(all-MiniLM-L6-v2; the score is (1 + cos) / 2), and for each threshold on that scale reports,
per source, how many candidates it keeps and their precision against the world's truth: the
share with grade >= 2 (same topic) and grade 3 (same facet) for the query's intent. The
reference in the same run is the click positives (label 4 from the search log, no filter).
Level samples (labels 1-3) are reported the same way, with the share of their grade-0 videos
that the threshold drops (what `crops mine --level-filter` would remove). The last column is
the share of what is kept that the search never showed for its query: the filter favours
videos textually close to the query, which the production search tends to show already, so a
higher threshold buys precision with positives from inside the filter bubble.

The truth is read here, to measure; nothing that mines reads it.

    python bench/bench_miner_precision.py                   # simulate default seed 1 in a temp dir
    python bench/bench_miner_precision.py --world DIR       # an existing world
    python bench/bench_miner_precision.py --json out.json   # the table as JSON too
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _world import add_world_args, bench_world  # noqa: E402

from crops.mining.config import MineConfig
from crops.mining.hla import cascade_samples
from crops.mining.recfeed import recfeed_candidates
from crops.mining.reformulation import reformulation_candidates
from crops.mining.relevance import RelevanceFilter
from crops.schema import video_text

#: Thresholds on the (1 + cos) / 2 scale: cosine 0, 0.1, 0.2 (the paper's 0.6) to 0.3 in steps
#: of 0.02, and 0.4.
THRESHOLDS = (0.5, 0.55, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.7)
SOURCES = ("reformulation", "recfeed", "click", "exposed", "ranked", "prefiltered")
#: Rows over several sources: the filtered positives together, the level samples together.
GROUPS = {
    "reformulation + recfeed": ("reformulation", "recfeed"),
    "levels 1-3": ("exposed", "ranked", "prefiltered"),
}


def candidates(world: Path, cfg: MineConfig) -> pl.DataFrame:
    """(source, query, video_id, shown) of every miner's candidates, before any filter;
    shown: whether the search ever showed the video for the query (null: never)."""
    search = pl.scan_parquet(world / "search_log.parquet")
    rec = pl.scan_parquet(world / "rec_log.parquet")
    reform, feed, cascade = pl.collect_all(
        [
            reformulation_candidates(search, cfg.reformulation_window_s, cfg.long_play_ms),
            recfeed_candidates(
                search, rec, cfg.feed_window_s, cfg.feed_max_per_user, cfg.long_play_ms
            ),
            cascade_samples(search),
        ]
    )
    shown = (
        search.filter(pl.col("stage") == "shown")
        .select("query", "video_id", pl.lit(True).alias("shown"))
        .unique()
        .collect()
    )
    return pl.concat(
        [
            reform.select(pl.lit("reformulation").alias("source"), "query", "video_id"),
            feed.select(pl.lit("recfeed").alias("source"), "query", "video_id"),
            cascade.select("source", "query", "video_id"),
        ]
    ).join(shown, on=["query", "video_id"], how="left")


def graded(world_dir: Path, cands: pl.DataFrame) -> pl.DataFrame:
    """Each candidate's true grade (0-3) for its query: the simulator's truth, measurement only
    (`crops.evaluate.diagnostics.Truth`, as the experiment's diagnostics grade)."""
    from crops.evaluate.diagnostics import Truth

    return cands.with_columns(
        pl.Series("grade", Truth.load(world_dir).grade_samples(cands), pl.Int8)
    )


def scored(world: Path, cands: pl.DataFrame, model: str) -> pl.DataFrame:
    videos = pl.read_parquet(world / "videos.parquet")
    joined = cands.join(video_text(videos), on="video_id", how="left")
    scorer = RelevanceFilter(model)
    scores = scorer.score(joined["query"].to_list(), joined["text"].fill_null("").to_list())
    return joined.drop("text").with_columns(pl.Series("relevance", scores, pl.Float32))


def table(frame: pl.DataFrame) -> list[dict]:
    """Per source (and group of sources) and threshold (None: no filter): kept, share kept,
    precision >= 2 and = 3, the grade-0 share of what is kept, the share of the source's
    grade-0 candidates the threshold drops, and the share of what is kept that the search
    never showed for its query (what breaks the filter bubble)."""
    rows = []
    for source in (*SOURCES, *GROUPS):
        part = frame.filter(pl.col("source").is_in(GROUPS.get(source, (source,))))
        n, zeros = part.height, int((part["grade"] == 0).sum())
        for t in (None, *THRESHOLDS):
            kept = part if t is None else part.filter(pl.col("relevance") > t)
            k = kept.height
            rows.append(
                {
                    "source": source,
                    "threshold": t,
                    "cosine": None if t is None else round(2 * t - 1, 2),
                    "kept": k,
                    "kept_share": k / n if n else None,
                    "precision_ge2": float((kept["grade"] >= 2).mean()) if k else None,
                    "precision_3": float((kept["grade"] == 3).mean()) if k else None,
                    "grade0_share": float((kept["grade"] == 0).mean()) if k else None,
                    "never_shown": float(kept["shown"].is_null().mean()) if k else None,
                    "grade0_dropped": (
                        (zeros - int((kept["grade"] == 0).sum())) / zeros if zeros else None
                    ),
                }
            )
    return rows


def _f(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:,}"


def render(rows: list[dict]) -> str:
    lines = [
        "| source | threshold (cos) | kept | kept % | precision >= 2 % | precision = 3 % |"
        " grade 0 % | grade-0 dropped % | never shown % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = "none" if r["threshold"] is None else f"{r['threshold']:.2f} ({r['cosine']:+.2f})"
        lines.append(
            f"| {r['source']} | {t} | {r['kept']:,} | {_f(r['kept_share'])} |"
            f" {_f(r['precision_ge2'])} | {_f(r['precision_3'])} | {_f(r['grade0_share'])} |"
            f" {_f(r['grade0_dropped'])} | {_f(r['never_shown'])} |"
        )
    return "\n".join(lines)


def bench(world: Path, model: str, json_out: Path | None) -> None:
    cfg = MineConfig()
    t0 = time.perf_counter()
    cands = candidates(world, cfg)
    t1 = time.perf_counter()
    frame = graded(world, scored(world, cands, model))
    t2 = time.perf_counter()
    rows = table(frame)
    print(
        f"\n== {world}: {cands.height:,} candidates (mined in {t1 - t0:.1f} s; scored with"
        f" {model} and graded in {t2 - t1:.1f} s); rules: chain within"
        f" {cfg.reformulation_window_s:g} s of its first query, feed +-{cfg.feed_window_s:g} s,"
        f" at most {cfg.feed_max_per_user} per user"
    )
    print(render(rows))
    click = next(r for r in rows if r["source"] == "click" and r["threshold"] is None)
    print(
        f"reference: click positives, no filter: precision >= 2 {_f(click['precision_ge2'])} %,"
        f" = 3 {_f(click['precision_3'])} %"
    )
    if json_out:
        json_out.write_text(json.dumps({"world": str(world), "rows": rows}, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p, default_scale="default")
    p.add_argument("--model", default="minilm", help="the relevance filter's model")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args()
    with bench_world(args, truth=True) as world:
        bench(world, args.model, args.json)


if __name__ == "__main__":
    main()
