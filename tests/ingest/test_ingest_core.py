"""The ingest core every format shares: id mapping, text decoding, writing an import, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from crops.ingest import ids
from crops.ingest.ids import KEPT_MAX, IdCollision, IdTable, to_int64
from crops.ingest.tables import WHERE, Collection, Imported, unreadable_rows, write
from crops.ingest.text import IngestError, read_csv_text, read_text

FIXTURE = Path(__file__).parent / "fixtures" / "mapped"
ROOT = Path(__file__).parents[2]

# --------------------------------------------------------------------------- ids


def test_canonical_integers_are_kept_and_other_ids_hashed_high():
    kept = ["0", "42", str(KEPT_MAX - 1)]
    hashed = ["007", "-1", str(KEPT_MAX), "1e3", "４２", "u_8f3a", "99999999999999999999"]
    got = to_int64(pl.Series("video_id", [*kept, *hashed, None])).to_list()
    assert got[:3] == [0, 42, KEPT_MAX - 1]
    assert all(KEPT_MAX <= v < 2 * KEPT_MAX for v in got[3:-1])
    assert len(set(got[3:-1])) == len(hashed)
    assert got[-1] is None


def test_integer_columns_map_like_their_text():
    assert to_int64(pl.Series([5, None, -3])).to_list()[:2] == [5, None]
    assert to_int64(pl.Series([-3])).item() == to_int64(pl.Series(["-3"])).item() >= KEPT_MAX


def test_hashed_ids_are_stable_across_processes():
    code = (
        "import polars as pl; from crops.ingest.ids import to_int64;"
        "print(to_int64(pl.Series(['clueweb12-0000tw-05-12114', 'u_8f3a'])).to_list())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    here = to_int64(pl.Series(["clueweb12-0000tw-05-12114", "u_8f3a"])).to_list()
    assert json.loads(out) == here
    # and independent of the other values and their order
    assert to_int64(pl.Series(["x", "u_8f3a"])).to_list()[1] == here[1]


def test_id_table_records_each_kind():
    table = IdTable()
    videos = table.map("video", pl.Series(["v1", "17", "v1", None]))
    users = table.map("user", pl.Series(["v1"]))
    frame = table.frame()
    assert frame.columns == ["kind", "source_id", "id"]
    assert frame.height == 3  # v1 and 17 as videos, v1 as a user: duplicates and nulls dropped
    assert videos[1] == 17 and videos[0] == videos[2] == users[0]
    rows = set(frame.iter_rows())
    assert ("video", "17", 17) in rows and ("user", "v1", users[0]) in rows
    with pytest.raises(ValueError, match="unknown id kind 'item'"):
        table.map("item", pl.Series(["a"]))


def test_a_collision_is_an_error_not_a_merge(monkeypatch):
    monkeypatch.setattr(ids, "_hashed", lambda value: KEPT_MAX + 1)
    table = IdTable()
    table.map("video", pl.Series(["a", "b"]))
    table.map("user", pl.Series(["c"]))  # alone in its kind: no collision
    with pytest.raises(IdCollision, match=r"video ids \['a', 'b'\] all map to"):
        table.frame()


# --------------------------------------------------------------------------- text


def test_utf8_with_bom(tmp_path: Path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfuid,q\nu1,\xe7\x8c\xab\n")
    assert read_csv_text(path).columns == ["uid", "q"]
    df = read_csv_text(path, encoding="UTF-8")  # an explicit utf-8 drops the BOM too
    assert df.columns == ["uid", "q"] and df["q"].item() == "猫"


def test_gbk_is_recognised_and_converted(tmp_path: Path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("uid,q\nu1,跳舞的猫\nu2,做饭\n".encode("gbk"))
    with pytest.raises(IngestError) as err:
        read_text(path)
    message = str(err.value)
    assert f"{path}:2 (byte 9)" in message
    assert "GBK" in message and "--encoding gbk" in message
    df = read_csv_text(path, encoding="gbk")
    assert df["q"].to_list() == ["跳舞的猫", "做饭"]


def test_wrong_or_unknown_encoding(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_bytes("ok\n猫\n".encode())
    with pytest.raises(IngestError, match=r"a\.txt:2 \(byte 3\): not valid ascii"):
        read_text(path, "ascii")
    with pytest.raises(IngestError, match="'klingon' is not an encoding Python knows"):
        read_text(path, "klingon")


def test_missing_file_and_missing_columns(tmp_path: Path):
    with pytest.raises(IngestError, match=r"nope\.csv: no such file"):
        read_csv_text(tmp_path / "nope.csv")
    path = tmp_path / "a.tsv"
    path.write_text("a\tb\n1\t2\n", encoding="utf-8")
    assert read_csv_text(path, separator="\t").columns == ["a", "b"]
    with pytest.raises(IngestError, match=r"a\.tsv: missing columns c, d \(found: a, b\)"):
        read_csv_text(path, separator="\t", required=("a", "c", "d"))


# --------------------------------------------------------------------------- write


def _ts(minute: int) -> datetime:
    return datetime(2024, 5, 1, 0, minute, tzinfo=UTC)


def _imported() -> Imported:
    """Two videos, a search log with one good row and two that break contract rules, one
    unreadable source row, and a small collection over the same videos."""
    videos = pl.DataFrame(
        {
            "video_id": ["v1", "42"],
            "caption": ["cat dance", "noodles"],
            "tags": [["cat"], None],
            "cover_text": [None, None],
            "category": ["pets", "food"],
            "upload_ts": [_ts(0), None],
        },
        schema_overrides={"cover_text": pl.String, "upload_ts": pl.Datetime("ms", "UTC")},
    )
    search = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "session_id": ["s1", "s1", "s2"],
            "request_id": ["r1", "r1", "r2"],
            "ts": [_ts(0), _ts(0), _ts(5)],
            "query": ["cat", "cat", "noodles"],
            "video_id": ["v1", "42", "v9"],
            "stage": ["shown", "shown", "shown"],
            "position": [0, 1, 0],
            "clicked": [True, False, False],
            "watch_ms": [20_000, -5, 0],
            "duration_ms": [30_000, 25_000, 40_000],
        },
        schema_overrides={"ts": pl.Datetime("ms", "UTC")},
    )
    return Imported(
        format="test",
        source="memory",
        tables={"videos": videos, "search_log": search},
        unreadable=unreadable_rows([("search_log", "log.csv:9", "ts does not parse", "u3,,")]),
        collection=Collection(
            docs={"v1": "cat dance", "42": "noodles"},
            queries={"q1": "cat"},
            qrels=[("q1", "v1", 2), ("q1", "42", 0)],
        ),
        notes={"note": "kept"},
        encoding="gbk",
    )


def test_write_lays_out_an_import(tmp_path: Path):
    out = tmp_path / "out"
    manifest = write(_imported(), out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "_quarantine/excluded.parquet",
        "_quarantine/report.json",
        "_quarantine/search_log.parquet",
        "_quarantine/unreadable.parquet",
        "_quarantine/videos.parquet",
        "collection/docs.tsv",
        "collection/judged.qrels",
        "collection/queries.tsv",
        "ids.parquet",
        "ingest.json",
        "search_log.parquet",
        "videos.parquet",
    ]
    assert json.loads((out / "ingest.json").read_text()) == manifest
    assert manifest["format"] == "test" and manifest["encoding"] == "gbk"
    assert manifest["notes"] == {"note": "kept"}
    assert manifest["ids"] == {"request": 2, "session": 2, "user": 2, "video": 3}
    assert manifest["unreadable"] == {"rows": 1, "reasons": {"ts does not parse": 1}}
    assert manifest["excluded"] == {"rows": 0, "reasons": {}}
    assert manifest["collection"] == {
        "path": "collection",
        "docs": 2,
        "queries": 1,
        "judgements": 2,
    }


def test_rows_breaking_a_rule_are_quarantined_and_counts_add_up(tmp_path: Path):
    out = tmp_path / "out"
    imported = _imported()
    manifest = write(imported, out)
    search = manifest["tables"]["search_log"]
    assert (search["rows"], search["valid"], search["quarantined"]) == (3, 1, 2)
    assert search["reasons"] == {"negative watch_ms": 1, "video_id not in videos": 1}
    q = pl.read_parquet(out / "_quarantine" / "search_log.parquet")
    assert sorted(q["reason"]) == ["negative watch_ms", "video_id not in videos"]
    source_rows = imported.tables["search_log"].height + imported.unreadable.height
    assert search["valid"] + search["quarantined"] + manifest["unreadable"]["rows"] == source_rows
    assert pl.read_parquet(out / "search_log.parquet").height == search["valid"]


def test_quarantined_rows_take_their_source_place_from_the_where_column(tmp_path: Path):
    """An importer's `_where` reaches each quarantined row as `where` (rows 1 and 2 of three,
    so a misaligned gather would show), and never the valid table."""
    imported = _imported()
    log = imported.tables["search_log"]
    imported.tables["search_log"] = log.with_columns(
        pl.Series(WHERE, ["log.csv:2", "log.csv:3", "log.csv:4"])
    )
    write(imported, tmp_path / "out")
    q = pl.read_parquet(tmp_path / "out" / "_quarantine" / "search_log.parquet").sort("row")
    assert q.select("row", "where", "reason").rows() == [
        (1, "log.csv:3", "negative watch_ms"),
        (2, "log.csv:4", "video_id not in videos"),
    ]
    valid = pl.read_parquet(tmp_path / "out" / "search_log.parquet")
    assert WHERE not in valid.columns and "where" not in valid.columns
    # a table without the column: quarantine as crops validate writes it
    videos_q = pl.read_parquet(tmp_path / "out" / "_quarantine" / "videos.parquet")
    assert "where" not in videos_q.columns


def test_excluded_rows_are_kept_and_counted_but_not_bad_input(tmp_path: Path):
    """An import whose only loss is excluded rows (outside the contracts by design) passes the
    default quarantine limit."""
    imported = _imported()
    imported.tables["search_log"] = imported.tables["search_log"].head(1)  # the valid row
    imported.unreadable = unreadable_rows()
    imported.excluded = unreadable_rows(
        [("search_log", f"log.csv:{n}", "item_type not a video", "x") for n in range(5, 9)]
    )
    manifest = write(imported, tmp_path / "out")
    assert manifest["excluded"] == {"rows": 4, "reasons": {"item_type not a video": 4}}
    assert manifest["worst_share"] == 0.0
    excluded = pl.read_parquet(tmp_path / "out" / "_quarantine" / "excluded.parquet")
    assert excluded["where"].to_list() == ["log.csv:5", "log.csv:6", "log.csv:7", "log.csv:8"]


def test_written_ids_follow_the_rule_and_the_mapping_table(tmp_path: Path):
    out = tmp_path / "out"
    write(_imported(), out)
    videos = pl.read_parquet(out / "videos.parquet")
    assert videos.schema["video_id"] == pl.Int64
    table = pl.read_parquet(out / "ids.parquet")
    v1 = table.filter((pl.col("kind") == "video") & (pl.col("source_id") == "v1"))["id"].item()
    assert sorted(videos["video_id"]) == [42, v1] and v1 >= KEPT_MAX
    docs = (out / "collection" / "docs.tsv").read_text(encoding="utf-8").splitlines()
    assert docs == [f"{v1}\tcat dance", "42\tnoodles"]
    assert (out / "collection" / "judged.qrels").read_text().splitlines() == [
        f"q1 0 {v1} 2",
        "q1 0 42 0",
    ]


def test_write_refuses_a_folder_in_use(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"")
    with pytest.raises(IngestError, match="is not empty"):
        write(_imported(), out)
    assert write(_imported(), out, force=True)["tables"]["videos"]["valid"] == 2
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(IngestError, match="is a file"):
        write(_imported(), file)


def test_write_refuses_what_is_not_an_import(tmp_path: Path):
    imported = _imported()
    imported.tables.pop("videos")
    with pytest.raises(IngestError, match="no videos table"):
        write(imported, tmp_path / "a")
    imported = _imported()
    imported.tables["request_log"] = pl.DataFrame({"request_id": ["x"]})
    with pytest.raises(IngestError, match="unknown tables \\['request_log'\\]"):
        write(imported, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_collision_fails_before_anything_is_written(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ids, "_hashed", lambda value: KEPT_MAX + 1)
    with pytest.raises(IdCollision):
        write(_imported(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the CLI


def test_cli_unknown_format_lists_the_formats(run, tmp_path: Path):
    code, _, err = run("ingest", "csv", FIXTURE, "--out", tmp_path / "out")
    assert code == 2
    assert "unknown format 'csv'" in err
    for name in ("trec-session", "kuaisar", "query-title", "mapped"):
        assert name in err


def test_cli_exit_1_when_too_much_is_quarantined(run, tmp_path: Path):
    mapping = FIXTURE / "mapping.yaml"
    code, out, _ = run("ingest", "mapped", FIXTURE, "--out", tmp_path / "a", "--mapping", mapping)
    # the fixture's search log: 1 of 4 parsed rows quarantined, 3 of 7 rows unreadable
    assert code == 1
    assert "over --max-quarantine-share" in out and "unreadable source rows: 5" in out
    code, out, _ = run(
        "ingest",
        "mapped",
        FIXTURE,
        "--out",
        tmp_path / "b",
        "--mapping",
        mapping,
        "--max-quarantine-share",
        "0.5",
    )
    assert code == 0, out
    manifest = json.loads((tmp_path / "b" / "ingest.json").read_text())
    assert manifest["format"] == "mapped"
    # the limit is compared with the manifest's worst share: the search log's 1 in 4 rows,
    # or the unreadable rows' share of every row read, whichever is larger
    tables = manifest["tables"].values()
    read = sum(t["rows"] for t in tables) + manifest["unreadable"]["rows"]
    shares = [t["quarantined"] / t["rows"] for t in tables if t["rows"]]
    expected = max(*shares, manifest["unreadable"]["rows"] / read)
    assert manifest["worst_share"] == pytest.approx(expected) and 0.25 <= expected <= 0.5


def test_cli_exit_2_on_an_ingest_error(run, tmp_path: Path):
    code, _, err = run("ingest", "mapped", FIXTURE, "--out", tmp_path / "out")
    assert code == 2 and "--mapping" in err
    code, _, err = run("ingest", "mapped", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    code, _, err = run(
        "ingest",
        "mapped",
        FIXTURE,
        "--out",
        tmp_path / "used",
        "--mapping",
        FIXTURE / "mapping.yaml",
    )
    assert code == 2 and "is not empty" in err
    code, _, err = run("ingest", "mapped", FIXTURE, "--out", tmp_path / "h", "--holdout", "2")
    assert code == 2 and "holdout" in err
