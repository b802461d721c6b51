"""The miners on hand-made logs with known answers: reformulation, recfeed and HLA assembly."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest

from crops.mining.hla import SOURCE_PRIORITY, assemble, cascade_samples, labelled, to_arrow
from crops.mining.recfeed import recfeed_candidates
from crops.mining.reformulation import chains, reformulation_candidates
from crops.schema import LONG_PLAY_MS, REC_LOG, SAMPLES, SEARCH_LOG, check_rows

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WINDOW_S = 90.0
DUR = 60_000  # a one-minute video: long play from 18 s of watching
LONG = 20_000  # a watch time that is a long play of a DUR video
SHORT = 5_000  # a watch time that is not


# --------------------------------------------------------------------------- builders


def s(
    user: int,
    session: int,
    request: int,
    t_ms: int,
    query: str,
    video: int,
    kind: str = "shown",
    watch: int = 0,
    dur: int = DUR,
) -> tuple:
    """One search_log row; kind is 'click' (shown and clicked), 'shown', 'ranked', 'prefiltered'."""
    return (user, session, request, t_ms, query, video, kind, watch, dur)


def search_log(*rows: tuple) -> pl.LazyFrame:
    """A search_log in the contract schema; position is the row's order within its request."""
    positions: dict[int, int] = defaultdict(int)
    records = []
    for user, session, request, t_ms, query, video, kind, watch, dur in rows:
        records.append(
            dict(
                user_id=user,
                session_id=session,
                request_id=request,
                ts=T0 + timedelta(milliseconds=t_ms),
                query=query,
                video_id=video,
                stage="shown" if kind == "click" else kind,
                position=positions[request],
                clicked=kind == "click",
                watch_ms=watch,
                duration_ms=dur,
            )
        )
        positions[request] += 1
    frame = pl.from_arrow(pa.Table.from_pylist(records, schema=SEARCH_LOG))
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def rec_log(*rows: tuple[int, int, int, int, int]) -> pl.LazyFrame:
    """A rec_log from (user, t_ms, video, watch_ms, duration_ms)."""
    records = [
        dict(user_id=u, ts=T0 + timedelta(milliseconds=t), video_id=v, watch_ms=w, duration_ms=d)
        for u, t, v, w, d in rows
    ]
    frame = pl.from_arrow(pa.Table.from_pylist(records, schema=REC_LOG))
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def reform(search: pl.LazyFrame, window_s: float = WINDOW_S) -> list[tuple]:
    """(query, video_id, request_id, session_id, later_query) rows."""
    out = reformulation_candidates(search, window_s, LONG_PLAY_MS).collect()
    assert out.columns == ["query", "video_id", "request_id", "session_id", "later_query"]
    return out.rows()


def feed(
    search: pl.LazyFrame, rec: pl.LazyFrame, window_s: float = 1800.0, cap: int = 10
) -> list[tuple]:
    """(query, video_id, request_id, session_id, gap_s) rows."""
    out = recfeed_candidates(search, rec, window_s, cap, LONG_PLAY_MS).collect()
    assert out.columns == ["query", "video_id", "request_id", "session_id", "gap_s"]
    return out.rows()


# --------------------------------------------------------------------------- reformulation


def test_reformulation_basic_link_with_earlier_provenance() -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),  # A shown, nothing consumed
        s(1, 10, 101, 30_000, "B", 7, "click", LONG),
        s(1, 10, 101, 30_000, "B", 8),  # shown, not clicked: no consumption
    )
    assert reform(log) == [("A", 7, 100, 10, "B")]


@pytest.mark.parametrize(("gap_ms", "linked"), [(90_000, True), (90_001, False)])
def test_reformulation_window_is_inclusive_to_the_ms(gap_ms: int, linked: bool) -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, gap_ms, "B", 7, "click", LONG),
    )
    assert reform(log) == ([("A", 7, 100, 10, "B")] if linked else [])


def test_reformulation_window_is_configurable() -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, 60_000, "B", 7, "click", LONG),
    )
    assert reform(log, window_s=30) == []
    assert reform(log, window_s=60) == [("A", 7, 100, 10, "B")]


