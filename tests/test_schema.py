"""The data contracts: bad rows are quarantined with a reason, bad files fail naming file+column."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crops.schema import (
    HLA_LABELS,
    LONG_PLAY_MS,
    MAX_QUERY_BYTES,
    SchemaError,
    TableReport,
    load_table,
    long_play,
    long_play_np,
    validate_dir,
    worst_share,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _ts(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- table builders


def _search_row(i: int, **over: object) -> dict:
    row = dict(
        user_id=100 + i,
        session_id=1000 + i,  # one session per row unless a test says otherwise
        request_id=5000 + i,
        ts=_ts(i),
        query=f"cat video {i}",
        video_id=1 + i % 3,
        stage="shown",
        position=i,
        clicked=False,
        watch_ms=3_000,
        duration_ms=20_000,
    )
    row.update(over)
    return row


SEARCH_TYPES = {
    "user_id": pa.int64(),
    "session_id": pa.int64(),
    "request_id": pa.int64(),
    "ts": pa.timestamp("ms", tz="UTC"),
    "query": pa.string(),
    "video_id": pa.int64(),
    "stage": pa.string(),
    "position": pa.int32(),
    "clicked": pa.bool_(),
    "watch_ms": pa.int64(),
    "duration_ms": pa.int64(),
}
REC_TYPES = {
    "user_id": pa.int64(),
    "ts": pa.timestamp("ms", tz="UTC"),
    "video_id": pa.int64(),
    "watch_ms": pa.int64(),
    "duration_ms": pa.int64(),
}
SAMPLE_TYPES = {
    "query": pa.string(),
    "video_id": pa.int64(),
    "label": pa.int8(),
    "source": pa.string(),
    "relevance": pa.float32(),
    "request_id": pa.int64(),
    "session_id": pa.int64(),
}
VIDEO_TYPES = {
    "video_id": pa.int64(),
    "caption": pa.string(),
    "tags": pa.list_(pa.string()),
    "cover_text": pa.string(),
    "category": pa.string(),
    "upload_ts": pa.timestamp("ms", tz="UTC"),
    "synthetic": pa.bool_(),
    "source_query": pa.string(),
}


def _table(rows: list[dict], types: dict[str, pa.DataType], **columns: pa.Array) -> pa.Table:
    """Rows -> Arrow table with the contract types; `columns` replace whole columns verbatim."""
    arrays = {
        name: columns[name] if name in columns else pa.array([r[name] for r in rows], typ)
        for name, typ in types.items()
    }
    return pa.table(arrays)


def _rec_row(i: int, **over: object) -> dict:
    row = dict(user_id=7 + i, ts=_ts(i), video_id=1 + i % 3, watch_ms=4_000, duration_ms=9_000)
    row.update(over)
    return row


def _sample_row(i: int, **over: object) -> dict:
    row = dict(
        query=f"dog {i}",
        video_id=1 + i % 3,
        label=4,
        source="click",
        relevance=0.5,
        request_id=i,
        session_id=i,
    )
    row.update(over)
    return row


def _video_row(i: int, **over: object) -> dict:
    row = dict(
        video_id=i,
        caption=f"caption {i}",
        tags=["a", "b"],
        cover_text="cover",
        category="pets",
        upload_ts=_ts(-i),
        synthetic=False,
        source_query=None,
    )
    row.update(over)
    return row


BUILDERS = {
    "search_log": (_search_row, SEARCH_TYPES),
    "rec_log": (_rec_row, REC_TYPES),
    "samples": (_sample_row, SAMPLE_TYPES),
    "videos": (_video_row, VIDEO_TYPES),
}


def _write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def _load(tmp_path: Path, name: str, table: pa.Table, video_ids: list[int] | None = None):
    path = _write(table, tmp_path / f"{name}.parquet")
    ids = pl.Series("video_id", video_ids, pl.Int64) if video_ids is not None else None
    return load_table(path, name, video_ids=ids)


def _invalid_utf8_strings(values: list[bytes | None]) -> pa.Array:
    """A pa.string() array whose bytes are not all UTF-8 (built around Arrow's validation)."""
    arr = pa.array(values, pa.binary()).view(pa.string())
    assert arr.type == pa.string()
    with pytest.raises(pa.ArrowInvalid):
        arr.validate(full=True)
    return arr


# --------------------------------------------------------------------------- row rules

BAD_ROWS = [
    # (table, overrides of row 1, the one reason expected)
    ("search_log", dict(query=None), "null query"),
    ("search_log", dict(query=""), "empty query"),
    ("search_log", dict(query=" \t\n  "), "empty query"),
    ("search_log", dict(query="a" * (MAX_QUERY_BYTES + 1)), "query over 1024 bytes"),
    # 513 characters but 1026 bytes: the limit is on bytes, not characters
    ("search_log", dict(query="é" * 513), "query over 1024 bytes"),
    ("search_log", dict(watch_ms=-1), "negative watch_ms"),
    ("search_log", dict(stage="clicked"), "unknown stage"),
    ("search_log", dict(stage="Shown"), "unknown stage"),
    ("search_log", dict(clicked=True, stage="ranked"), "clicked but not shown"),
    ("search_log", dict(clicked=True, stage="prefiltered"), "clicked but not shown"),
    ("rec_log", dict(watch_ms=-5), "negative watch_ms"),
    ("samples", dict(label=3, source="click"), "label does not match its source under HLA"),
    ("samples", dict(label=5, source="exposed"), "label does not match its source under HLA"),
    ("samples", dict(label=4, source="organic"), "unknown source"),
    ("samples", dict(query=""), "empty query"),
]


@pytest.mark.parametrize(("name", "over", "reason"), BAD_ROWS)
def test_bad_row_is_quarantined_with_its_reason(tmp_path, name, over, reason):
    make, types = BUILDERS[name]
    rows = [make(i, **(over if i == 1 else {})) for i in range(4)]
    valid, quarantine, report = _load(tmp_path, name, _table(rows, types))

    assert quarantine["row"].to_list() == [1]
    assert quarantine["reason"].to_list() == [reason]
    assert report.reasons == {reason: 1}
    assert (report.rows, report.quarantined) == (4, 1)
    # the good rows stay, in order, with their values
    assert valid.height == 3
    key = {"rec_log": "user_id", "videos": "video_id"}.get(name, "request_id")
    assert valid[key].to_list() == [rows[i][key] for i in (0, 2, 3)]
    assert "reason" not in valid.columns and "row" not in valid.columns


@pytest.mark.parametrize("label", [-1, 6, 9])
def test_label_outside_range_is_quarantined(tmp_path, label):
    rows = [_sample_row(i, label=label if i == 2 else 4) for i in range(3)]
    valid, quarantine, report = _load(tmp_path, "samples", _table(rows, SAMPLE_TYPES))
    assert quarantine["row"].to_list() == [2]
    assert "label outside 0..5" in quarantine["reason"][0].split("; ")
    assert report.reasons["label outside 0..5"] == 1
    assert valid.height == 2


def test_every_hla_source_with_its_label_is_valid(tmp_path):
    rows = [_sample_row(i, source=s, label=lab) for i, (s, lab) in enumerate(HLA_LABELS.items())]
    valid, quarantine, report = _load(tmp_path, "samples", _table(rows, SAMPLE_TYPES))
    assert quarantine.height == 0 and report.reasons == {}
    assert valid["source"].to_list() == list(HLA_LABELS)


def test_good_edge_values_are_kept(tmp_path):
    queries = ["a" * MAX_QUERY_BYTES, "é" * (MAX_QUERY_BYTES // 2), "  padded  ", "x"]
    rows = [
        _search_row(0, query=queries[0], watch_ms=0),
        _search_row(1, query=queries[1], clicked=True, stage="shown"),
        _search_row(2, query=queries[2], stage="ranked"),
        _search_row(3, query=queries[3], stage="prefiltered"),
    ]
    valid, quarantine, report = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    assert quarantine.height == 0 and report.quarantined == 0
    assert valid["query"].to_list() == queries
    assert [len(q.encode()) for q in queries[:2]] == [MAX_QUERY_BYTES, MAX_QUERY_BYTES]


def test_query_is_not_valid_utf8_in_binary_column(tmp_path):
    rows = [_search_row(i) for i in range(4)]
    query = pa.array([b"fine", b"\xff\xfe", None, b"caf\xc3\xa9"], pa.binary())
    valid, quarantine, report = _load(
        tmp_path, "search_log", _table(rows, SEARCH_TYPES, query=query)
    )
    reasons = dict(zip(quarantine["row"].to_list(), quarantine["reason"].to_list(), strict=True))
    # the invalid bytes are reported as such, not (also) as a null query
    assert reasons == {1: "query is not valid UTF-8", 2: "null query"}
    assert report.reasons == {"query is not valid UTF-8": 1, "null query": 1}
    assert valid["query"].to_list() == ["fine", "café"]
    assert valid.schema["query"] == pl.String


def test_query_is_not_valid_utf8_in_string_column(tmp_path):
    rows = [_search_row(i) for i in range(3)]
    query = _invalid_utf8_strings([b"ok", b"\xff\xfe", b"also ok"])
    valid, quarantine, report = _load(
        tmp_path, "search_log", _table(rows, SEARCH_TYPES, query=query)
    )
    assert quarantine["row"].to_list() == [1]
    assert quarantine["reason"].to_list() == ["query is not valid UTF-8"]
    assert report.reasons == {"query is not valid UTF-8": 1}
    assert valid["query"].to_list() == ["ok", "also ok"]


def test_caption_is_not_valid_utf8(tmp_path):
    rows = [_video_row(i) for i in range(3)]
    caption = _invalid_utf8_strings([b"a", b"b", b"\xc3("])
    table = _table(rows, VIDEO_TYPES, caption=caption)
    valid, quarantine, report = _load(tmp_path, "videos", table)
    assert quarantine["row"].to_list() == [2]
    assert quarantine["reason"].to_list() == ["caption is not valid UTF-8"]
    assert valid["video_id"].to_list() == [0, 1]


def test_duplicate_video_id_keeps_the_first(tmp_path):
    ids = [1, 2, 1, 3, 1]
    rows = [_video_row(v, caption=f"copy {i}") for i, v in enumerate(ids)]
    valid, quarantine, report = _load(tmp_path, "videos", _table(rows, VIDEO_TYPES))
    assert valid["video_id"].to_list() == [1, 2, 3]
    assert valid.filter(pl.col("video_id") == 1)["caption"].to_list() == ["copy 0"]
    assert quarantine["row"].to_list() == [2, 4]
    assert quarantine["reason"].to_list() == ["duplicate video_id"] * 2
    assert report.reasons == {"duplicate video_id": 2}


@pytest.mark.parametrize("name", ["search_log", "rec_log", "samples"])
def test_video_id_not_in_videos(tmp_path, name):
    make, types = BUILDERS[name]
    rows = [make(i, **({"video_id": 99} if i == 3 else {})) for i in range(4)]
    valid, quarantine, report = _load(tmp_path, name, _table(rows, types), video_ids=[1, 2, 3])
    assert quarantine["row"].to_list() == [3]
    assert quarantine["reason"].to_list() == ["video_id not in videos"]
    assert report.reasons == {"video_id not in videos": 1}
    assert valid.height == 3
    # without a videos table to check against, the same row is fine
    _, unchecked, _ = _load(tmp_path, name, _table(rows, types))
    assert unchecked.height == 0


def test_ts_out_of_order_within_a_session(tmp_path):
    # sessions 1 and 2 interleave; session 2 starts earlier than session 1 - that is fine
    plan = [(1, 10), (2, 5), (1, 20), (2, 6), (1, 15), (2, 6), (1, 20), (1, 30)]
    rows = [_search_row(i, session_id=s, ts=_ts(t)) for i, (s, t) in enumerate(plan)]
    valid, quarantine, report = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    # row 4 (session 1, t=15) comes after t=20 in the file; equal ts (rows 5, 6) are fine
    assert quarantine["row"].to_list() == [4]
    assert quarantine["reason"].to_list() == ["ts earlier than a previous row of its session"]
    assert report.reasons == {"ts earlier than a previous row of its session": 1}
    assert valid.height == len(plan) - 1


def test_interleaved_sessions_in_order_are_valid(tmp_path):
    plan = [(1, 100), (2, 0), (3, 50), (1, 101), (2, 1), (3, 51), (2, 2)]
    rows = [_search_row(i, session_id=s, ts=_ts(t)) for i, (s, t) in enumerate(plan)]
    _, quarantine, _ = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    assert quarantine.height == 0


def test_a_row_breaking_several_rules_lists_every_reason(tmp_path):
    rows = [_search_row(0), _search_row(1, query="", watch_ms=-3, stage="bogus")]
    _, quarantine, report = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    assert quarantine["row"].to_list() == [1]
    assert set(quarantine["reason"][0].split("; ")) == {
        "empty query",
        "negative watch_ms",
        "unknown stage",
    }
    assert report.reasons == {"empty query": 1, "negative watch_ms": 1, "unknown stage": 1}
    assert report.quarantined == 1


# --------------------------------------------------------------------------- quarantine output


def test_validate_dir_writes_quarantine_with_reason_and_row(tmp_path):
    videos = [_video_row(v) for v in (1, 2, 3, 2)]
    _write(_table(videos, VIDEO_TYPES), tmp_path / "videos.parquet")
    bad = {
        2: dict(watch_ms=-1),
        5: dict(stage="nope"),
        6: dict(video_id=42),
        8: dict(query="   "),
        9: dict(watch_ms=-7),
    }
    rows = [_search_row(i, **bad.get(i, {})) for i in range(12)]
    _write(_table(rows, SEARCH_TYPES), tmp_path / "search_log.parquet")

    reports = {r.table: r for r in validate_dir(tmp_path)}
    assert set(reports) == {"videos", "search_log"}

    q = pl.read_parquet(tmp_path / "_quarantine" / "search_log.parquet")
    assert {"reason", "row"} <= set(q.columns)
    assert q["row"].to_list() == sorted(bad)
    assert q.filter(pl.col("row") == 2)["watch_ms"].to_list() == [-1]  # the row's own values
    expected = {
        "negative watch_ms": 2,
        "unknown stage": 1,
        "video_id not in videos": 1,
        "empty query": 1,
    }
    file_counts = q["reason"].value_counts()
    assert dict(zip(file_counts["reason"], file_counts["count"], strict=True)) == expected
    assert reports["search_log"].reasons == expected
    assert (reports["search_log"].rows, reports["search_log"].quarantined) == (12, 5)

    qv = pl.read_parquet(tmp_path / "_quarantine" / "videos.parquet")
    assert qv["row"].to_list() == [3] and qv["reason"].to_list() == ["duplicate video_id"]

    saved_list = json.loads((tmp_path / "_quarantine" / "report.json").read_text())
    saved = {d["table"]: d for d in saved_list}
    assert saved["search_log"]["reasons"] == expected
    assert (saved["search_log"]["valid"], saved["search_log"]["quarantined"]) == (7, 5)
    assert saved["videos"]["reasons"] == {"duplicate video_id": 1}
    assert not (tmp_path / "_quarantine" / "rec_log.parquet").exists()


def test_validate_dir_clean_tables_write_empty_quarantine(tmp_path):
    _write(_table([_video_row(v) for v in (1, 2, 3)], VIDEO_TYPES), tmp_path / "videos.parquet")
    _write(_table([_rec_row(i) for i in range(5)], REC_TYPES), tmp_path / "rec_log.parquet")
    reports = validate_dir(tmp_path)
    assert [(r.table, r.rows, r.quarantined) for r in reports] == [
        ("videos", 3, 0),
        ("rec_log", 5, 0),
    ]
    assert pl.read_parquet(tmp_path / "_quarantine" / "rec_log.parquet").height == 0


# --------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize(
    ("name", "column"),
    [("search_log", "watch_ms"), ("search_log", "stage"), ("rec_log", "ts"), ("videos", "caption")],
)
def test_missing_column_names_file_and_column(tmp_path, name, column):
    make, types = BUILDERS[name]
    table = _table([make(i) for i in range(3)], types).drop_columns([column])
    path = _write(table, tmp_path / f"{name}.parquet")
    with pytest.raises(SchemaError) as info:
        load_table(path, name)
    assert str(path) in str(info.value)
    assert f"'{column}'" in str(info.value)
    assert "missing" in str(info.value)
    assert (info.value.path, info.value.column) == (str(path), column)


def test_videos_optional_columns_default_when_missing(tmp_path):
    table = _table([_video_row(i) for i in range(2)], VIDEO_TYPES)
    valid, _, _ = _load(tmp_path, "videos", table.drop_columns(["synthetic", "source_query"]))
    assert valid["synthetic"].to_list() == [False, False]
    assert valid["source_query"].to_list() == [None, None]


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("watch_ms", pa.array(["3000", "10", "20"], pa.string())),
        ("ts", pa.array([1, 2, 3], pa.int64())),
        ("clicked", pa.array([0.0, 1.0, 0.0], pa.float64())),
    ],
)
def test_wrong_type_names_file_and_column(tmp_path, column, values):
    table = _table([_search_row(i) for i in range(3)], SEARCH_TYPES, **{column: values})
    path = _write(table, tmp_path / "search_log.parquet")
    with pytest.raises(SchemaError) as info:
        load_table(path, "search_log")
    message = str(info.value)
    assert str(path) in message and f"'{column}'" in message
    assert str(values.type) in message
    assert info.value.column == column


