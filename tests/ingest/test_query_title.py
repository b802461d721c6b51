"""`crops ingest query-title`: graded pairs into judged samples, a held-out `--trec-dir`
collection and unreadable rows with their reasons, on a hand-written fixture (every bad-input
case) and on the real QBQTC train split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from crops.evaluate.collection import trec_collection
from crops.ingest.formats import IngestOptions, run
from crops.ingest.judgements import grade_labels, judgement_samples
from crops.ingest.query_title import query_id
from crops.ingest.split import held_out
from crops.ingest.text import IngestError
from crops.schema import JUDGED_SOURCE

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CROPS_SHARED", REPO.parent / "shared"))
QBQTC = SHARED / "data" / "qbqtc-train" / "train.json"
FIXTURE = Path(__file__).parent / "fixtures" / "query_title.jsonl"

#: The fixture's readable judgements on the scale 0-2, one per pair (line: query, title, grade).
KEPT = {
    1: ("红烧肉做法", "红烧肉的家常做法", 2),
    2: ("红烧肉做法", "红烧牛肉面", 1),
    3: ("红烧肉做法", "东坡肉的历史", 0),
    4: ("北京天气", "北京今日天气预报", 2),
    5: ("北京天气", "上海天气预报", 0),
    16: ("猫咪呕吐怎么办", "猫咪吐黄水怎么办", 1),
    18: ("怎么学游泳", "成人学游泳的方法", 2),
    19: ("怎么学游泳", "红烧肉的家常做法", 0),
}
#: line -> why it is unreadable (with --grades 0-2)
UNREADABLE = {
    6: "duplicate pair",
    7: "conflicting grades",
    8: "conflicting grades",
    9: "grade not an integer",
    10: "negative grade",
    11: "empty query",
    12: "empty title",
    13: "missing title",
    14: "malformed JSON",
    17: "unknown grade",
}
TITLES = [
    "红烧肉的家常做法",
    "红烧牛肉面",
    "东坡肉的历史",
    "北京今日天气预报",
    "上海天气预报",
    "猫咪呕吐的原因",  # only in the conflicting rows: still a document of the corpus
    "猫咪吐黄水怎么办",
    "成人学游泳的方法",
]
QUERIES = ["红烧肉做法", "北京天气", "猫咪呕吐怎么办", "怎么学游泳"]
#: a share that holds out some of the fixture's queries and trains on the others
SHARE = 0.5


def test_the_share_splits_the_fixture_queries() -> None:
    held = [q for q in QUERIES if held_out(q, SHARE)]
    assert 0 < len(held) < len(QUERIES), held


def _import(tmp_path: Path, **options) -> tuple[Path, dict]:
    out = tmp_path / "out"
    manifest = run("query-title", FIXTURE, out, IngestOptions(**options))
    return out, manifest


def _sample_rows(out: Path) -> set[tuple[str, str, int]]:
    ids = pl.read_parquet(out / "ids.parquet").filter(pl.col("kind") == "video")
    title = dict(zip(ids["id"].to_list(), ids["source_id"].to_list(), strict=True))
    samples = pl.read_parquet(out / "samples.parquet")
    return {(q, title[v], lab) for q, v, lab in samples.select("query", "video_id", "label").rows()}


def test_judged_labels_follow_the_hla_rule() -> None:
    assert grade_labels(2) == {0: 1, 1: 3, 2: 5}
    frame = pl.DataFrame({"query": ["q"], "video_id": ["t"], "grade": [3]})
    with pytest.raises(ValueError, match="outside the scale 0..2"):
        judgement_samples(frame, 2)


def test_fixture_imports_as_judged_samples_and_a_held_out_collection(tmp_path: Path) -> None:
    out, manifest = _import(tmp_path, grades="0-2", holdout=SHARE)
    held = {q for q in QUERIES if held_out(q, SHARE)}
    label = {0: 1, 1: 3, 2: 5}

    videos = pl.read_parquet(out / "videos.parquet")
    assert videos["caption"].to_list() == TITLES
    ids = pl.read_parquet(out / "ids.parquet")
    assert ids["kind"].unique().to_list() == ["video"]
    assert sorted(ids["source_id"].to_list()) == sorted(TITLES)
    assert set(ids["id"].to_list()) == set(videos["video_id"].to_list())

    samples = pl.read_parquet(out / "samples.parquet")
    assert set(samples["source"].to_list()) == {JUDGED_SOURCE}
    assert samples["request_id"].null_count() == samples.height
    assert samples["relevance"].null_count() == samples.height
    train = {(q, t, label[g]) for q, t, g in KEPT.values() if q not in held}
    assert _sample_rows(out) == train
    assert manifest["tables"]["samples"]["quarantined"] == 0

    bad = pl.read_parquet(out / "_quarantine" / "unreadable.parquet")
    got = {int(w.rsplit(":", 1)[1]): r for w, r in bad.select("where", "reason").rows()}
    assert got == UNREADABLE
    assert all(w.startswith(str(FIXTURE)) for w in bad["where"])
    assert bad.filter(pl.col("reason") == "malformed JSON")["raw"][0].startswith('{"id": 13')
    reasons = manifest["unreadable"]["reasons"]
    assert reasons["conflicting grades"] == 2 and sum(reasons.values()) == len(UNREADABLE)

    notes = manifest["notes"]
    assert notes["grade_scale"] == "0-2" and notes["scale_from"] == "given"
    assert notes["labels"] == {"0": 1, "1": 3, "2": 5}
    assert notes["rows"] == 18
    assert notes["rows_per_grade"] == {"0": 3, "1": 3, "2": 5}
    assert notes["queries"] == {"train": len(QUERIES) - len(held), "held_out": len(held)}
    n_held = sum(q in held for q, _, _ in KEPT.values())
    assert notes["judgements"] == {"train": len(KEPT) - n_held, "held_out": n_held}
    # every source row is a sample, a held-out judgement or unreadable
    assert samples.height + n_held + bad.height == notes["rows"]

    coll = trec_collection(out / "collection")
    assert sorted(coll.doc_texts) == sorted(TITLES)  # retrieval is over every title
    assert coll.queries == {query_id(q): q for q in QUERIES if q in held}
    doc_title = dict(zip(coll.doc_ids, coll.doc_texts, strict=True))
    judged = {
        (coll.queries[qid], doc_title[d], g)
        for qid, docs in coll.qrels[0].judgements.items()
        for d, g in docs.items()
    }
    assert judged == {v for v in KEPT.values() if v[0] in held}
    assert manifest["collection"]["judgements"] == n_held


def test_holdout_zero_trains_and_evaluates_on_every_query(tmp_path: Path) -> None:
    out, manifest = _import(tmp_path, grades="0-2", holdout=0.0)
    assert len(_sample_rows(out)) == len(KEPT)
    coll = trec_collection(out / "collection")
    assert sorted(coll.queries.values()) == sorted(QUERIES)
    assert len(coll.qrels[0]) == len(KEPT)
    assert manifest["notes"]["queries"] == {"train": 4, "held_out": 0}
    assert manifest["notes"]["collection_queries"] == "all"


def test_without_a_scale_the_largest_grade_is_the_top(tmp_path: Path) -> None:
    out, manifest = _import(tmp_path, holdout=0.0)
    notes = manifest["notes"]
    assert notes["grade_scale"] == "0-3" and notes["scale_from"] == "largest grade read"
    assert notes["labels"] == {"0": 1, "1": 2, "2": 4, "3": 5}
    assert ("猫咪呕吐怎么办", "猫咪呕吐的原因和处理", 5) in _sample_rows(out)
    assert "unknown grade" not in manifest["unreadable"]["reasons"]


def test_tsv_and_json_array_read_as_json_lines(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()[:5]]
    tsv = tmp_path / "pairs.tsv"
    lines = [
        "id\tquery\ttitle\tlabel",
        *(f"{r['id']}\t{r['query']}\t{r['title']}\t{r['relevant']}" for r in rows),
    ]
    lines += ["9\t北京天气\t只有三列", "10\t北京天气\t北京下雪\t1.5", ""]
    tsv.write_text("\n".join(lines), encoding="utf-8")
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    expected = {(q, t, {0: 1, 1: 3, 2: 5}[g]) for line, (q, t, g) in KEPT.items() if line <= 5}
    for src, name in ((tsv, "tsv"), (array, "array")):
        out = tmp_path / name
        manifest = run("query-title", src, out, IngestOptions(holdout=0.0))
        assert _sample_rows(out) == expected, name
    bad = pl.read_parquet(tmp_path / "tsv" / "_quarantine" / "unreadable.parquet")
    assert bad.select("where", "reason").rows() == [
        (f"{tsv}:7", "not 4 tab-separated fields"),
        (f"{tsv}:8", "grade not an integer"),
    ]
    assert manifest["notes"]["source_kind"] == "json-array"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "a.csv",
            "query,title,relevant\n北京,北京天气,1\n",
            "not JSON lines, a JSON array or a TSV",
        ),
        ("b.tsv", "query\ttitle\n北京\t北京天气\n", ":1: missing column relevant | label | grade"),
        ("c.json", "[1, 2", "not a readable JSON array"),
        ("d.jsonl", '{"query": "q", "title": "t", "relevant": "x"}\n', "no readable judgement"),
        ("e.jsonl", '{"query": "q", "title": "t", "relevant": 0}\n', "every grade is 0"),
    ],
)
def test_files_that_are_not_graded_pairs_are_refused(tmp_path: Path, name, text, message) -> None:
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    with pytest.raises(IngestError) as info:
        run("query-title", src, tmp_path / "out", IngestOptions())
    assert str(src) in str(info.value) and message in str(info.value)


def test_a_grade_scale_must_start_at_zero() -> None:
    with pytest.raises(ValueError, match="grades"):
        IngestOptions(grades="1-5")


def test_cli_imports_gbk_only_when_told(run, tmp_path: Path) -> None:
    gbk = tmp_path / "pairs.jsonl"
    gbk.write_bytes(FIXTURE.read_text(encoding="utf-8").encode("gbk"))
    code, _, stderr = run("ingest", "query-title", gbk, "--out", tmp_path / "a")
    assert code == 2
    assert str(gbk) in stderr and "GBK" in stderr and "--encoding gbk" in stderr
    args = ["ingest", "query-title", gbk, "--encoding", "gbk", "--grades", "0-2", "--holdout", 0]
    # 10 of the fixture's 18 rows are unreadable: over the default share, exit 1
    code, stdout, _ = run(*args, "--out", tmp_path / "b")
    assert code == 1 and "quarantined or unreadable" in stdout
    code, stdout, stderr = run(*args, "--out", tmp_path / "c", "--max-quarantine-share", 0.9)
    assert code == 0, stderr
    assert "unreadable source rows: 10" in stdout
    assert "collection: 8 docs, 4 queries, 8 judgements" in stdout
    manifest = json.loads((tmp_path / "c" / "ingest.json").read_text())
    assert manifest["encoding"] == "gbk"
    assert _sample_rows(tmp_path / "c") == {
        (q, t, {0: 1, 1: 3, 2: 5}[g]) for q, t, g in KEPT.values()
    }


def test_cli_refuses_a_bad_grade_scale(run, tmp_path: Path) -> None:
    code, _, stderr = run(
        "ingest", "query-title", FIXTURE, "--out", tmp_path / "o", "--grades", "2"
    )
    assert code == 2 and "grades" in stderr


@pytest.mark.slow
def test_qbqtc_train_split(tmp_path: Path) -> None:
    """The real QBQTC train split: every one of its 15,000 rows is accounted for."""
    assert QBQTC.is_file(), f"QBQTC not found at {QBQTC} (set CROPS_SHARED)"
    out = tmp_path / "qbqtc"
    manifest = run("query-title", QBQTC, out, IngestOptions())
    notes = manifest["notes"]
    assert notes["rows"] == 15_000
    assert notes["grade_scale"] == "0-2"
    assert notes["rows_per_grade"] == {"0": 6420, "1": 5903, "2": 2677}  # its README's counts
    q = notes["queries"]
    assert q["train"] + q["held_out"] == 791 and 0 < q["held_out"] < q["train"]
    samples = manifest["tables"]["samples"]
    bad = manifest["unreadable"]
    assert (
        samples["valid"] + samples["quarantined"] + bad["rows"] + notes["judgements"]["held_out"]
        == 15_000
    )
    # 24 pairs are judged more than once: 1 with two grades (both rows out), 29 repeats
    assert bad["reasons"] == {"conflicting grades": 2, "duplicate pair": 29}
    assert manifest["collection"]["queries"] == q["held_out"]
    assert manifest["collection"]["judgements"] == notes["judgements"]["held_out"]
    coll = trec_collection(out / "collection")
    assert len(coll.doc_ids) == pl.read_parquet(out / "videos.parquet").height == 14_774
