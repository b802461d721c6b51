"""The reformulation window's evidence: gaps to the next different query and the yield per
window, on a hand-built log with known gaps, against the miner itself and through the CLI."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crops.mining.config import MineConfig
from crops.mining.mine import mine
from crops.mining.reformulation import (
    reformulation_candidates,
    window_ms,
    windowed_candidates,
)
from crops.mining.reformulation_window import (
    GAP_EDGES_S,
    YIELD_WINDOWS_S,
    gap_summary,
    next_query_gaps,
    report_windows,
    window_report,
)
from crops.mining.synthesis import NoSynthesis
from crops.schema import LONG_PLAY_MS, REC_LOG, SEARCH_LOG, VIDEOS

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DUR, LONG, SHORT = 60_000, 20_000, 5_000  # a one-minute video; a long play of it; a short one

# (user, session, request, t_s, query, video, clicked, watch_ms): one row per request
KNOWN = [
    (1, 10, 100, 0, "A", 1, False, 0),
    (1, 10, 101, 20, "B", 2, True, LONG),  # A -> B 20 s
    (2, 20, 200, 0, "C", 1, False, 0),
    (2, 20, 201, 75, "D", 3, True, LONG),  # C -> D 75 s
    (3, 30, 300, 0, "E", 1, False, 0),
    (3, 30, 301, 200, "F", 4, True, LONG),  # E -> F 200 s
    (4, 40, 400, 0, "G", 1, False, 0),
    (4, 40, 401, 900, "H", 5, True, LONG),  # G -> H 900 s
    (5, 50, 500, 0, "I", 1, False, 0),
    (5, 50, 501, 30, "I", 6, True, LONG),  # the same query repeated: no next different query
    (6, 60, 600, 0, "J", 1, False, 0),  # J then another user's K 10 s later: not a pair
    (7, 70, 700, 10, "K", 7, True, LONG),
    (8, 80, 800, 0, "L", 1, False, 0),
    (8, 81, 801, 40, "M", 8, True, LONG),  # a new session of the same user: the miner pairs it
    (9, 90, 900, 0, "N", 1, False, 0),
    (9, 90, 901, 50, "O", 9, True, SHORT),  # O not a long play: a gap, no positive
    (10, 99, 990, 0, "P", 1, False, 0),
    (10, 99, 991, 30, "P", 1, False, 0),  # P, P again, then Q: gaps 60 s and 30 s
    (10, 99, 992, 60, "Q", 10, True, LONG),
]
GAPS = [20, 30, 40, 50, 60, 75, 200, 900]  # sorted; the other 11 requests have no next query
# positives per window: A(20 s), L and P (40, 60 s), C (75 s), E (200 s), G (900 s)
YIELD = {30: 1, 60: 3, 90: 4, 180: 4, 300: 5, 600: 5, 1800: 6}


def search_log(rows: list[tuple] = KNOWN) -> pl.DataFrame:
    """The rows as a search_log in its contract (each request shows one video)."""
    records = [
        dict(user_id=u, session_id=ses, request_id=r, ts=T0 + timedelta(seconds=t), query=q,
             video_id=v, stage="shown", position=0, clicked=c, watch_ms=w, duration_ms=DUR)
        for u, ses, r, t, q, v, c, w in rows
    ]  # fmt: skip
    frame = pl.from_arrow(pa.Table.from_pylist(records, schema=SEARCH_LOG))
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_gaps_to_the_next_different_query() -> None:
    gaps = next_query_gaps(search_log().lazy()).collect()
    assert gaps.height == len(KNOWN)
    by_request = dict(gaps.iter_rows())
    assert by_request[100] == 20 and by_request[990] == 60 and by_request[991] == 30
    for request in (101, 500, 501, 600, 700, 801, 992):  # last, repeated or other users'
        assert by_request[request] is None
    assert sorted(g for g in by_request.values() if g is not None) == GAPS


def test_gap_quantiles_and_histogram_are_exact() -> None:
    summary = gap_summary(next_query_gaps(search_log().lazy()).collect()["gap_s"])
    assert summary["requests"] == 19 and summary["with_next_query"] == 8
    # linear interpolation at q * (n - 1) over the 8 sorted gaps
    assert summary["quantiles_s"] == pytest.approx(
        {"p10": 27.0, "p25": 37.5, "p50": 55.0, "p75": 106.25, "p90": 410.0, "p99": 851.0}
    )
    assert summary["histogram"] == {
        "0-10 s": 0,
        "10-30 s": 2,  # 20 and 30: the bins include their upper edge, like the window
        "30-60 s": 3,
        "60-90 s": 1,
        "90-180 s": 0,
        "180-300 s": 1,
        "300-600 s": 0,
        "600-1800 s": 1,
        ">1800 s": 0,
    }
    assert len(summary["histogram"]) == len(GAP_EDGES_S) + 1


def test_no_gaps_gives_counts_without_quantiles() -> None:
    summary = gap_summary(pl.Series("gap_s", [None, None], pl.Float64))
    assert summary["with_next_query"] == 0 and summary["requests"] == 2
    assert set(summary["quantiles_s"].values()) == {None}
    assert sum(summary["histogram"].values()) == 0


def test_yield_at_each_window_is_exact() -> None:
    log = search_log().lazy()
    windows = report_windows(90)
    assert windows == sorted(map(float, YIELD_WINDOWS_S))
    report = window_report(
        next_query_gaps(log).collect()["gap_s"],
        windowed_candidates(log, windows, LONG_PLAY_MS).collect(),
        90,
    )
    got = {r["window_s"]: r["positives"] for r in report["yield"]}
    assert got == YIELD
    shares = {r["window_s"]: r["share_of_widest"] for r in report["yield"]}
    assert shares == pytest.approx({w: n / 6 for w, n in YIELD.items()})
    assert [r["window_s"] for r in report["yield"] if r["mined"]] == [90]


def test_a_mined_window_outside_the_list_is_reported_too() -> None:
    assert report_windows(120) == sorted([*map(float, YIELD_WINDOWS_S), 120.0])
    log = search_log().lazy()
    cands = windowed_candidates(log, report_windows(120), LONG_PLAY_MS).collect()
    report = window_report(pl.Series("gap_s", [], pl.Float64), cands, 120)
    assert [(r["window_s"], r["positives"]) for r in report["yield"] if r["mined"]] == [(120, 4)]


def _random_log(seed: int) -> pl.LazyFrame:
    rng = random.Random(seed)
    rows, request = [], 0
    for user in range(25):
        t = 0
        for _ in range(rng.randint(1, 30)):
            t += rng.choice([0, 5, 30, 60, 89, 90, 91, 150, 400, 1000, 2500])
            request += 1
            clicked = rng.random() < 0.5
            watch = rng.choice([LONG, SHORT]) if clicked else 0
            session = user + rng.randint(0, 1)
            query, video = f"q{rng.randint(0, 5)}", rng.randint(1, 8)
            rows.append((user, session, request, t, query, video, clicked, watch))
    return search_log(rows).lazy()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_pass_over_all_windows_is_the_miner_at_each_window(seed: int) -> None:
    """The stacked frame gives, window by window, exactly what the miner run at that window
    mines (chains anchored at their first query split differently at each window)."""
    log = _random_log(seed)
    windows = report_windows(90)
    stacked = windowed_candidates(log, windows, LONG_PLAY_MS).collect()
    for w in windows:
        alone = reformulation_candidates(log, w, LONG_PLAY_MS).collect()
        part = stacked.filter(pl.col("window_ms") == window_ms(w)).drop("window_ms")
        assert part.equals(alone), w
        assert alone.height > 0 or w < 60


def _world(tmp_path: Path) -> Path:
    """A world directory holding the known log, its videos and an empty rec_log."""
    world = tmp_path / "world"
    world.mkdir()
    pq.write_table(search_log().to_arrow().cast(SEARCH_LOG), world / "search_log.parquet")
    ids = sorted({row[5] for row in KNOWN})
    videos = pa.table(
        {
            "video_id": ids,
            "caption": [f"video {i}" for i in ids],
            "tags": [["t"] for _ in ids],
            "cover_text": ["" for _ in ids],
            "category": ["c" for _ in ids],
            "upload_ts": [T0 for _ in ids],
            "synthetic": [False for _ in ids],
            "source_query": [None for _ in ids],
        },
        schema=VIDEOS,
    )
    pq.write_table(videos, world / "videos.parquet")
    pq.write_table(REC_LOG.empty_table(), world / "rec_log.parquet")
    return world


def test_the_reported_yield_is_what_the_miner_mines(tmp_path: Path) -> None:
    """One definition, two uses: the yield at the mined window is the reformulation samples
    `crops mine` writes (no relevance filter here, so none is dropped after the report)."""
    world = _world(tmp_path)
    for window_s in (90, 300):
        out = tmp_path / f"m{window_s}"
        cfg = MineConfig(filter_model="none", reformulation_window_s=window_s)
        report = mine(world, out, cfg, NoSynthesis())
        samples = pl.read_parquet(out / "samples.parquet")
        mined = samples.filter(pl.col("source") == "reformulation")
        rows = [r for r in report["reformulation_window"]["yield"] if r["mined"]]
        assert rows == [
            {"window_s": window_s, "positives": YIELD[window_s],
             "share_of_widest": YIELD[window_s] / 6, "mined": True}
        ]  # fmt: skip
        assert mined.height == YIELD[window_s]
        saved = json.loads((out / "report.json").read_text())["reformulation_window"]
        assert saved["gaps"]["with_next_query"] == len(GAPS)
        assert saved["gaps"]["histogram"]["600-1800 s"] == 1


def test_cli_prints_the_window_table_and_gap_quantiles(run, tmp_path: Path) -> None:
    world = _world(tmp_path)
    code, stdout, stderr = run(
        "mine", "--world", world, "--out", tmp_path / "M", "--llm-backend", "none",
        "--filter-model", "none",
    )  # fmt: skip
    assert code == 0, stderr
    assert "reformulation yield by window" in stdout
    cells = [[c.strip() for c in ln.strip("│ ").split("│")] for ln in stdout.splitlines()]
    table = {c[0]: c[1:] for c in cells if len(c) == 3 and c[0].endswith((" s", "(mined)"))}
    assert table == {
        "30 s": ["1", "16.7%"],
        "60 s": ["3", "50.0%"],
        "90 s (mined)": ["4", "66.7%"],
        "180 s": ["4", "66.7%"],
        "300 s": ["5", "83.3%"],
        "600 s": ["5", "83.3%"],
        "1800 s": ["6", "100.0%"],
    }
    gap = next(ln for ln in stdout.splitlines() if ln.startswith("gap to"))
    assert gap == (
        "gap to the user's next different query (8 of 19 requests have one):"
        " p10 27 s, p25 38 s, p50 55 s, p75 106 s, p90 410 s, p99 851 s"
    )