def test_compatible_types_are_cast(tmp_path):
    rows = [_search_row(i) for i in range(3)]
    naive = [datetime(2024, 5, 1, 12, 0, i) for i in range(3)]
    table = _table(
        rows,
        SEARCH_TYPES,
        watch_ms=pa.array([1, 2, 3], pa.int32()),
        ts=pa.array(naive, pa.timestamp("us")),
        position=pa.array([0, 1, 2], pa.int16()),
        query=pa.array(["a", "b", "c"], pa.large_string()),
    )
    valid, quarantine, _ = _load(tmp_path, "search_log", table)
    assert quarantine.height == 0
    assert valid.schema["watch_ms"] == pl.Int64
    assert valid.schema["position"] == pl.Int32
    assert valid.schema["ts"] == pl.Datetime("ms", "UTC")
    assert valid.schema["query"] == pl.String
    assert valid["watch_ms"].to_list() == [1, 2, 3]
    # a naive timestamp is read as UTC
    assert valid["ts"].to_list() == [d.replace(tzinfo=UTC) for d in naive]


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "search_log.parquet"
    path.write_bytes(b"user_id,session_id\n1,2\n")
    with pytest.raises(SchemaError) as info:
        load_table(path, "search_log")
    assert str(path) in str(info.value)
    assert info.value.column is None


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(SchemaError) as info:
        validate_dir(tmp_path)  # no videos.parquet
    assert str(tmp_path / "videos.parquet") in str(info.value)


