"""`crops ingest trec-session`: the hand-written Session Track file into contract tables, every
bad element counted with its reason, hostile and wrong-format files refused, and `crops mine`
finding the reformulations built into the file."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from support.mined import mined_reformulations

from crops.ingest import formats
from crops.ingest.formats import IngestOptions
from crops.ingest.text import IngestError
from crops.ingest.trec_session import TREC_EPOCH, WEB_RESULT_DURATION_MS

XML = Path(__file__).parent / "fixtures" / "sessiontrack_small.xml"
DOC = "clueweb12-{}-{:05d}".format

#: (earlier query, document consumed after reformulating within 90 s): the file's comment
REFORMULATIONS = {
    ("hiking boots", DOC("0000tw-05", 4)),
    ("flu symptoms", DOC("0100wb-33", 13)),
    ("flu symptoms", DOC("0100wb-33", 17)),
    ("flu symptoms in children", DOC("0100wb-33", 17)),
    ("python tutorial", DOC("0200tw-01", 21)),
}


def source_ids(out: Path, kind: str) -> dict[int, str]:
    ids = pl.read_parquet(out / "ids.parquet").filter(pl.col("kind") == kind)
    return dict(zip(ids["id"], ids["source_id"], strict=True))


def readable(out: Path) -> pl.DataFrame:
    """search_log with the source's ids back in place of the int64s."""
    log = pl.read_parquet(out / "search_log.parquet")
    return log.with_columns(
        pl.col(c).replace_strict(source_ids(out, kind), return_dtype=pl.String)
        for c, kind in (("video_id", "video"), ("request_id", "request"), ("user_id", "user"))
    )


def line_of(needle: str) -> int:
    text = XML.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(text, 1) if needle in line)


def ingest(path: Path, out: Path, **options) -> dict:
    return formats.run("trec-session", path, out, IngestOptions(**options))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("trec") / "out"
    ingest(XML, target)
    return target


def test_tables_and_quarantine(out: Path) -> None:
    manifest = json.loads((out / "ingest.json").read_text())
    search = manifest["tables"]["search_log"]
    # 10 + 4 + 6 + 3 result rows; one click ends 5 s before it starts
    assert (search["rows"], search["valid"]) == (23, 22)
    assert search["reasons"] == {"negative watch_ms": 1}
    assert manifest["tables"]["videos"]["valid"] == 20
    assert manifest["tables"]["rec_log"]["rows"] == 0
    assert manifest["ids"] == {"request": 11, "session": 4, "user": 3, "video": 20}
    bad = pl.read_parquet(out / "_quarantine" / "search_log.parquet")
    assert bad["watch_ms"].to_list() == [-5000]
    # where the quarantined row is in the source: the result's element, line and path
    assert bad["where"].to_list() == [
        "sessiontrack_small.xml:208 session[@num='3']/interaction[@num='2']/result[@rank='1']"
    ]
    valid_columns = pl.read_parquet(out / "search_log.parquet").columns
    assert "where" not in valid_columns and "_where" not in valid_columns
    notes = manifest["notes"]
    assert (notes["sessions"], notes["interactions"], notes["currentquery"]) == (4, 13, 4)
    assert notes["interactions_by_type"] == {"page": 1, "reformulate": 10}


def test_unreadable_elements_with_reasons(out: Path) -> None:
    manifest = json.loads((out / "ingest.json").read_text())
    assert manifest["unreadable"]["reasons"] == {
        "click rank not in results": 1,
        "interaction without query": 1,
        "result without a document id": 1,
        "starttime not a time": 1,
    }
    bad = pl.read_parquet(out / "_quarantine" / "unreadable.parquet")
    row = bad.filter(pl.col("reason") == "starttime not a time").row(0, named=True)
    line = line_of('<interaction num="3" type="reformulate">')
    assert row["where"] == (
        f"sessiontrack_small.xml:{line} session[@num='2']/interaction[@num='3']"
    )
    assert "suede protector spray" in row["raw"]
    click = bad.filter(pl.col("reason") == "click rank not in results").row(0, named=True)
    assert "<rank>7</rank>" in click["raw"]


def test_clicks_dwell_and_positions(out: Path) -> None:
    log = readable(out)
    clicked = log.filter(pl.col("clicked")).sort("request_id")
    assert clicked.select("request_id", "video_id", "watch_ms").rows() == [
        ("1.2", DOC("0000tw-05", 4), 40_000),
        ("1.3", DOC("0001tw-11", 7), 5_000),
        ("1.4", DOC("0001tw-11", 8), 60_000),
        ("2.2", DOC("0002tw-20", 11), 30_000),
        ("3.2", DOC("0100wb-33", 13), 20_000),
        ("3.3", DOC("0100wb-33", 17), 25_000),
        ("4.3", DOC("0200tw-01", 21), 100_000),
    ]
    assert log.filter(~pl.col("clicked"))["watch_ms"].unique().to_list() == [0]
    assert log["duration_ms"].unique().to_list() == [WEB_RESULT_DURATION_MS]
    assert log["stage"].unique().to_list() == ["shown"]
    page = log.filter(pl.col("request_id") == "1.4").sort("position")
    assert page["position"].to_list() == [10, 11]  # ranks 11 and 12 of the second page