@pytest.mark.parametrize(
    ("kind", "watch", "dur", "consumed"),
    [
        ("click", 17_999, DUR, False),  # just under 18 s of a long video
        ("click", 18_000, DUR, True),  # exactly 18 s
        ("click", 10_000, 10_000, True),  # a 10 s video watched fully
        ("click", 9_999, 10_000, False),  # a 10 s video not quite finished
        ("shown", LONG, DUR, False),  # watch time without a click is no consumption
    ],
)
def test_reformulation_needs_a_long_play_click(
    kind: str, watch: int, dur: int, consumed: bool
) -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, 30_000, "B", 7, kind, watch, dur),
    )
    assert reform(log) == ([("A", 7, 100, 10, "B")] if consumed else [])


def test_reformulation_same_query_repeated_is_not_a_positive() -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, 30_000, "A", 7, "click", LONG),
    )
    assert reform(log) == []


def test_reformulation_chain_gives_later_videos_to_every_earlier_query() -> None:
    # A -> B -> C: 40 s then 50 s apart, C exactly 90 s after A (the window is inclusive)
    log = search_log(
        s(1, 10, 100, 0, "A", 1, "click", SHORT),  # A's own click, not a long play
        s(1, 10, 101, 40_000, "B", 2, "click", LONG),
        s(1, 10, 102, 90_000, "C", 3, "click", LONG),
    )
    assert reform(log) == [
        ("A", 2, 100, 10, "B"),
        ("A", 3, 100, 10, "C"),
        ("B", 3, 101, 10, "C"),
    ]


def test_reformulation_chain_stays_within_the_window_of_its_first_query() -> None:
    """Issue 14: A -> B -> C 60 s then 90 s apart: C is 150 s after A, beyond the window of
    the chain's first query, so C starts a chain of its own (consecutive gaps within the
    window no longer chain without limit)."""
    log = search_log(
        s(1, 10, 100, 0, "A", 1, "click", SHORT),
        s(1, 10, 101, 60_000, "B", 2, "click", LONG),
        s(1, 10, 102, 150_000, "C", 3, "click", LONG),
    )
    ch = chains(log, WINDOW_S).collect()
    assert ch["step"].to_list() == [0, 1, 0]
    assert ch["in_chain"].to_list() == [True, True, False]
    assert reform(log) == [("A", 2, 100, 10, "B")]


def test_reformulation_a_long_run_of_close_queries_splits_into_windows() -> None:
    """Queries 30 s apart for 5 minutes: a chain per 90 s from its first query, found in
    several rounds (0-90 s, 120-210 s, 240-300 s)."""
    log = search_log(*(s(1, 10, 100 + i, 30_000 * i, f"q{i}", i, "click", LONG) for i in range(11)))
    ch = chains(log, WINDOW_S).collect()
    assert ch["step"].to_list() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert ch["chain"].n_unique() == 3
    got = reform(log)
    assert ("q0", 3, 100, 10, "q3") in got and ("q3", 4, 103, 10, "q4") not in got
    assert len(got) == 6 + 6 + 3  # 4 + 4 + 3 requests: C(4,2) + C(4,2) + C(3,2) pairs


def _chains_reference(rows: list[tuple[int, int, int]], window_ms: int) -> list[int]:
    """Steps of (user, ts_ms, request) rows sorted by (user, ts, request): the loop the
    vectorised rounds replace."""
    steps, start_ts, step, user = [], 0, 0, None
    for u, t, _ in rows:
        if u != user or t - start_ts > window_ms:
            user, start_ts, step = u, t, 0
        else:
            step += 1
        steps.append(step)
    return steps


def test_reformulation_chains_match_the_sequential_rule_on_random_logs() -> None:
    rng = random.Random(3)
    rows, request = [], 0
    for user in range(30):
        t = 0
        for _ in range(rng.randint(1, 25)):
            t += rng.choice([0, 1_000, 30_000, 45_000, 89_999, 90_000, 90_001, 400_000])
            request += 1
            rows.append(s(user, user, request, t, f"q{request % 7}", request))
    ch = chains(search_log(*rows), WINDOW_S).collect()
    key = sorted((u, t, r) for u, _, r, t, *_ in rows)
    assert ch["request_id"].to_list() == [r for _, _, r in key]
    assert ch["step"].to_list() == _chains_reference(key, 90_000)
    sizes = ch.group_by("chain").agg(pl.len(), pl.col("ts").max() - pl.col("ts").min())
    assert (sizes["ts"].dt.total_milliseconds() <= 90_000).all()