def test_validate_dir_raises_for_a_bad_secondary_table(tmp_path):
    _write(_table([_video_row(v) for v in (1, 2, 3)], VIDEO_TYPES), tmp_path / "videos.parquet")
    table = _table([_rec_row(i) for i in range(3)], REC_TYPES).drop_columns(["duration_ms"])
    path = _write(table, tmp_path / "rec_log.parquet")
    with pytest.raises(SchemaError) as info:
        validate_dir(tmp_path)
    assert str(path) in str(info.value) and "'duration_ms'" in str(info.value)


# --------------------------------------------------------------------------- long play

LONG_PLAY_CASES = [
    # (watch_ms, duration_ms, long?) with LONG_PLAY_MS = 18 s
    (9_999, 10_000, False),  # short video: the whole duration is needed
    (10_000, 10_000, True),
    (10_001, 10_000, True),
    (17_999, 18_000, False),
    (18_000, 18_000, True),
    (17_999, 60_000, False),  # long video: the threshold is enough
    (18_000, 60_000, True),
    (0, 60_000, False),
    (500, 500, True),
]


def test_long_play_threshold_is_18s():
    assert LONG_PLAY_MS == 18_000


@pytest.mark.parametrize(("watch", "duration", "expected"), LONG_PLAY_CASES)
def test_long_play_boundaries(watch, duration, expected):
    df = pl.DataFrame({"w": [watch], "d": [duration]}, schema={"w": pl.Int64, "d": pl.Int64})
    assert df.select(long_play(pl.col("w"), pl.col("d")))[0, 0] is expected
    assert bool(long_play_np(np.array([watch]), np.array([duration]))[0]) is expected
    assert bool(long_play_np(watch, duration)) is expected


