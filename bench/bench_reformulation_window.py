"""Benchmark: the reformulation-window report (gaps and yield at every reported window, one
stacked pass) against the miner's own reformulation join at the mined window alone.

The report replaces that join in `crops mine` (the mined window is one of the stacked
windows), so the ratio is what the report adds to mining the search log. Prints seconds,
peak memory and the ratio, and checks that the stacked frame's mined window is the miner's.

    python bench/bench_reformulation_window.py                  # simulate default into a temp dir
    python bench/bench_reformulation_window.py --scale large    # >= 10 M search_log rows
    python bench/bench_reformulation_window.py --world DIR      # an existing world
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure  # noqa: E402
from _world import add_world_args, bench_world  # noqa: E402

from crops.mining.config import MineConfig  # noqa: E402
from crops.mining.reformulation import (  # noqa: E402
    reformulation_candidates,
    window_ms,
    windowed_candidates,
)
from crops.mining.reformulation_window import (  # noqa: E402
    next_query_gaps,
    report_windows,
    window_report,
)

REPEATS = 3


def bench(world: Path) -> None:
    cfg = MineConfig()
    search_path = world / "search_log.parquet"
    search = pl.read_parquet(search_path).lazy()  # in memory, as `crops mine` holds it
    rows = pq.ParquetFile(search_path).metadata.num_rows
    mined, windows = cfg.reformulation_window_s, report_windows(cfg.reformulation_window_s)

    def miner() -> pl.DataFrame:
        return reformulation_candidates(search, mined, cfg.long_play_ms).collect()

    def report() -> tuple[pl.DataFrame, dict]:
        cands, gaps = pl.collect_all(
            [windowed_candidates(search, windows, cfg.long_play_ms), next_query_gaps(search)]
        )
        return cands, window_report(gaps["gap_s"], cands, mined)

    refs, ours = [], []
    for _ in range(REPEATS):  # alternating, best of each
        refs.append(measure("miner, mined window", miner))
        ours.append(measure("report, all windows", report))
    ref = min(refs, key=lambda m: m.seconds)
    our = min(ours, key=lambda m: m.seconds)
    print(f"\n== {world}: {rows:,} search_log rows; windows {windows} s; best of {REPEATS}")
    print(f"{'run':<24}{'seconds':>9}{'peak RSS MiB':>15}")
    for m in (ref, our):
        print(f"{m.name:<24}{m.seconds:>9.2f}{m.peak_rss_mib:>15,.0f}")
    print(f"ratio report / miner time: {our.seconds / ref.seconds:.2f}x")
    cands, rep = our.result
    same = cands.filter(pl.col("window_ms") == window_ms(mined)).drop("window_ms")
    print(f"mined window agrees with the miner: {'yes' if same.equals(ref.result) else 'no'}")
    print("yield:", ", ".join(f"{r['window_s']:g} s {r['positives']:,}" for r in rep["yield"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p, default_scale="default")
    with bench_world(p.parse_args()) as world:
        bench(world)


if __name__ == "__main__":
    main()
