"""`crops validate DIR` on a tiny simulated world: clean, with corrupted rows, with a bad file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

#: search_log row -> (what is broken, the reason validation must give)
CORRUPT = {
    11: (dict(watch_ms=-1), "negative watch_ms"),
    2_345: (dict(stage="teleported", clicked=False), "unknown stage"),
    40_000: (dict(video_id=-12345), "video_id not in videos"),
    77_777: (dict(query=""), "empty query"),
}


@pytest.fixture
def world(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny world that a test may corrupt."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "world"))


def _table_row(stdout: str, table: str) -> list[str]:
    """The cells of `table`'s row in the printed validation report."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] == table:
            return cells
    raise AssertionError(f"no row for {table} in:\n{stdout}")


def _corrupt_search_log(world: Path) -> int:
    path = world / "search_log.parquet"
    df = pl.read_parquet(path)
    assert df.height > max(CORRUPT)
    for row, (changes, _) in CORRUPT.items():
        df = df.with_columns(
            pl.when(pl.int_range(pl.len()) == row)
            .then(pl.lit(value, dtype=df.schema[col]))
            .otherwise(pl.col(col))
            .alias(col)
            for col, value in changes.items()
        )
    df.write_parquet(path)
    return df.height


def test_clean_world_is_valid(world, run):
    code, out, err = run("validate", world)
    assert code == 0, err
    for table in ("videos", "search_log", "rec_log"):
        cells = _table_row(out, table)
        rows, valid, quarantined = (int(c) for c in cells[1:4])
        assert rows > 0 and valid == rows and quarantined == 0
        assert cells[4] == "-"
        assert pl.read_parquet(world / "_quarantine" / f"{table}.parquet").height == 0
    summary = json.loads((world / "world.json").read_text())["summary"]
    assert "exposure_coverage" in summary
    for key in summary:
        assert key in out
    assert f"{summary['exposure_coverage']:.4f}" in out
    assert "quarantined rows written" not in out


def test_corrupted_rows_are_quarantined_and_counted(world, run):
    total = _corrupt_search_log(world)
    code, out, err = run("validate", world)
    assert code == 0, err  # 4 rows of ~100k: under the 1% default

    q = pl.read_parquet(world / "_quarantine" / "search_log.parquet")
    assert {"row", "reason"} <= set(q.columns)
    assert dict(zip(q["row"].to_list(), q["reason"].to_list(), strict=True)) == {
        row: reason for row, (_, reason) in CORRUPT.items()
    }
    assert q.filter(pl.col("row") == 11)["watch_ms"].to_list() == [-1]

    cells = _table_row(out, "search_log")
    assert [int(c) for c in cells[1:4]] == [total, total - len(CORRUPT), len(CORRUPT)]
    for _, reason in CORRUPT.values():
        assert f"{reason}: 1" in cells[4]
    assert "quarantined rows written" in out
    assert _table_row(out, "videos")[3] == "0"

    saved = json.loads((world / "_quarantine" / "report.json").read_text())
    report = {d["table"]: d for d in saved}
    assert report["search_log"]["quarantined"] == len(CORRUPT)
    assert report["search_log"]["reasons"] == {reason: 1 for _, reason in CORRUPT.values()}


def test_read_only_data_validates_with_the_quarantine_elsewhere(world, run, tmp_path):
    """--out takes the quarantine and report: the input folder is never written (here it is
    read-only, as a mounted dataset is)."""
    _corrupt_search_log(world)
    before = sorted(p.name for p in world.iterdir())
    for path in [world, *world.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        code, out, err = run("validate", world, "--out", tmp_path / "q")
    finally:
        for path in [world, *world.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert code == 0, err
    assert sorted(p.name for p in world.iterdir()) == before  # no _quarantine/ written there
    q = pl.read_parquet(tmp_path / "q" / "search_log.parquet")
    assert set(q["row"].to_list()) == set(CORRUPT)
    assert {d["table"] for d in json.loads((tmp_path / "q" / "report.json").read_text())} >= {
        "videos",
        "search_log",
    }
    assert f"quarantined rows written to {tmp_path / 'q'}" in out.replace("\n", "")
    (tmp_path / "file").write_text("x")
    code, _, err = run("validate", world, "--out", tmp_path / "file")
    assert code == 2 and "not a directory" in err


def test_quarantine_over_the_limit_exits_1(world, run):
    _corrupt_search_log(world)
    code, out, err = run("validate", world, "--max-quarantine-share", "0")
    assert code == 1
    assert "quarantined" in err and "limit" in err
    # the report and the quarantine are still written
    assert _table_row(out, "search_log")[3] == str(len(CORRUPT))
    assert pl.read_parquet(world / "_quarantine" / "search_log.parquet").height == len(CORRUPT)
    # and a generous limit passes the same world
    code, _, err = run("validate", world, "--max-quarantine-share", "0.5")
    assert code == 0, err


def test_clean_world_passes_a_zero_limit(world, run):
    code, _, err = run("validate", world, "--max-quarantine-share", "0")
    assert code == 0, err


@pytest.mark.parametrize(("table", "column"), [("search_log", "watch_ms"), ("rec_log", "ts")])
def test_dropped_column_exits_2_naming_file_and_column(world, run, table, column):
    path = world / f"{table}.parquet"
    pl.read_parquet(path).drop(column).write_parquet(path)
    code, out, err = run("validate", world)
    assert code == 2
    message = " ".join(err.split())
    assert str(path) in message
    assert f"'{column}'" in message
    assert "validation of" not in out  # no report for a file that could not be read


def test_unreadable_videos_exits_2(world, run):
    path = world / "videos.parquet"
    path.write_text("not parquet at all\n")
    code, _, err = run("validate", world)
    assert code == 2
    assert str(path) in " ".join(err.split())