def test_long_play_polars_and_numpy_agree():
    rng = np.random.default_rng(0)
    duration = rng.integers(1, 60_000, 2_000)
    watch = rng.integers(0, 60_000, 2_000)
    got_np = long_play_np(watch, duration)
    df = pl.DataFrame({"w": watch, "d": duration})
    got_pl = df.select(long_play(pl.col("w"), pl.col("d")).alias("x"))["x"].to_numpy()
    assert np.array_equal(got_np, got_pl)
    assert np.array_equal(got_np, watch >= np.minimum(duration, 18_000))
    assert 0 < got_np.sum() < len(got_np)


def test_long_play_custom_threshold():
    df = pl.DataFrame({"w": [4_999, 5_000, 5_000], "d": [60_000, 60_000, 4_000]})
    got = df.select(long_play(pl.col("w"), pl.col("d"), threshold_ms=5_000))["w"].to_list()
    assert got == [False, True, True]
    assert long_play_np(df["w"], df["d"], threshold_ms=5_000).tolist() == [False, True, True]


def test_tag_that_is_not_valid_utf8_is_quarantined(tmp_path):
    rows = [_video_row(i) for i in range(3)]
    tags = pa.ListArray.from_arrays(
        pa.array([0, 1, 3, 4], pa.int32()), _invalid_utf8_strings([b"a", b"b", b"\xff", b"c"])
    )
    valid, quarantine, report = _load(tmp_path, "videos", _table(rows, VIDEO_TYPES, tags=tags))
    assert report.reasons == {"tags is not valid UTF-8": 1}
    assert quarantine["row"].to_list() == [1]
    assert valid.height == 2