def test_reformulation_gap_beyond_the_window_starts_a_new_chain() -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, 60_000, "B", 2, "click", LONG),
        s(1, 10, 102, 260_000, "C", 3, "click", LONG),  # 200 s after B
        s(1, 10, 103, 320_000, "D", 4, "click", LONG),
    )
    ch = chains(log, WINDOW_S).sort("ts").collect()
    assert ch["request_id"].to_list() == [100, 101, 102, 103]
    assert ch["step"].to_list() == [0, 1, 0, 1]
    chain = ch["chain"].to_list()
    assert chain[0] == chain[1] != chain[2] == chain[3]
    assert reform(log) == [("A", 2, 100, 10, "B"), ("C", 4, 102, 10, "D")]


def test_reformulation_never_links_across_users() -> None:
    # user 1: A then B; user 2: X then Y; interleaved one second apart
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(2, 20, 200, 1_000, "X", 2),
        s(1, 10, 101, 2_000, "B", 5, "click", LONG),
        s(2, 20, 201, 3_000, "Y", 6, "click", LONG),
    )
    assert reform(log) == [("A", 5, 100, 10, "B"), ("X", 6, 200, 20, "Y")]
    ch = chains(log, WINDOW_S).collect()
    users_per_chain = ch.group_by("chain").agg(pl.col("user_id").n_unique())["user_id"]
    assert users_per_chain.to_list() == [1, 1]


def test_reformulation_is_per_user_across_session_ids() -> None:
    """Chains follow the user by time, not the session id: a new session within the window
    (an app restart, a session timeout of the client) still links A to B."""
    log = search_log(
        s(1, 10, 100, 0, "A", 1),
        s(1, 11, 101, 40_000, "B", 8, "click", LONG),
    )
    assert reform(log) == [("A", 8, 100, 10, "B")]


def test_reformulation_one_row_per_pair_and_deterministic() -> None:
    rows = [
        # the same A -> B reformulation twice, an hour apart, consuming the same video 9
        s(1, 10, 100, 0, "A", 1),
        s(1, 10, 101, 30_000, "B", 9, "click", LONG),
        s(1, 12, 300, 3_600_000, "A", 1),
        s(1, 12, 301, 3_630_000, "B", 9, "click", LONG),
        # A -> B -> C where B and C both consume video 4: (A, 4) once, via the nearer B
        s(2, 20, 200, 0, "A", 1),
        s(2, 20, 201, 20_000, "B", 4, "click", LONG),
        s(2, 20, 202, 40_000, "C", 4, "click", LONG),
    ]
    expected = [
        ("A", 4, 200, 20, "B"),
        ("A", 9, 100, 10, "B"),
        ("B", 4, 201, 20, "C"),
    ]
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(rows)
        assert reform(search_log(*rows)) == expected


# --------------------------------------------------------------------------- recfeed

T = 3_600_000  # the search time, one hour after T0
MIN = 60_000


def test_recfeed_window_user_and_depth() -> None:
    search = search_log(s(1, 10, 100, T, "cats", 1))
    rec = rec_log(
        (1, T - 10 * MIN, 11, LONG, DUR),  # 10 min before: in
        (1, T + 20 * MIN, 12, LONG, DUR),  # 20 min after: in
        (1, T + 31 * MIN, 13, LONG, DUR),  # 31 min after: out of the 30 min window
        (2, T + 10_000, 14, LONG, DUR),  # another user's feed
        (1, T + 60_000, 15, SHORT, DUR),  # shallow play
        (1, T + 30 * MIN, 16, 10_000, 10_000),  # exactly at the window, short video watched
    )
    assert feed(search, rec) == [
        ("cats", 11, 100, 10, 600.0),
        ("cats", 12, 100, 10, 1200.0),
        ("cats", 16, 100, 10, 1800.0),
    ]


def test_recfeed_keeps_the_closest_plays_up_to_the_cap() -> None:
    search = search_log(s(1, 10, 100, T, "cats", 1))
    rec = rec_log(
        (1, T + 50_000, 21, LONG, DUR),
        (1, T - 10_000, 22, LONG, DUR),
        (1, T + 30_000, 23, LONG, DUR),
        (1, T - 40_000, 24, LONG, DUR),
        (1, T + 20_000, 25, LONG, DUR),
    )
    assert feed(search, rec, cap=2) == [
        ("cats", 22, 100, 10, 10.0),
        ("cats", 25, 100, 10, 20.0),
    ]


