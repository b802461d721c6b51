"""`crops ingest kuaisar`: the hand-written KuaiSAR folder (its published column names) into
contract tables, each bad row counted with its reason, missing files and columns, wrong formats
and GBK refused clearly, and `crops mine` finding the reformulation built into it."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from support.mined import mined_reformulations

from crops.ingest import formats
from crops.ingest.formats import IngestOptions
from crops.ingest.kuaisar import DEFAULT_DURATION_MS
from crops.ingest.text import IngestError

SRC = Path(__file__).parent / "fixtures" / "kuaisar_small"


def ingest(path: Path, out: Path, **options) -> dict:
    return formats.run("kuaisar", path, out, IngestOptions(**options))


def source_ids(out: Path, kind: str) -> dict[int, str]:
    ids = pl.read_parquet(out / "ids.parquet").filter(pl.col("kind") == kind)
    return dict(zip(ids["id"], ids["source_id"], strict=True))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("kuaisar") / "out"
    ingest(SRC, target)
    return target


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A private copy of the fixture folder that a test may break."""
    return Path(shutil.copytree(SRC, tmp_path / "kuaisar"))


def test_tables_and_quarantine(out: Path) -> None:
    tables = json.loads((out / "ingest.json").read_text())["tables"]
    # 15 src_inter rows: 3 unreadable, 2 excluded; 8 rec_inter rows: 2 unreadable
    assert (tables["search_log"]["rows"], tables["search_log"]["valid"]) == (10, 8)
    assert tables["search_log"]["reasons"] == {"empty query": 1, "video_id not in videos": 1}
    assert (tables["rec_log"]["rows"], tables["rec_log"]["valid"]) == (6, 4)
    assert tables["rec_log"]["reasons"] == {"duration_ms not positive": 1, "negative watch_ms": 1}
    assert tables["videos"]["valid"] == 7
    # each quarantined row names its source line
    qdir = out / "_quarantine"
    q = {t: pl.read_parquet(qdir / f"{t}.parquet") for t in ("search_log", "rec_log")}
    assert q["search_log"].select("where", "reason").rows() == [
        ("src_inter.csv:14", "empty query"),
        ("src_inter.csv:15", "video_id not in videos"),
    ]
    assert q["rec_log"].select("where", "reason").rows() == [
        ("rec_inter.csv:4", "duration_ms not positive"),
        ("rec_inter.csv:6", "negative watch_ms"),
    ]


def test_unreadable_rows_with_reasons(out: Path) -> None:
    manifest = json.loads((out / "ingest.json").read_text())
    assert manifest["unreadable"]["reasons"] == {
        "click_cnt not a number": 1,
        "keyword not a list of word ids": 1,
        "playing_time not a number": 1,
        "search_session_timestamp not a number": 1,
        "timestamp not a number": 1,
    }
    bad = pl.read_parquet(out / "_quarantine" / "unreadable.parquet")
    rec = bad.filter(pl.col("reason") == "timestamp not a number").row(0, named=True)
    assert (rec["table"], rec["where"]) == ("rec_log", "rec_inter.csv:8")


def test_non_video_results_are_excluded_not_bad_input(out: Path) -> None:
    """KuaiSAR's USER/LIVE/... results lie outside the contracts: kept in excluded.parquet and
    counted, but not in the unreadable share an import is refused for."""
    manifest = json.loads((out / "ingest.json").read_text())
    assert manifest["excluded"] == {"rows": 2, "reasons": {"item_type not a video": 2}}
    excluded = pl.read_parquet(out / "_quarantine" / "excluded.parquet")
    assert excluded["table"].to_list() == ["search_log"] * 2
    assert all(w.startswith("src_inter.csv:") for w in excluded["where"])
    assert excluded["raw"].str.contains("LIVE|USER|COMMODITY|MUSIC|ADVERT").all()
    user = excluded.filter(pl.col("raw").str.contains(",9001,")).row(0, named=True)
    assert user["where"] == "src_inter.csv:4"  # the source line, raw as written
    assert user["raw"] == (SRC / "src_inter.csv").read_text(encoding="utf-8").splitlines()[3]
    tables = manifest["tables"].values()
    read = sum(t["rows"] for t in tables) + manifest["unreadable"]["rows"]
    assert manifest["worst_share"] == pytest.approx(
        max(*(t["quarantined"] / t["rows"] for t in tables if t["rows"]), 5 / read)
    )