def test_integer_too_large_for_the_contract_is_quarantined_not_fatal(tmp_path):
    rows = [_sample_row(i) for i in range(3)]
    labels = pa.array([4, 300, 4], pa.int64())
    valid, quarantine, report = _load(tmp_path, "samples", _table(rows, SAMPLE_TYPES, label=labels))
    assert report.reasons == {"label out of range for int8": 1}
    assert quarantine["row"].to_list() == [1]
    assert valid["label"].to_list() == [4, 4]


def test_sub_millisecond_timestamps_are_truncated_not_fatal(tmp_path):
    rows = [_rec_row(i) for i in range(2)]
    ts = pa.array([1_700_000_000_123_456_789, 1_700_000_000_124_999_999], pa.timestamp("ns"))
    valid, quarantine, report = _load(tmp_path, "rec_log", _table(rows, REC_TYPES, ts=ts))
    assert quarantine.height == 0
    assert valid["ts"].dt.epoch("ms").to_list() == [1_700_000_000_123, 1_700_000_000_124]


def test_categorical_null_typed_and_view_columns_are_read(tmp_path):
    rows = [_video_row(i) for i in range(3)]
    table = _table(
        rows,
        VIDEO_TYPES,
        category=pa.array(["pets", "cars", "pets"]).dictionary_encode(),
        source_query=pa.nulls(3),
        cover_text=pa.array(["a", "b", "c"], pa.string_view()),
    )
    valid, quarantine, _ = _load(tmp_path, "videos", table)
    assert quarantine.height == 0
    assert valid["category"].to_list() == ["pets", "cars", "pets"]
    assert valid["source_query"].to_list() == [None, None, None]