def test_recfeed_cap_is_per_user_across_their_queries() -> None:
    """Issue 14: the paper's cap is per user ("up to 100 per user"): a user's closest pairs
    over all their searches, not the closest per query."""
    search = search_log(
        s(1, 10, 100, 1_000_000, "cats", 1),
        s(1, 10, 101, 2_000_000, "dogs", 1),
        s(2, 20, 200, 1_000_000, "cats", 1),
    )
    rec = rec_log(
        (1, 1_010_000, 1, LONG, DUR),  # cats +10 s
        (1, 1_020_000, 2, LONG, DUR),  # cats +20 s
        (1, 1_990_000, 3, LONG, DUR),  # dogs -10 s
        (1, 1_995_000, 4, LONG, DUR),  # dogs -5 s
        (1, 1_500_000, 5, LONG, DUR),  # between: 500 s from either
        (2, 1_001_000, 6, LONG, DUR),
        (2, 1_002_000, 7, LONG, DUR),
        (2, 1_003_000, 8, LONG, DUR),
    )
    # user 1's two closest pairs over both queries: dogs at 5 s, then cats at 10 s (which ties
    # dogs' 10 s and wins on the query name); per query, each would have kept two; user 2 has
    # a cap of its own
    assert feed(search, rec, cap=2) == [
        ("cats", 1, 100, 10, 10.0),
        ("cats", 6, 200, 20, 1.0),
        ("cats", 7, 200, 20, 2.0),
        ("dogs", 4, 101, 10, 5.0),
    ]
    # a cap of 3 lets user 1's third closest in: (dogs, 3) at 10 s
    assert ("dogs", 3, 101, 10, 10.0) in feed(search, rec, cap=3)
    assert len(feed(search, rec, cap=3)) == 6
    # a high cap keeps everything within the window: 5 videos near 2 queries each for user 1
    assert len(feed(search, rec, cap=100)) == 2 * 5 + 3