def test_search_log(out: Path) -> None:
    log = pl.read_parquet(out / "search_log.parquet")
    assert log["video_id"].dtype == pl.Int64 and 103 in log["video_id"].to_list()  # ids kept
    first = log.filter(pl.col("user_id") == 14358).sort("ts", "position")
    assert first.select("query", "video_id", "position", "clicked").rows() == [
        ("w20 w34 w3", 101, 0, False),
        ("w20 w34 w3", 102, 1, False),
        ("w20 w34 w7", 103, 0, True),
        ("w20 w34 w7", 101, 1, False),
        ("w55", 104, 0, True),
    ]
    assert first["request_id"].n_unique() == 3 and first["session_id"].n_unique() == 3
    assert first["ts"][0] == datetime.fromtimestamp(1684763932.919, UTC)
    gaps = first["ts"].unique().sort().diff().drop_nulls().dt.total_seconds().to_list()
    assert gaps == [30, 170]
    clicked = {r["video_id"]: r for r in log.filter(pl.col("clicked")).iter_rows(named=True)}
    # a click is a full play of the item's median feed duration, else the default
    assert (clicked[103]["watch_ms"], clicked[103]["duration_ms"]) == (45_400, 45_400)
    assert (clicked[104]["watch_ms"], clicked[104]["duration_ms"]) == (
        DEFAULT_DURATION_MS,
        DEFAULT_DURATION_MS,
    )
    assert log.filter(~pl.col("clicked"))["watch_ms"].unique().to_list() == [0]
    # the LIVE result at position 2 is excluded; the videos keep their places
    assert log.filter(pl.col("video_id") == 106)["position"].to_list() == [1]


def test_rec_log_and_videos(out: Path) -> None:
    rec = pl.read_parquet(out / "rec_log.parquet").sort("ts")
    assert rec.select("user_id", "video_id", "watch_ms", "duration_ms").rows() == [
        (14358, 103, 60_792, 45_400),
        (14358, 101, 3_000, 20_000),
        (6302, 105, 25_000, 30_000),
        (6302, 108, 19_000, 20_000),
    ]
    videos = {
        r["video_id"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)
    }
    assert videos[103]["caption"] == "w20 w34 w7 w41"
    assert (videos[103]["category"], videos[103]["tags"]) == ("美食", ["家常菜", "川菜"])
    assert videos[101]["upload_ts"] == datetime(2023, 4, 22, 0, 0, tzinfo=UTC)  # 08:00 Beijing
    assert videos[104]["upload_ts"] is None  # 1970-01-01 is padding
    notes = json.loads((out / "ingest.json").read_text())["notes"]
    assert notes["upload_time_unreadable"] == 1  # item 106's "not a date"


def test_missing_files_and_columns(copy: Path) -> None:
    (copy / "rec_inter.csv").unlink()
    with pytest.raises(IngestError, match=r"not a KuaiSAR folder: no rec_inter.csv"):
        ingest(copy, copy.parent / "a")
    shutil.copy(SRC / "rec_inter.csv", copy)
    src = pl.read_csv(copy / "src_inter.csv", infer_schema=False)
    src.drop("click_cnt", "keyword").write_csv(copy / "src_inter.csv")
    with pytest.raises(IngestError, match=r"src_inter.csv: missing columns keyword, click_cnt"):
        ingest(copy, copy.parent / "b")


def test_wrong_format_refused(tmp_path: Path, run) -> None:
    xml = Path(__file__).parent / "fixtures" / "sessiontrack_small.xml"
    with pytest.raises(IngestError, match=r"kuaisar reads KuaiSAR's folder .* not a file"):
        ingest(xml, tmp_path / "a")
    code, _, err = run("ingest", "kuaisar", xml.parent, "--out", tmp_path / "b")
    assert code == 2 and "not a KuaiSAR folder: no src_inter.csv" in err


def test_gbk_detected_and_converted(copy: Path, run) -> None:
    items = copy / "item_features.csv"
    items.write_bytes(items.read_text(encoding="utf-8").encode("gbk"))
    code, _, err = run("ingest", "kuaisar", copy, "--out", copy.parent / "a")
    assert code == 2 and "item_features.csv" in err and "--encoding gbk" in err
    code, _, _ = run(
        "ingest",
        "kuaisar",
        copy,
        "--out",
        copy.parent / "b",
        "--encoding",
        "gbk",
        "--max-quarantine-share",
        "0.5",
    )
    assert code == 0
    videos = pl.read_parquet(copy.parent / "b" / "videos.parquet")
    assert "搞笑" in videos["category"].to_list()


def test_cli_and_mine(tmp_path: Path, run) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run("ingest", "kuaisar", SRC, "--out", out)
    assert code == 1  # 2 of 10 search_log rows quarantined is over the default 1 %
    assert "unreadable source rows: 5" in stdout and "excluded source rows" in stdout
    found = mined_reformulations(run, out, tmp_path / "mined")
    # 14358 searched [20, 34, 3], 30 s later [20, 34, 7] and played item 103
    assert found.select("query", "video_id").rows() == [("w20 w34 w3", 103)]
    kept = source_ids(out, "video")
    assert kept and all(str(i) == s for i, s in kept.items())  # numeric ids kept as they are