def test_times_users_and_reformulation_gaps(out: Path) -> None:
    log = readable(out)
    first = log.group_by("request_id").agg(pl.col("ts").first(), pl.col("user_id").first())
    ts = dict(zip(first["request_id"], first["ts"], strict=True))
    assert ts["1.1"] == TREC_EPOCH
    assert (ts["1.2"] - ts["1.1"]).total_seconds() == 25.5
    assert (ts["1.3"] - ts["1.1"]).total_seconds() == 200
    assert (ts["2.2"] - ts["2.1"]).total_seconds() == 120
    assert (ts["2.1"] - ts["1.1"]).days == 1  # each session on a day of its own
    users = dict(zip(first["request_id"], first["user_id"], strict=True))
    assert users["1.1"] == users["2.1"] == "1"
    assert (users["3.1"], users["4.1"]) == ("session-3", "session-4")  # "NA" and none


def test_videos(out: Path) -> None:
    videos = pl.read_parquet(out / "videos.parquet").with_columns(
        pl.col("video_id").replace_strict(source_ids(out, "video"), return_dtype=pl.String)
    )
    by_id = {r["video_id"]: r for r in videos.iter_rows(named=True)}
    assert by_id[DOC("0000tw-05", 4)]["caption"] == "Waterproof hiking boots reviewed"
    assert by_id[DOC("0000tw-05", 4)]["cover_text"].startswith("Gore-Tex or leather")
    assert by_id[DOC("0200tw-01", 18)]["caption"] == "http://example.org/python/tutorial"


HOSTILE = {
    "entity expansion": """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<sessiontrack><session num="1"><interaction num="1" starttime="0"><query>&lol2;</query>
</interaction></session></sessiontrack>""",
    "external entity": """<?xml version="1.0"?>
<!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<sessiontrack><session num="1"><interaction num="1" starttime="0"><query>&x;</query>
</interaction></session></sessiontrack>""",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_xml_refused(case: str, tmp_path: Path, run) -> None:
    path = tmp_path / "hostile.xml"
    path.write_text(HOSTILE[case], encoding="utf-8")
    with pytest.raises(IngestError, match=r"hostile.xml:2: refused: a DOCTYPE"):
        ingest(path, tmp_path / "out")
    code, _, err = run("ingest", "trec-session", path, "--out", tmp_path / "cli")
    assert code == 2 and "refused: a DOCTYPE or entity declaration" in err


def test_wrong_format_refused(tmp_path: Path) -> None:
    csv = tmp_path / "src_inter.csv"
    csv.write_text("user_id,search_session_id\n1,2\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"src_inter.csv:1: not XML, so not a TREC Session"):
        ingest(csv, tmp_path / "a")
    other = tmp_path / "other.xml"
    other.write_text("<rss><channel/></rss>", encoding="utf-8")
    with pytest.raises(IngestError, match=r"root element is <rss>, not <sessiontrack>"):
        ingest(other, tmp_path / "b")
    with pytest.raises(IngestError, match=r"reads one XML file .* not a folder"):
        ingest(tmp_path, tmp_path / "c")


def test_gbk_detected_and_converted(tmp_path: Path, run) -> None:
    path = tmp_path / "gbk.xml"
    text = XML.read_text(encoding="utf-8").replace("hiking boots</query>", "登山靴</query>", 1)
    path.write_bytes(text.replace('encoding="UTF-8"', 'encoding="GBK"').encode("gbk"))
    code, _, err = run("ingest", "trec-session", path, "--out", tmp_path / "a")
    assert code == 2 and "--encoding gbk" in err
    code, _, _ = run(
        "ingest",
        "trec-session",
        path,
        "--out",
        tmp_path / "b",
        "--encoding",
        "gbk",
        "--max-quarantine-share",
        "0.5",
    )
    assert code == 0
    assert "登山靴" in readable(tmp_path / "b")["query"].to_list()


def test_cli_reports_and_gates(tmp_path: Path, run) -> None:
    code, stdout, _ = run("ingest", "trec-session", XML, "--out", tmp_path / "a")
    assert code == 1  # 1 of 23 search_log rows quarantined is over the default 1 %
    assert "unreadable source rows: 4" in stdout
    assert "click rank not in results: 1" in stdout
    code, _, _ = run(
        "ingest", "trec-session", XML, "--out", tmp_path / "b", "--max-quarantine-share", "0.2"
    )
    assert code == 0
    assert pl.read_parquet(tmp_path / "b" / "search_log.parquet").height == 22


def test_mine_finds_the_reformulations(out: Path, tmp_path: Path, run) -> None:
    found = mined_reformulations(run, out, tmp_path / "mined").with_columns(
        pl.col("video_id").replace_strict(source_ids(out, "video"), return_dtype=pl.String)
    )
    assert set(found.select("query", "video_id").iter_rows()) == REFORMULATIONS