def test_unsigned_id_too_large_is_quarantined(tmp_path):
    rows = [_rec_row(i) for i in range(3)]
    ids = pa.array([1, 2**63 + 5, 2], pa.uint64())
    valid, quarantine, report = _load(tmp_path, "rec_log", _table(rows, REC_TYPES, video_id=ids))
    assert report.reasons == {"video_id out of range for int64": 1}
    assert valid["video_id"].to_list() == [1, 2]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300])
def test_relevance_that_is_not_finite_is_quarantined(tmp_path, value):
    rows = [_sample_row(i) for i in range(3)]
    rel = pa.array([0.5, value, 0.7], pa.float64())
    valid, quarantine, report = _load(
        tmp_path, "samples", _table(rows, SAMPLE_TYPES, relevance=rel)
    )
    assert report.reasons == {"relevance not finite": 1}
    assert quarantine["row"].to_list() == [1]


def test_rows_disagreeing_with_their_request_are_quarantined(tmp_path):
    rows = [
        _search_row(i, request_id=1, session_id=1, user_id=1, query="cat", video_id=i)
        for i in range(5)
    ]
    rows[3]["query"] = "dog"
    rows[4]["user_id"] = 2
    valid, quarantine, report = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    assert report.reasons == {
        "query differs from the rest of its request": 1,
        "user_id differs from the rest of its request": 1,
    }
    assert quarantine["row"].to_list() == [3, 4]


