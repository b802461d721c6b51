"""The simulator: determinism, log shape, test sets and the filter-bubble summary."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import ir_measures
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crops.schema import LONG_PLAY_MS, STAGES, load_table
from crops.world import taxonomy as tx
from crops.world.config import WorldConfig
from crops.world.simulate import simulate


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    simulate(WorldConfig.for_scale("tiny", seed=1), tmp_path / "again")
    simulate(WorldConfig.for_scale("tiny", seed=2), tmp_path / "other")
    first, again = _digests(tiny_dir), _digests(tmp_path / "again")
    assert set(first) >= {
        "videos.parquet",
        "search_log.parquet",
        "rec_log.parquet",
        "world.json",
        "tests/queries.tsv",
        "tests/ct.qrels",
        "tests/qr.qrels",
        "tests/graded.qrels",
    }
    assert first == again
    other = _digests(tmp_path / "other")
    assert other["search_log.parquet"] != first["search_log.parquet"]
    assert other["videos.parquet"] != first["videos.parquet"]


@pytest.mark.parametrize("table", ["videos", "search_log", "rec_log"])
def test_written_tables_meet_the_contract(tiny_dir: Path, table: str) -> None:
    videos, _, _ = load_table(tiny_dir / "videos.parquet", "videos")
    ids = None if table == "videos" else videos["video_id"]
    valid, quarantine, report = load_table(tiny_dir / f"{table}.parquet", table, video_ids=ids)
    assert report.rows > 0
    assert quarantine.height == 0, quarantine["reason"].unique().to_list()
    assert valid.height == report.rows


def test_search_log_holds_the_whole_cascade(tiny_dir: Path) -> None:
    cfg = WorldConfig.for_scale("tiny")
    log = pq.read_table(tiny_dir / "search_log.parquet").to_pandas()
    assert set(log["stage"]) == set(STAGES)
    per_request = log.groupby(["request_id", "stage"]).size().unstack(fill_value=0)
    assert (per_request["shown"] == cfg.show_k).all()
    assert (per_request["ranked"] == cfg.rank_k - cfg.show_k).all()
    # the legacy channel may add fewer than legacy_k new candidates, never more
    pre = per_request["prefiltered"]
    assert pre.between(
        cfg.retrieve_k - cfg.legacy_k - cfg.rank_k, cfg.retrieve_k - cfg.rank_k
    ).all()
    assert (pre == cfg.retrieve_k - cfg.rank_k).mean() > 0.5
    shown = log[log.stage == "shown"]
    assert shown.position.between(0, cfg.show_k - 1).all()
    assert log[log.stage == "ranked"].position.between(cfg.show_k, cfg.rank_k - 1).all()
    assert log[log.stage == "prefiltered"].position.between(cfg.rank_k, cfg.retrieve_k - 1).all()
    assert not log[log.stage != "shown"].clicked.any()
    assert ((log.watch_ms > 0) == log.clicked).all()
    # clicks fall with position: the click model is position-biased
    ctr = shown.groupby("position").clicked.mean()
    assert ctr.iloc[0] > ctr.iloc[-1]
    # one query per request, and ts rises within a session in file order
    assert (log.groupby("request_id")["query"].nunique() == 1).all()
    assert (log.groupby("session_id")["ts"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_feed_log_has_deep_and_shallow_consumption(tiny_dir: Path) -> None:
    rec = pq.read_table(tiny_dir / "rec_log.parquet")
    watch, dur = rec["watch_ms"].to_numpy(), rec["duration_ms"].to_numpy()
    deep = watch >= np.minimum(dur, LONG_PLAY_MS)
    assert 0.2 < deep.mean() < 0.95
    assert (watch <= dur).all() and (watch >= 0).all()


def test_test_sets_are_trec_and_from_a_later_day(tiny_dir: Path) -> None:
    queries = dict(
        line.split("\t") for line in (tiny_dir / "tests/queries.tsv").read_text().splitlines()
    )
    for name in ("ct", "qr", "graded"):
        qrels = list(ir_measures.read_trec_qrels(str(tiny_dir / "tests" / f"{name}.qrels")))
        assert qrels, name
        assert {q.query_id for q in qrels} <= set(queries)
        if name == "graded":
            assert {q.relevance for q in qrels} == {1, 2, 3}
    req = pq.read_table(tiny_dir / "truth/requests.parquet")
    train = req.filter(pc.equal(req["split"], "train"))
    test = req.filter(pc.equal(req["split"], "test"))
    assert pc.min(test["ts"]).as_py() > pc.max(train["ts"]).as_py().replace(hour=0, minute=0)
    assert pc.min(test["day"]).as_py() == WorldConfig.for_scale("tiny").days


def test_summary_numbers_match_a_naive_recount(tiny_dir: Path) -> None:
    """Every behavioural number is recounted here with plain Python over the rows."""
    meta = json.loads((tiny_dir / "world.json").read_text())
    s = meta["summary"]
    log = pq.read_table(tiny_dir / "search_log.parquet").to_pylist()
    shown = [r for r in log if r["stage"] == "shown"]
    clicks = [r for r in shown if r["clicked"]]
    longs = [r for r in clicks if r["watch_ms"] >= min(r["duration_ms"], LONG_PLAY_MS)]
    assert s["impressions"] == len(shown)
    assert s["ctr"] == pytest.approx(len(clicks) / len(shown), abs=1e-6)
    assert s["long_play_rate"] == pytest.approx(len(longs) / len(clicks), abs=1e-6)

    requests: dict[int, tuple] = {}
    for r in log:
        requests[r["request_id"]] = (r["session_id"], r["ts"], r["query"], r["user_id"])
    by_session: dict[int, list] = defaultdict(list)
    for rid, (sid, ts, q, u) in requests.items():
        by_session[sid].append((ts, rid, q, u))
    behavioural = 0
    for reqs in by_session.values():
        reqs.sort()
        for (t0, _, q0, u0), (t1, _, q1, u1) in zip(reqs, reqs[1:], strict=False):
            behavioural += q1 != q0 and u1 == u0 and (t1 - t0).total_seconds() <= 90
    assert s["requests"] == len(requests)
    assert s["reformulated_requests"] == behavioural
    assert s["reformulation_rate"] == pytest.approx(behavioural / len(requests), abs=1e-6)

    # true reformulations (same intent, per the truth) within 90 s, and what they consumed
    truth = [
        r
        for r in pq.read_table(tiny_dir / "truth/requests.parquet").to_pylist()
        if r["split"] == "train"
    ]
    by_id = {r["request_id"]: r for r in truth}
    pairs = [
        (by_id[r["prev_request_id"]]["query"], r["request_id"], r["session_id"])
        for r in truth
        if r["relation"] == "reformulation"
        and (r["ts"] - by_id[r["prev_request_id"]]["ts"]).total_seconds() <= 90
    ]
    assert s["reformulation_sessions_90s"] == len({sid for _, _, sid in pairs})
    shown_for = defaultdict(set)
    for r in shown:
        shown_for[r["query"]].add(r["video_id"])
    consumed = defaultdict(list)
    for r in longs:
        consumed[r["request_id"]].append(r["video_id"])
    after = [(q0, v) for q0, r1, _ in pairs for v in consumed[r1]]
    never = sum(v not in shown_for[q0] for q0, v in after) / len(after)
    assert s["consumed_after_reformulation"] == len(after)
    assert s["consumed_after_reformulation_never_shown_share"] == pytest.approx(never, abs=1e-6)

    # exposure coverage from the truth: relevant = same topic as the user's intent
    intent_of = {r["request_id"]: r["intent_id"] for r in truth}
    vtopic = dict(
        zip(
            *pq.read_table(tiny_dir / "truth/videos.parquet", columns=["video_id", "topic"])
            .to_pydict()
            .values(),
            strict=True,
        )
    )
    itopic = dict(
        zip(
            *pq.read_table(tiny_dir / "truth/intents.parquet", columns=["intent_id", "topic"])
            .to_pydict()
            .values(),
            strict=True,
        )
    )
    seen = {
        (intent_of[r["request_id"]], r["video_id"])
        for r in shown
        if vtopic[r["video_id"]] == itopic[intent_of[r["request_id"]]]
    }
    per_topic = defaultdict(int)
    for t in vtopic.values():
        per_topic[t] += 1
    relevant = sum(per_topic[t] for t in itopic.values())
    assert s["relevant_pairs"] == relevant
    assert s["exposure_coverage"] == pytest.approx(len(seen) / relevant, abs=1e-6)


def test_the_world_shows_a_filter_bubble(tiny_dir: Path) -> None:
    s = json.loads((tiny_dir / "world.json").read_text())["summary"]
    assert s["exposure_coverage"] < 0.5
    assert s["reformulation_sessions_90s"] > 0
    # a tiny world's few queries overlap more; the default-scale test asks for > 0.5
    assert s["consumed_after_reformulation_never_shown_share"] > 0.2
    assert s["ambiguous_requests"] > 0
    assert s["ambiguous_head_one_sense_share"] > 0.9
    assert s["feed_deep_videos_never_shown_in_search_share"] > 0.0


def test_polysemous_words_are_ambiguous_queries(tiny_world) -> None:
    for word in ("python", "transformer"):
        f = tiny_world.form_id(word)
        assert f is not None
        topics = {int(tiny_world.intents.topic[i]) for i in tiny_world.forms.senses[f]}
        dominant, minor = tx.POLYSEMOUS[word]
        assert {tx.TOPICS[t].name for t in topics} == {dominant, minor}
        grades = tiny_world.query_grades(word, tiny_world.videos.video_id)
        assert (grades[np.isin(tiny_world.videos.topic, list(topics))] >= 2).all()


def test_reformulation_gaps_straddle_the_90_second_window(tiny_dir: Path) -> None:
    truth = pq.read_table(tiny_dir / "truth/requests.parquet")
    ts = dict(zip(truth["request_id"].to_pylist(), truth["ts"].to_pylist(), strict=True))
    gaps = [
        (ts[r] - ts[p]).total_seconds()
        for r, p, rel in zip(
            truth["request_id"].to_pylist(),
            truth["prev_request_id"].to_pylist(),
            truth["relation"].to_pylist(),
            strict=True,
        )
        if rel == "reformulation"
    ]
    gaps = np.array(gaps)
    assert (gaps <= 90).mean() > 0.6
    assert (gaps > 90).any()
    assert (gaps > 0).all()


def test_config_rejects_an_impossible_cascade() -> None:
    with pytest.raises(ValueError, match="show_k < rank_k"):
        WorldConfig.for_scale("tiny", show_k=30)
    with pytest.raises(ValueError, match="lexical_pool exceeds n_videos"):
        WorldConfig.for_scale("tiny", n_videos=200, lexical_pool=300, retrieve_k=60)
    with pytest.raises(ValueError, match="legacy_k"):
        WorldConfig.for_scale("tiny", legacy_k=60)


@pytest.mark.slow
def test_default_scale_shows_the_bubble(tmp_path: Path) -> None:
    meta = simulate(WorldConfig.for_scale("default", seed=1), tmp_path / "w")
    s = meta["summary"]
    assert s["exposure_coverage"] < 0.5
    assert s["ambiguous_head_one_sense_share"] > 0.95
    assert s["consumed_after_reformulation_never_shown_share"] > 0.5
    assert meta["counts"]["search_log"] > 1_000_000
    assert pa.types.is_timestamp(pq.read_schema(tmp_path / "w/search_log.parquet").field("ts").type)


def test_ct_and_qr_recounted_from_the_test_day_log(tiny_dir: Path) -> None:
    """CT = clicked on the test day; QR = long plays after a true reformulation within 90 s,
    given to the earlier queries of the chain. Recounted from the test day's rows."""
    qid = {
        q: i
        for i, q in (
            line.split("\t") for line in (tiny_dir / "tests/queries.tsv").read_text().splitlines()
        )
    }

    def qrels(name: str) -> set[tuple[str, int]]:
        lines = (tiny_dir / "tests" / f"{name}.qrels").read_text().splitlines()
        return {(q, int(v)) for q, _, v, _ in (line.split() for line in lines)}

    log = pq.read_table(tiny_dir / "truth/test_search_log.parquet").to_pylist()
    truth = {
        r["request_id"]: r
        for r in pq.read_table(tiny_dir / "truth/requests.parquet").to_pylist()
        if r["split"] == "test"
    }
    assert {r["request_id"] for r in log} == set(truth)
    ct = {(qid[r["query"]], r["video_id"]) for r in log if r["clicked"]}
    assert qrels("ct") == ct

    def parent(rid: int) -> int | None:
        r = truth[rid]
        p = r["prev_request_id"]
        if r["relation"] != "reformulation" or p < 0:
            return None
        return p if (r["ts"] - truth[p]["ts"]).total_seconds() <= 90 else None

    qr = set()
    for r in log:
        if r["clicked"] and r["watch_ms"] >= min(r["duration_ms"], LONG_PLAY_MS):
            p = parent(r["request_id"])
            while p is not None:
                if truth[p]["query"] != r["query"]:
                    qr.add((qid[truth[p]["query"]], r["video_id"]))
                p = parent(p)
    assert qr and qrels("qr") == qr


def test_an_empty_day_gives_empty_logs(tmp_path: Path) -> None:
    cfg = WorldConfig.for_scale(
        "tiny",
        n_users=10,
        searches_per_user_day=1e-9,
        test_searches_per_user=1.0,
        feed_sessions_per_user_day=0.5,
    )
    meta = simulate(cfg, tmp_path / "w")
    assert meta["counts"]["search_log"] == 0
    assert pq.read_table(tmp_path / "w/search_log.parquet").num_rows == 0


def test_a_world_rebuilt_from_an_edited_config_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    from crops.world.world import World

    copy = Path(shutil.copytree(tiny_dir, tmp_path / "w"))
    meta = json.loads((copy / "world.json").read_text())
    meta["config"]["seed"] = 99
    (copy / "world.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="rebuilt catalogue differs"):
        World.load(copy)
