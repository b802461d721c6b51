"""Benchmark: `crops ingest mapped` on a platform-shaped export of a simulated world, phase by
phase, against reading and rewriting the same files with polars alone.

The world's videos, search log and feed log are written as a platform would export them
(CSV with its own column names, string user/session/request ids, string timestamps, tags
joined by "|"), with a mapping YAML.
The import is timed in its phases: `read` (parse the files through the mapping), `check`
(map ids and conform + row-check the tables: `crops.schema.check_tables`, the code of
`crops validate`) and the whole `crops.ingest.formats.run`. The reference is the floor of any
importer: polars reading the same CSV files and writing them as Parquet. Prints seconds, rows
per second, peak memory and the ratio of each phase to the reference.

    python bench/bench_ingest.py                    # simulate default into a temp dir
    python bench/bench_ingest.py --scale large      # >= 10 M search_log rows
    python bench/bench_ingest.py --world DIR        # an existing world
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _measure import Measured, measure  # noqa: E402
from _world import add_world_args, bench_world  # noqa: E402

from crops.ingest.formats import IngestOptions, run  # noqa: E402
from crops.ingest.ids import ID_COLUMNS, IdTable  # noqa: E402
from crops.ingest.mapped import read  # noqa: E402
from crops.ingest.tables import WHERE  # noqa: E402
from crops.schema import check_tables  # noqa: E402

#: contract column -> the export's column name, per table (a platform's own names)
RENAMES = {
    "videos": {
        "video_id": "item_id",
        "caption": "title",
        "tags": "hashtags",
        "category": "channel",
        "upload_ts": "created_at",
    },
    "search_log": {
        "user_id": "uid",
        "session_id": "sid",
        "request_id": "req",
        "ts": "event_time",
        "query": "q",
        "video_id": "item",
        "stage": "stage",
        "position": "rank",
        "clicked": "click",
        "watch_ms": "play_ms",
        "duration_ms": "dur_ms",
    },
    "rec_log": {
        "user_id": "uid",
        "ts": "event_time",
        "video_id": "item",
        "watch_ms": "play_ms",
        "duration_ms": "dur_ms",
    },
}
#: id columns exported as strings ("u-123"); video ids stay decimal integers (kept as they are)
STRING_IDS = ("user_id", "session_id", "request_id")
FILES = {"videos": "videos.csv", "search_log": "search.csv", "rec_log": "feed.csv"}
TS = "%Y-%m-%d %H:%M:%S%.3f"


def export(world: Path, dest: Path) -> tuple[Path, dict[str, int]]:
    """The world's tables as a platform's CSV export, and the mapping that reads it back."""
    dest.mkdir(parents=True)
    rows, lines = {}, ["tables:"]
    for name, renames in RENAMES.items():
        df = pl.read_parquet(world / f"{name}.parquet", columns=list(renames))
        ts = next(c for c in ("ts", "upload_ts") if c in renames)
        df = df.with_columns(pl.col(ts).dt.strftime(TS))
        if "tags" in renames:
            df = df.with_columns(pl.col("tags").list.join("|"))
        df = df.with_columns(  # string ids, as platforms log them: ingest hashes these to int64
            pl.format(f"{col[0]}-{{}}", pl.col(col)).alias(col)
            for col in STRING_IDS
            if col in renames
        )
        df.rename(renames).write_csv(dest / FILES[name])
        rows[name] = df.height
        lines += [f"  {name}:", f"    file: {FILES[name]}", "    columns:"]
        lines += [f"      {contract}: {source}" for contract, source in renames.items()]
        lines += [f'    ts_format: "{TS}"', "    timezone: UTC"]
        if "tags" in renames:
            lines.append('    list_separator: "|"')
        if "clicked" in renames:
            lines += ['    true_values: ["true"]', '    false_values: ["false"]']
    mapping = dest / "mapping.yaml"
    mapping.write_text("\n".join(lines) + "\n")
    return mapping, rows


def reference(src: Path, out: Path) -> None:
    """Polars alone: read each CSV and write it as Parquet (no mapping, no checks)."""
    out.mkdir(exist_ok=True)
    for name, file in FILES.items():
        pl.read_csv(src / file).write_parquet(out / f"{name}.parquet")


def check(src: Path, options: IngestOptions) -> int:
    """The read phase's tables through id mapping and `check_tables` (what `write` checks)."""
    imported = read(src, options)
    ids = IdTable()
    tables = {name: df.drop(WHERE, strict=False) for name, df in imported.tables.items()}
    arrow = {
        name: (
            df.with_columns(
                ids.map(kind, df[col]) for col, kind in ID_COLUMNS.items() if col in df.columns
            ).to_arrow(),
            name,
        )
        for name, df in tables.items()
    }
    return sum(r.quarantined for _, _, r in check_tables(arrow))


def bench(world: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "export"
        mapping, rows = export(world, src)
        total = sum(rows.values())
        options = IngestOptions(mapping=mapping)
        ref = measure("polars read CSV + write Parquet", lambda: reference(src, Path(tmp) / "ref"))
        phases = [
            measure("ingest: read (mapping)", lambda: read(src, options)),
            measure("ingest: read + check", lambda: check(src, options)),
            measure("ingest: whole run", lambda: run("mapped", src, Path(tmp) / "out", options)),
        ]
    manifest = phases[-1].result
    print(f"\n== {world}: " + ", ".join(f"{n} {r:,}" for n, r in rows.items()) + " rows")
    print(f"{'run':<34}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>15}{'ratio':>8}")

    def line(m: Measured) -> str:
        return (
            f"{m.name:<34}{m.seconds:>9.2f}{total / m.seconds:>12,.0f}"
            f"{m.peak_rss_mib:>15,.0f}{m.seconds / ref.seconds:>7.2f}x"
        )

    for m in (ref, *phases):
        print(line(m))
    print("ratio: seconds / the reference's (polars read CSV + write Parquet)")
    bad = {t: r["quarantined"] for t, r in manifest["tables"].items() if r["quarantined"]}
    print(
        f"imported: {sum(r['valid'] for r in manifest['tables'].values()):,} valid rows,"
        f" {manifest['unreadable']['rows']:,} unreadable, quarantined {bad or 'none'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p, default_scale="default")
    with bench_world(p.parse_args()) as world:
        bench(world)


if __name__ == "__main__":
    main()