def test_duplicate_rows_are_quarantined(tmp_path):
    rows = [
        _search_row(i, request_id=1, session_id=1, user_id=1, query="cat", video_id=i)
        for i in range(3)
    ]
    rows.insert(2, dict(rows[1]))
    _, quarantine, report = _load(tmp_path, "search_log", _table(rows, SEARCH_TYPES))
    assert report.reasons == {"duplicate (request_id, video_id)": 1}
    assert quarantine["row"].to_list() == [2]
    rec = [_rec_row(0), _rec_row(1), _rec_row(0)]
    _, quarantine, report = _load(tmp_path, "rec_log", _table(rec, REC_TYPES))
    assert report.reasons == {"duplicate row": 1}


def test_logs_may_refer_to_a_video_quarantined_for_another_field(tmp_path):
    videos = [_video_row(i) for i in (1, 2, 3)]  # rec rows refer to videos 1, 2, 3
    caption = _invalid_utf8_strings([b"a", b"\xff", b"c"])
    _write(_table(videos, VIDEO_TYPES, caption=caption), tmp_path / "videos.parquet")
    _write(_table([_rec_row(i) for i in range(3)], REC_TYPES), tmp_path / "rec_log.parquet")
    reports = {r.table: r for r in validate_dir(tmp_path)}
    assert reports["videos"].quarantined == 1
    assert reports["rec_log"].quarantined == 0


def test_log_requests_is_one_row_per_request_even_when_rows_interleave():
    from crops.schema import log_requests

    rows = [
        _search_row(i, request_id=r, session_id=r, user_id=r, query=f"q{r}")
        for i, r in enumerate([1, 1, 2, 1, 3, 2, 2])
    ]
    df = pl.from_arrow(_table(rows, SEARCH_TYPES))
    got = log_requests(df.lazy()).collect()
    want = df.group_by("request_id", maintain_order=True).agg(
        pl.first("session_id"), pl.first("user_id"), pl.first("ts"), pl.first("query")
    )
    assert got.equals(want)


def test_worst_share_counts_unreadable_rows_against_every_row_read():
    reports = [TableReport("videos", "v", 10, 1), TableReport("search_log", "s", 90, 0)]
    assert worst_share(reports) == pytest.approx(0.1)
    assert worst_share(reports, unreadable=25) == pytest.approx(25 / 125)
    assert worst_share([TableReport("videos", "v", 0)]) == 0.0
    assert worst_share([TableReport("videos", "v", 0)], unreadable=3) == 1.0
