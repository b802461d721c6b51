"""Benchmark: simulating worlds, in rows per second and peak memory.

Reference, in the same process: writing a search_log of the same row count with pyarrow alone
(columns drawn with NumPy, no simulation), the I/O floor any simulator pays. Prints the ratio.

    python bench/bench_simulate.py            # default (3-minute budget), then large (>= 10 M)
    python bench/bench_simulate.py --scale tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure  # noqa: E402

from crops.schema import SEARCH_LOG, STAGES, TS  # noqa: E402
from crops.world.config import EPOCH_MS, WorldConfig  # noqa: E402
from crops.world.simulate import simulate  # noqa: E402


def reference_write(rows: int, out: Path) -> int:
    """Write `rows` random search_log rows with pyarrow in 1 M-row batches."""
    rng = np.random.default_rng(0)
    queries = pa.array([f"query {i}" for i in range(500)])
    with pq.ParquetWriter(out, SEARCH_LOG, compression="zstd") as w:
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            req = np.sort(rng.integers(0, rows // 60 + 1, n))
            w.write_table(
                pa.table(
                    {
                        "user_id": rng.integers(1, 40_000, n),
                        "session_id": req // 2,
                        "request_id": req,
                        "ts": pa.array(EPOCH_MS + req * 1000, pa.int64()).cast(TS),
                        "query": queries.take(pa.array(rng.integers(0, 500, n))),
                        "video_id": rng.integers(1, 100_000, n),
                        "stage": pa.array(STAGES).take(pa.array(rng.integers(0, 3, n))),
                        "position": pa.array(rng.integers(0, 60, n), pa.int32()),
                        "clicked": rng.random(n) < 0.02,
                        "watch_ms": rng.integers(0, 60_000, n),
                        "duration_ms": rng.integers(5_000, 300_000, n),
                    },
                    schema=SEARCH_LOG,
                )
            )
    return rows


def run(scale: str, budget_s: float | None) -> None:
    cfg = WorldConfig.for_scale(scale, seed=1)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        sim = measure(f"simulate {scale}", lambda: simulate(cfg, Path(tmp) / "world"))
        rows = sim.result["counts"]["search_log"]
        all_rows = rows + sim.result["counts"]["rec_log"]
        ref = measure("pyarrow write", lambda: reference_write(rows, Path(tmp) / "ref.parquet"))
    print(f"\n== {scale}: {rows:,} search_log rows, {all_rows:,} log rows in all")
    print(f"{'run':<22}{'seconds':>10}{'rows/s':>14}{'peak RSS MiB':>15}{'at start':>10}")
    for m in (sim, ref):
        print(
            f"{m.name:<22}{m.seconds:>10.1f}{rows / m.seconds:>14,.0f}"
            f"{m.peak_rss_mib:>15,.0f}{m.start_rss_mib:>10,.0f}"
        )
    print(f"ratio simulate / reference time: {sim.seconds / ref.seconds:.1f}x")
    if budget_s is not None:
        verdict = "within" if sim.seconds <= budget_s else "OVER"
        print(f"budget {budget_s:.0f} s: {verdict} ({sim.seconds:.1f} s)")
    if scale == "large":
        print(f">= 10 M search_log rows: {'yes' if rows >= 10_000_000 else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=["tiny", "default", "large"], action="append")
    args = p.parse_args()
    for scale in args.scale or ["default", "large"]:
        run(scale, budget_s=180.0 if scale == "default" else None)


if __name__ == "__main__":
    main()