def test_recfeed_cap_counts_a_users_pairs_not_a_querys() -> None:
    """Two users search the same query; one user's many searches use up only their own cap."""
    search = search_log(
        *(s(1, 10, 100 + i, T + i * MIN, f"q{i}", 1) for i in range(5)),
        s(2, 20, 200, T, "q0", 1),
    )
    rec = rec_log(
        *((1, T + i * MIN + 1_000, 50 + i, LONG, DUR) for i in range(5)),
        (2, T + 1_000, 90, LONG, DUR),
    )
    out = pl.DataFrame(
        feed(search, rec, window_s=1.0, cap=3),
        schema=["query", "video_id", "request_id", "session_id", "gap_s"],
        orient="row",
    )
    by_user = out.with_columns((pl.col("request_id") // 100).alias("user"))
    assert by_user.group_by("user").len().sort("user")["len"].to_list() == [3, 1]


def test_recfeed_one_row_per_pair_from_the_closest_search() -> None:
    search = search_log(
        s(1, 10, 100, 0, "cats", 1),
        s(1, 11, 101, 600_000, "cats", 1),
        s(2, 20, 200, 0, "cats", 1),
    )
    rec = rec_log(
        (1, 500_000, 9, LONG, DUR),  # 500 s after request 100, 100 s before request 101
        (2, 30_000, 9, LONG, DUR),  # user 2: 30 s after request 200
    )
    assert feed(search, rec) == [("cats", 9, 200, 20, 30.0)]
    assert feed(search, rec_log((1, 500_000, 9, LONG, DUR))) == [("cats", 9, 101, 11, 100.0)]


# --------------------------------------------------------------------------- HLA


def cascade(search: pl.LazyFrame) -> list[tuple]:
    out = cascade_samples(search).collect().sort(["query", "video_id"])
    return out.select("query", "video_id", "label", "source", "request_id", "session_id").rows()


def test_cascade_labels_by_stage() -> None:
    log = search_log(
        s(1, 10, 100, 0, "q", 1, "click", LONG),
        s(1, 10, 100, 0, "q", 2, "shown"),
        s(1, 10, 100, 0, "q", 3, "ranked"),
        s(1, 10, 100, 0, "q", 4, "prefiltered"),
        s(1, 10, 100, 0, "q", 5, "click", SHORT),  # a click is a click, long play or not
    )
    assert cascade(log) == [
        ("q", 1, 4, "click", 100, 10),
        ("q", 2, 3, "exposed", 100, 10),
        ("q", 3, 2, "ranked", 100, 10),
        ("q", 4, 1, "prefiltered", 100, 10),
        ("q", 5, 4, "click", 100, 10),
    ]


def test_cascade_best_stage_wins_with_its_provenance() -> None:
    log = search_log(
        s(1, 10, 100, 0, "q", 5, "prefiltered"),
        s(2, 30, 300, 1_000, "q", 5, "click", LONG),
        s(2, 30, 301, 1_500, "r", 6, "shown"),  # another query: its own pair
        # two clicking requests: provenance is one request with that request's own session
        s(3, 50, 400, 2_000, "p", 7, "click", LONG),
        s(4, 40, 401, 3_000, "p", 7, "click", LONG),
        s(4, 40, 401, 3_000, "p", 8, "ranked"),
    )
    assert cascade(log) == [
        ("p", 7, 4, "click", 400, 50),
        ("p", 8, 2, "ranked", 401, 40),
        ("q", 5, 4, "click", 300, 30),
        ("r", 6, 3, "exposed", 301, 30),
    ]


def miner(rows: list[tuple[str, int, int, int]], score: list[float] | None = None):
    """A miner's output frame: (query, video_id, request_id, session_id[, score])."""
    frame = pl.DataFrame(
        rows,
        schema={
            "query": pl.String,
            "video_id": pl.Int64,
            "request_id": pl.Int64,
            "session_id": pl.Int64,
        },
        orient="row",
    )
    if score is not None:
        frame = frame.with_columns(pl.Series("score", score, pl.Float64))
    return frame.lazy()


def test_source_priority_is_the_hla_order() -> None:
    assert SOURCE_PRIORITY[:3] == ("reformulation", "click", "recfeed")


def test_assemble_highest_label_then_source_priority() -> None:
    log = search_log(
        s(1, 10, 100, 0, "q", 1, "click", LONG),
        s(1, 10, 100, 0, "q", 2, "click", LONG),
        s(1, 10, 100, 0, "q", 3, "shown"),
        s(2, 20, 200, 0, "r", 1, "ranked"),
    )
    reformulation = labelled(miner([("q", 1, 900, 90)], [0.9]), "reformulation", "score")
    recfeed = labelled(miner([("q", 2, 901, 91), ("q", 3, 902, 92), ("r", 9, 903, 93)]), "recfeed")
    # the order of the parts does not matter
    for parts in (
        [cascade_samples(log), reformulation, recfeed],
        [recfeed, reformulation, cascade_samples(log)],
    ):
        out = assemble(parts)
        assert out.columns == [f.name for f in SAMPLES]
        assert out.sort(["query", "video_id"]).rows() == [
            ("q", 1, 5, "reformulation", pytest.approx(0.9), 900, 90),  # 5 beats click's 4
            ("q", 2, 4, "click", None, 100, 10),  # click beats recfeed at label 4
            ("q", 3, 4, "recfeed", None, 902, 92),  # recfeed's 4 beats exposed's 3
            ("r", 1, 2, "ranked", None, 200, 20),  # q's evidence does not reach query r
            ("r", 9, 4, "recfeed", None, 903, 93),
        ]


def test_samples_from_the_miners_match_the_contract() -> None:
    log = search_log(
        s(1, 10, 100, 0, "A", 1, "shown"),
        s(1, 10, 100, 0, "A", 2, "prefiltered"),
        s(1, 10, 101, 30_000, "B", 7, "click", LONG),
        s(1, 10, 101, 30_000, "B", 8, "ranked"),
    )
    rec = rec_log((1, 60_000, 3, LONG, DUR))
    reformulation = reformulation_candidates(log, WINDOW_S, LONG_PLAY_MS)
    recfeed = recfeed_candidates(log, rec, 1800.0, 10, LONG_PLAY_MS)
    samples = assemble(
        [
            cascade_samples(log),
            labelled(reformulation, "reformulation"),
            labelled(recfeed, "recfeed"),
        ]
    )
    table = to_arrow(samples)
    assert table.schema.equals(SAMPLES)
    assert pl.from_arrow(table).sort(["query", "video_id"]).rows() == [
        ("A", 1, 3, "exposed", None, 100, 10),
        ("A", 2, 1, "prefiltered", None, 100, 10),
        ("A", 3, 4, "recfeed", None, 100, 10),
        ("A", 7, 5, "reformulation", None, 100, 10),
        ("B", 3, 4, "recfeed", None, 101, 10),
        ("B", 7, 4, "click", None, 101, 10),
        ("B", 8, 2, "ranked", None, 101, 10),
    ]
    valid, quarantine, report = check_rows("samples", table, "samples.parquet")
    assert quarantine.height == 0 and report.quarantined == 0
    assert valid.height == table.num_rows == 7
