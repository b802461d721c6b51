"""Benchmark: mining a world's logs without the filter's model, in rows per second and peak memory.

Reference, in the same process: a straightforward DuckDB SQL formulation of the same
reformulation join (one row per request, window chains, earlier/later pairs within a chain,
long-play clicks of the later request, one row per (query, video) with the smallest earlier
request_id), over the same Parquet file with two threads. Prints the ratio, checks that both
give the same (query, video_id, request_id) rows, and times the whole log mining (cascade,
reformulation and recfeed candidates) as well.

    python bench/bench_mine.py                     # simulate large (>= 10 M rows) into a temp dir
    python bench/bench_mine.py --world DIR         # an existing world
    python bench/bench_mine.py --scale default     # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _measure import Measured, measure  # noqa: E402
from _world import add_world_args, bench_world  # noqa: E402

from crops.mining.hla import cascade_samples  # noqa: E402
from crops.mining.recfeed import recfeed_candidates  # noqa: E402
from crops.mining.reformulation import reformulation_candidates  # noqa: E402

WINDOW_S = 90
LONG_PLAY_MS = 18_000
FEED_WINDOW_S = 1_800
MAX_PER_USER = 100
GOAL_ROWS_PER_S = 1_000_000
GOAL_PEAK_MIB = 8 * 1024
KEY = ["query", "video_id", "request_id"]

# The reformulation join as one would write it in SQL; $1 = search_log path, $2 = window ms,
# $3 = long-play threshold ms.
REFORMULATION_SQL = """
WITH s AS (SELECT * FROM read_parquet($1)),
req AS (
    SELECT request_id, any_value(user_id) AS user_id, any_value(session_id) AS session_id,
           any_value(ts) AS ts, any_value(query) AS query
    FROM s GROUP BY request_id
),
gaps AS (
    SELECT *, epoch_ms(ts) - epoch_ms(LAG(ts) OVER (PARTITION BY user_id ORDER BY ts, request_id))
              AS gap_ms
    FROM req
),
chained AS (
    SELECT *, SUM(CASE WHEN gap_ms <= $2 THEN 0 ELSE 1 END)
              OVER (PARTITION BY user_id ORDER BY ts, request_id ROWS UNBOUNDED PRECEDING)
              AS chain
    FROM gaps
),
stepped AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, chain ORDER BY ts, request_id) AS step
    FROM chained
),
consumed AS (
    SELECT DISTINCT request_id, video_id FROM s
    WHERE clicked AND watch_ms >= LEAST(duration_ms, $3)
),
pairs AS (
    SELECT e.query, c.video_id, e.request_id, e.session_id, l.query AS later_query
    FROM stepped e
    JOIN stepped l
      ON e.user_id = l.user_id AND e.chain = l.chain AND e.step < l.step AND e.query <> l.query
    JOIN consumed c ON c.request_id = l.request_id
)
SELECT query, video_id, min(request_id) AS request_id,
       arg_min(session_id, request_id) AS session_id,
       arg_min(later_query, request_id) AS later_query
FROM pairs GROUP BY query, video_id
"""


def ours(search: Path) -> pl.DataFrame:
    return reformulation_candidates(pl.scan_parquet(search), WINDOW_S, LONG_PLAY_MS).collect()


def duck(search: Path) -> pl.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("PRAGMA threads=2")
        params = [str(search), WINDOW_S * 1000, LONG_PLAY_MS]
        table = con.sql(REFORMULATION_SQL, params=params).to_arrow_table()
    finally:
        con.close()
    return pl.from_arrow(table)  # type: ignore[return-value]


def whole(search: Path, rec: Path) -> list[pl.DataFrame]:
    s, r = pl.scan_parquet(search), pl.scan_parquet(rec)
    return pl.collect_all(
        [
            cascade_samples(s),
            reformulation_candidates(s, WINDOW_S, LONG_PLAY_MS),
            recfeed_candidates(s, r, FEED_WINDOW_S, MAX_PER_USER, LONG_PLAY_MS),
        ]
    )


def agree(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    ka = a.select(KEY).cast({"video_id": pl.Int64, "request_id": pl.Int64})
    kb = b.select(KEY).cast({"video_id": pl.Int64, "request_id": pl.Int64})
    if ka.height != kb.height:
        return False
    return ka.sort(KEY).equals(kb.sort(KEY))


REPEATS = 3


def row(m: Measured, rows: int) -> str:
    return (
        f"{m.name:<26}{m.seconds:>9.2f}{rows / m.seconds:>14,.0f}"
        f"{m.peak_rss_mib:>15,.0f}{m.start_rss_mib:>10,.0f}"
    )


def bench(world: Path) -> None:
    search, rec = world / "search_log.parquet", world / "rec_log.parquet"
    n_search = pq.ParquetFile(search).metadata.num_rows
    n_rec = pq.ParquetFile(rec).metadata.num_rows
    print(
        f"\n== {world}: {n_search:,} search_log rows, {n_rec:,} rec_log rows; "
        f"polars threads {pl.thread_pool_size()}, duckdb threads 2, cpus {os.cpu_count()}"
    )

    # best of REPEATS for each side, alternating, so neither gets the cold cache alone
    mines, refs = [], []
    for _ in range(REPEATS):
        mines.append(measure("ours (polars)", lambda: ours(search)))
        refs.append(measure("duckdb sql", lambda: duck(search)))
    mine = min(mines, key=lambda m: m.seconds)
    ref = min(refs, key=lambda m: m.seconds)
    full = measure("whole mining (3 miners)", lambda: whole(search, rec))
    print(f"reformulation join: best of {REPEATS} alternating runs each")

    print(f"{'run':<26}{'seconds':>9}{'rows/s':>14}{'peak RSS MiB':>15}{'at start':>10}")
    print(row(mine, n_search))
    print(row(ref, n_search))
    print(row(full, n_search + n_rec) + "   (rows: search_log + rec_log)")
    speed = ref.seconds / mine.seconds
    print(f"ratio ours / duckdb speed: {speed:.2f}x")
    same = agree(mine.result, ref.result)
    print(
        f"results agree: {'yes' if same else 'no'} "
        f"(ours {mine.result.height:,} rows, duckdb {ref.result.height:,} rows)"
    )
    print(f"whole mining outputs: {', '.join(f'{f.height:,}' for f in full.result)} rows")
    print(f"goal >= 1 M rows/s: {'yes' if n_search / mine.seconds >= GOAL_ROWS_PER_S else 'no'}")
    print(f"goal no slower than DuckDB: {'yes' if mine.seconds <= ref.seconds else 'no'}")
    peak = max(mine.peak_rss_mib, full.peak_rss_mib)
    print(f"goal peak < 8 GiB: {'yes' if peak < GOAL_PEAK_MIB else 'no'} ({peak:,.0f} MiB)")
    if n_search < 10_000_000:
        print("(fewer than 10 M search_log rows: the goals are stated for the large world)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p, default_scale="large")
    with bench_world(p.parse_args()) as world:
        bench(world)


if __name__ == "__main__":
    main()
