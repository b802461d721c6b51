"""`crops ingest mapped`: a platform's own CSV/TSV/Parquet tables through a YAML column mapping."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from crops.ingest.formats import IngestOptions, run
from crops.ingest.ids import KEPT_MAX
from crops.ingest.mapped import load_mapping, read
from crops.ingest.text import IngestError

FIXTURE = Path(__file__).parent / "fixtures" / "mapped"
EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "mapping.yaml"


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "out"
    manifest = run("mapped", FIXTURE, out, IngestOptions(mapping=FIXTURE / "mapping.yaml"))
    return out, manifest


def test_example_mapping_parses():
    m = load_mapping(EXAMPLE)
    assert set(m.tables) == {"videos", "search_log", "rec_log"}
    assert m.tables["search_log"].constants == {"stage": "shown"}
    assert m.tables["rec_log"].ts_format == "%Y-%m-%d %H:%M:%S"


def test_fixture_imports_every_row_somewhere(imported):
    out, manifest = imported
    t = manifest["tables"]
    # source rows: 4 videos, 7 search rows, 3 feed rows
    for name, source_rows in (("videos", 4), ("search_log", 7), ("rec_log", 3)):
        unreadable = pl.read_parquet(out / "_quarantine" / "unreadable.parquet").filter(
            pl.col("table") == name
        )
        assert t[name]["valid"] + t[name]["quarantined"] + unreadable.height == source_rows
        assert pl.read_parquet(out / f"{name}.parquet").height == t[name]["valid"]
    assert (t["videos"]["valid"], t["search_log"]["valid"], t["rec_log"]["valid"]) == (3, 3, 2)
    assert t["search_log"]["reasons"] == {"negative watch_ms": 1}
    # the quarantined row names its data row (play_ms -5), as unreadable rows do
    q = pl.read_parquet(out / "_quarantine" / "search_log.parquet")
    assert q.select("where", "watch_ms").rows() == [("search.csv:6", -5)]
    assert manifest["notes"]["unmapped_columns"] == {"search_log": ["app_version"]}


def test_cells_that_do_not_parse_are_unreadable_with_row_and_column(imported):
    out, manifest = imported
    bad = pl.read_parquet(out / "_quarantine" / "unreadable.parquet")
    got = dict(zip(bad["where"], bad["reason"], strict=True))
    assert got == {
        "videos.csv:4": "upload_ts (created_at) is not an iso timestamp",
        "search.csv:3": "watch_ms (play_ms) is not an integer",
        "search.csv:4": "ts (event_time) is not an unix_s timestamp",
        "search.csv:5": "clicked (click) is not a known boolean (true_values, false_values)",
        "feed.tsv:3": "ts (event_time) is not a strftime %Y-%m-%d %H:%M:%S timestamp",
    }
    raw = json.loads(bad.filter(pl.col("where") == "search.csv:3")["raw"][0])
    assert raw["play_ms"] == "abc" and raw["q"] == "cat dance"
    assert manifest["unreadable"]["rows"] == 5


def test_values_are_parsed_into_the_contract(imported):
    out, _ = imported
    videos = pl.read_parquet(out / "videos.parquet").sort("video_id")
    # 1001 is a canonical integer and kept; v1, v2 are hashed into [2**62, 2**63)
    assert videos["video_id"][0] == 1001
    assert all(KEPT_MAX <= v < 2 * KEPT_MAX for v in videos["video_id"][1:])
    by_caption = {r["caption"]: r for r in videos.iter_rows(named=True)}
    assert by_caption["猫咪 跳舞"]["tags"] == ["猫", "舞蹈"]
    assert by_caption["dog surfing"]["tags"] == ["dog", "surf"]
    assert by_caption["cooking noodles"]["tags"] is None  # an empty cell
    # an offset is honoured; a naive time is in the mapping's timezone (Asia/Shanghai, +8)
    assert by_caption["猫咪 跳舞"]["upload_ts"] == _utc(2024, 5, 1, 0, 0)
    assert by_caption["dog surfing"]["upload_ts"] == _utc(2024, 5, 1, 1, 30)
    assert by_caption["cooking noodles"]["upload_ts"] == _utc(2024, 5, 1, 16, 0)
    assert videos["synthetic"].to_list() == [False, False, False]

    search = pl.read_parquet(out / "search_log.parquet").sort("ts", "position")
    assert search["stage"].to_list() == ["shown"] * 3
    assert search["clicked"].to_list() == [True, False, True]
    assert search["ts"].to_list() == [
        _utc(2024, 5, 1, 0, 0),
        _utc(2024, 5, 1, 0, 0),
        datetime(2024, 5, 1, 0, 23, 20, 500_000, tzinfo=UTC),
    ]
    assert search["watch_ms"].to_list() == [20000, 0, 18000]
    rec = pl.read_parquet(out / "rec_log.parquet").sort("ts")
    assert rec["ts"].to_list() == [_utc(2024, 5, 1, 0, 0), _utc(2024, 5, 1, 0, 5)]


def test_ids_are_the_same_across_tables(imported):
    out, _ = imported
    ids = pl.read_parquet(out / "ids.parquet")
    v1 = ids.filter((pl.col("kind") == "video") & (pl.col("source_id") == "v1"))["id"].item()
    search = pl.read_parquet(out / "search_log.parquet")
    rec = pl.read_parquet(out / "rec_log.parquet")
    assert v1 in search["video_id"].to_list() and v1 in rec["video_id"].to_list()
    assert set(ids["kind"]) == {"video", "user", "session", "request"}


def _write_mapping(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_parquet_source_keeps_its_types(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    pl.DataFrame(
        {
            "id": [7, 8, 9],
            "title": ["a", "b", "c"],
            "labels": [["x", "y"], [], None],
            "made": [datetime(2024, 1, 1, 8), datetime(2024, 1, 2, 8), None],
        }
    ).write_parquet(src / "v.parquet")
    pl.DataFrame(
        {
            "user": ["u1", "u1", "u2"],
            "t": [1_714_521_600_000, 1_714_521_601_000, 1_714_521_602_000],
            "vid": [7, 8, 10],
            "w": [1.0, 2.5, 3.0],
            "d": [10, 10, 10],
        }
    ).write_parquet(src / "r.parquet")
    mapping = _write_mapping(
        tmp_path / "m.yaml",
        "tables:\n"
        "  videos: {file: v.parquet, columns: {video_id: id, caption: title, tags: labels,"
        " upload_ts: made}, timezone: Asia/Shanghai}\n"
        "  rec_log: {file: r.parquet, columns: {user_id: user, ts: t, video_id: vid,"
        " watch_ms: w, duration_ms: d}, ts_format: unix_ms}\n",
    )
    manifest = run("mapped", src, tmp_path / "out", IngestOptions(mapping=mapping))
    videos = pl.read_parquet(tmp_path / "out" / "videos.parquet").sort("video_id")
    assert videos["video_id"].to_list() == [7, 8, 9]
    assert videos["tags"].to_list() == [["x", "y"], [], None]
    assert videos["upload_ts"].to_list() == [_utc(2024, 1, 1, 0), _utc(2024, 1, 2, 0), None]
    bad = pl.read_parquet(tmp_path / "out" / "_quarantine" / "unreadable.parquet")
    assert bad.select("where", "reason").rows() == [
        ("r.parquet:2", "watch_ms (w) is not an integer")
    ]
    # video 10 is not in videos: a contract rule, so quarantined, not unreadable
    assert manifest["tables"]["rec_log"]["reasons"] == {"video_id not in videos": 1}
    assert manifest["tables"]["rec_log"]["valid"] == 1


def test_example_mapping_imports_files_shaped_like_it(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURE / "search.csv", src)
    shutil.copy(FIXTURE / "feed.tsv", src)
    pl.DataFrame(
        {
            "item_id": ["v1", "v2", "1001"],
            "title": ["猫咪 跳舞", "dog surfing", "cooking noodles"],
            "hashtags": [["猫"], ["dog"], None],
            "channel": ["pets", "pets", "food"],
            "created_at": ["2024-05-01T08:00:00+08:00", "2024-05-01 09:30:00", "2024-05-02"],
        }
    ).write_parquet(src / "videos.parquet")
    manifest = run("mapped", src, tmp_path / "out", IngestOptions(mapping=EXAMPLE))
    assert manifest["tables"]["videos"]["valid"] == 3
    assert manifest["tables"]["search_log"]["valid"] == 3
    assert manifest["tables"]["rec_log"]["valid"] == 2


def test_single_file_when_the_mapping_names_one_table(tmp_path: Path):
    mapping = _write_mapping(
        tmp_path / "m.yaml",
        "tables:\n  videos:\n    columns: {video_id: item_id, caption: title}\n",
    )
    imported = read(FIXTURE / "videos.csv", IngestOptions(mapping=mapping))
    assert imported.tables["videos"]["caption"].to_list()[:2] == ["猫咪 跳舞", "dog surfing"]
    with pytest.raises(IngestError, match="is a file but .* maps 3 tables"):
        read(FIXTURE / "videos.csv", IngestOptions(mapping=FIXTURE / "mapping.yaml"))


def test_a_source_column_missing_names_file_column_and_key(tmp_path: Path):
    text = (
        (FIXTURE / "mapping.yaml")
        .read_text(encoding="utf-8")
        .replace("query: q\n", "query: query_text\n")
    )
    mapping = _write_mapping(tmp_path / "m.yaml", text)
    with pytest.raises(IngestError) as err:
        read(FIXTURE, IngestOptions(mapping=mapping))
    message = str(err.value)
    assert "search.csv" in message and "'query_text'" in message
    assert "m.yaml" in message and "tables.search_log.columns.query" in message


@pytest.mark.parametrize(
    ("yaml_text", "key", "says"),
    [
        (
            "tables:\n  videos: {file: v.csv, colums: {video_id: a}}\n",
            "tables.videos.colums",
            "Extra inputs",
        ),
        (
            "tables:\n  videos: {file: v.csv, columns: {video_id: a, views: b}}\n",
            "tables.videos.columns.views",
            "not a column of the videos contract",
        ),
        (
            "tables:\n  videos: {file: v.csv, columns: {caption: a}}\n",
            "tables.videos.columns",
            "requires video_id",
        ),
        (
            "tables:\n  videos: {file: v.xlsx, columns: {video_id: a}}\n",
            "tables.videos.file",
            ".csv, .tsv, .parquet",
        ),
        (
            "tables:\n  videos: {file: v.csv, columns: {video_id: a}, ts_format: epoch}\n",
            "tables.videos.ts_format",
            "strftime",
        ),
        (
            "tables:\n  videos: {file: v.csv, columns: {video_id: a}, timezone: Mars/Base}\n",
            "tables.videos.timezone",
            "IANA",
        ),
        ("tables:\n  rec_log: {file: r.csv}\n", "tables.videos", "every import needs"),
        ("tables:\n  clicks: {file: c.csv}\n", "tables.clicks", "not a contract table"),
        (
            "tables:\n  videos: {file: v.csv, columns: {video_id: a}, constants: {video_id: 1}}\n",
            "tables.videos.constants.video_id",
            "also in",
        ),
        ("mapping: {}\n", "mapping", "Extra inputs"),
    ],
)
def test_mapping_errors_name_the_file_and_key(tmp_path: Path, yaml_text, key, says):
    path = _write_mapping(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(IngestError) as err:
        load_mapping(path)
    message = str(err.value)
    assert str(path) in message and key in message and says in message


def test_not_yaml_names_the_line(tmp_path: Path):
    path = _write_mapping(tmp_path / "bad.yaml", "tables:\n  videos: [unclosed\n")
    with pytest.raises(IngestError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_mapping(path)


def test_a_constant_that_does_not_parse_is_an_error(tmp_path: Path):
    text = (FIXTURE / "mapping.yaml").read_text(encoding="utf-8")
    text = text.replace("      clicked: click\n", "").replace(
        "{stage: shown}", "{stage: shown, clicked: maybe}"
    )
    mapping = _write_mapping(tmp_path / "m.yaml", text)
    with pytest.raises(IngestError, match="tables.search_log.constants.clicked: 'maybe'"):
        read(FIXTURE, IngestOptions(mapping=mapping))


def test_no_mapping_given():
    with pytest.raises(IngestError, match="--mapping"):
        read(FIXTURE, IngestOptions())


def test_gbk_csv_needs_and_takes_encoding(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    text = (FIXTURE / "videos.csv").read_text(encoding="utf-8")
    (src / "videos.csv").write_bytes(text.encode("gbk"))
    mapping = _write_mapping(
        tmp_path / "m.yaml",
        "tables:\n  videos: {file: videos.csv, columns: {video_id: item_id, caption: title}}\n",
    )
    with pytest.raises(IngestError, match="--encoding gbk"):
        read(src, IngestOptions(mapping=mapping))
    imported = read(src, IngestOptions(mapping=mapping, encoding="gbk"))
    assert imported.tables["videos"]["caption"][0] == "猫咪 跳舞"
    assert imported.encoding == "gbk"


def test_parquet_text_that_is_not_utf8_is_quarantined_by_the_contract(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    titles = pa.array([b"ok", b"\xff\xfe bad", None], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["a", "b", "c"], "title": titles}), src / "v.parquet")
    mapping = _write_mapping(
        tmp_path / "m.yaml",
        "tables:\n  videos: {file: v.parquet, columns: {video_id: id, caption: title}}\n",
    )
    manifest = run("mapped", src, tmp_path / "out", IngestOptions(mapping=mapping))
    assert manifest["tables"]["videos"]["reasons"] == {"caption is not valid UTF-8": 1}
    assert manifest["unreadable"]["rows"] == 0
