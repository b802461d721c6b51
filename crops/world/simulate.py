"""`crops simulate`: write a world's logs, test sets, truth and summary to a directory."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crops import __version__
from crops.schema import REC_LOG, SEARCH_LOG, STAGES, TS, long_play_np
from crops.world.config import EPOCH_MS, WorldConfig
from crops.world.platform import REL_REFORMULATION, RELATIONS, Impressions, Requests
from crops.world.world import World

DAY_MS = 86_400_000
Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class DayLogs:
    """One simulated day, as Arrow tables ready to append."""

    search: pa.Table
    requests: pa.Table
    rec: pa.Table


class IdCounter:
    """Global session and request ids, so days and chunks never collide."""

    def __init__(self) -> None:
        self.session = 0
        self.request = 0


def session_starts(
    world: World, day: int, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Users and start times of the day's search sessions (Poisson per user)."""
    n = rng.poisson(rate * world.users.activity)
    users = np.repeat(np.arange(len(world.users)), n)
    start = EPOCH_MS + day * DAY_MS + rng.integers(7 * 3_600_000, 23 * 3_600_000, len(users))
    order = np.argsort(start, kind="stable")
    return users[order], start[order]


def search_rows(
    world: World, req: Requests, imp: Impressions, ids: IdCounter, day: int
) -> tuple[pa.Table, pa.Table]:
    """Flatten a batch of requests and cascade rows into search_log and truth tables."""
    n, k = imp.video.shape
    request_id = ids.request + np.arange(n, dtype=np.int64)
    session_id = ids.session + req.session.astype(np.int64)
    prev_id = np.where(req.prev >= 0, ids.request + req.prev, -1)
    valid = imp.video >= 0
    r = np.repeat(np.arange(n), k).reshape(n, k)[valid]
    vid = imp.video[valid]
    forms = pa.array(world.forms.text, pa.string())
    search = pa.table(
        {
            "user_id": pa.array(req.user[r] + 1, pa.int64()),
            "session_id": pa.array(session_id[r], pa.int64()),
            "request_id": pa.array(request_id[r], pa.int64()),
            "ts": pa.array(req.ts_ms[r], pa.int64()).cast(TS),
            "query": pc.take(forms, pa.array(req.form[r])),
            "video_id": pa.array(world.videos.video_id[vid], pa.int64()),
            "stage": pc.take(pa.array(STAGES), pa.array(imp.stage[valid])),
            "position": pa.array(imp.position[valid], pa.int32()),
            "clicked": pa.array(imp.clicked[valid]),
            "watch_ms": pa.array(imp.watch_ms[valid], pa.int64()),
            "duration_ms": pa.array(world.videos.duration_ms[vid], pa.int64()),
        },
        schema=SEARCH_LOG,
    )
    truth = pa.table(
        {
            "request_id": request_id,
            "session_id": session_id,
            "user_id": req.user + 1,
            "day": np.full(n, day, dtype=np.int32),
            "ts": pa.array(req.ts_ms, pa.int64()).cast(TS),
            "intent_id": req.intent,
            "form_id": req.form,
            "query": pc.take(forms, pa.array(req.form)),
            "relation": pc.take(pa.array(RELATIONS), pa.array(req.relation)),
            "prev_request_id": prev_id,
        }
    )
    ids.request += n
    return search, truth


def feed_rows(world: World, logs) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(logs.user + 1, pa.int64()),
            "ts": pa.array(logs.ts_ms, pa.int64()).cast(TS),
            "video_id": pa.array(world.videos.video_id[logs.video], pa.int64()),
            "watch_ms": pa.array(logs.watch_ms, pa.int64()),
            "duration_ms": pa.array(world.videos.duration_ms[logs.video], pa.int64()),
        },
        schema=REC_LOG,
    )


def simulate_day(
    world: World,
    day: int,
    rate: float,
    ids: IdCounter,
    progress: Progress | None = None,
    *,
    with_feed: bool = True,
) -> DayLogs:
    """Search sessions through the production cascade, and the feed around them."""
    cfg = world.cfg
    rng = np.random.default_rng([cfg.seed, 2, day])
    users, start = session_starts(world, day, rate, rng)
    searches, truths = [], []
    first_intent = np.empty(len(users), dtype=np.int64)
    first_ts = np.empty(len(users), dtype=np.int64)
    for lo in range(0, len(users), cfg.chunk):
        hi = min(lo + cfg.chunk, len(users))
        crng = np.random.default_rng([cfg.seed, 3, day, lo])
        req, imp = world.platform.run_sessions(users[lo:hi], start[lo:hi], crng)
        first = req.prev < 0
        first_intent[lo + req.session[first]] = req.intent[first]
        first_ts[lo + req.session[first]] = req.ts_ms[first]
        s, t = search_rows(world, req, imp, ids, day)
        ids.session += hi - lo
        searches.append(s)
        truths.append(t)
        if progress:
            progress(f"day {day}", hi, len(users))
    if not searches:  # nobody searched that day: empty tables with the right schemas
        s, t = search_rows(world, *_no_requests(cfg.retrieve_k), ids, day)
        searches, truths = [s], [t]
    search = sorted_by(pa.concat_tables(searches), ["ts", "request_id", "position"])
    requests = pa.concat_tables(truths)
    rec = pa.table({f.name: pa.array([], f.type) for f in REC_LOG}, schema=REC_LOG)
    if with_feed:
        frng = np.random.default_rng([cfg.seed, 4, day])
        n_bg = frng.poisson(cfg.feed_sessions_per_user_day * world.users.activity)
        bg_users = np.repeat(np.arange(len(world.users)), n_bg)
        bg_start = EPOCH_MS + day * DAY_MS + frng.integers(0, DAY_MS - 3_600_000, len(bg_users))
        bg = world.feed.serve(bg_users, bg_start, cfg.feed_session_len, frng)
        coupled = frng.random(len(users)) < cfg.feed_search_coupling
        offset = frng.integers(-cfg.feed_window_s, cfg.feed_window_s, coupled.sum()) * 1000
        near = world.feed.serve(
            users[coupled],
            first_ts[coupled] + offset,
            cfg.feed_session_len,
            frng,
            focus_intent=first_intent[coupled],
        )
        rec = pa.concat_tables([feed_rows(world, bg), feed_rows(world, near)])
        rec = sorted_by(rec, ["ts", "user_id"])
    return DayLogs(search, requests, rec)


def _no_requests(k: int) -> tuple[Requests, Impressions]:
    none = np.zeros(0, dtype=np.int64)
    grid = np.zeros((0, k), dtype=np.int64)
    return (
        Requests(none, none, none, none, none, none.astype(np.int8), none),
        Impressions(grid, grid, grid, grid.astype(bool), grid),
    )


def sorted_by(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.take(pc.sort_indices(table, [(k, "ascending") for k in keys]))


# --------------------------------------------------------------------------- test sets


def test_sets(world: World, day: int, ids: IdCounter, progress: Progress | None) -> dict:
    """CT, QR and graded test sets from a later day than the logs (TREC qrels, queries)."""
    cfg = world.cfg
    logs = simulate_day(world, day, cfg.test_searches_per_user, ids, progress, with_feed=False)
    s, t = logs.search, logs.requests
    qid = {i: f"q{i}" for i in range(len(world.forms))}
    form_of_request = dict(zip(t["request_id"].to_pylist(), t["form_id"].to_pylist(), strict=True))

    shown = s.filter(pc.equal(s["clicked"], True))
    ct: set[tuple[str, int]] = {
        (qid[form_of_request[r]], v)
        for r, v in zip(shown["request_id"].to_pylist(), shown["video_id"].to_pylist(), strict=True)
    }
    lp = long_play_np(
        shown["watch_ms"].to_numpy(), shown["duration_ms"].to_numpy(), cfg.long_play_ms
    )
    consumed: dict[int, list[int]] = {}
    for r, v in zip(
        np.asarray(shown["request_id"])[lp], np.asarray(shown["video_id"])[lp], strict=True
    ):
        consumed.setdefault(int(r), []).append(int(v))
    rel = t["relation"].to_pylist()
    prev = t["prev_request_id"].to_pylist()
    ts = {
        r: x
        for r, x in zip(
            t["request_id"].to_pylist(), t["ts"].cast(pa.int64()).to_pylist(), strict=True
        )
    }
    window = cfg.reformulation_window_s * 1000
    parent = {
        r: p
        for r, p, kind in zip(t["request_id"].to_pylist(), prev, rel, strict=True)
        if kind == RELATIONS[REL_REFORMULATION] and p >= 0 and ts[r] - ts[p] <= window
    }
    qr: set[tuple[str, int]] = set()
    for r, videos in consumed.items():
        p = parent.get(r)
        while p is not None:  # chains A -> B -> C give C's videos to A and B
            if form_of_request[p] != form_of_request[r]:
                qr.update((qid[form_of_request[p]], v) for v in videos)
            p = parent.get(p)

    grng = np.random.default_rng([cfg.seed, 5])
    candidates = np.flatnonzero(world.forms.intent >= 0)
    chosen = np.sort(
        grng.choice(candidates, size=min(cfg.graded_queries, len(candidates)), replace=False)
    )
    graded: list[tuple[str, int, int]] = []
    all_rows = np.arange(len(world.videos))
    for f in chosen:
        g = world.query_grades(world.forms.text[f], world.videos.video_id)
        for row in all_rows[g >= 1]:
            graded.append((qid[int(f)], int(world.videos.video_id[row]), int(g[row])))
    return {
        "ct": sorted(ct),
        "qr": sorted(qr),
        "graded": graded,
        "qid": qid,
        "requests": t,
        "search_log": s,
    }


def write_test_sets(out: Path, sets: dict, world: World) -> dict[str, int]:
    tests = out / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    counts = {}
    for name in ("ct", "qr", "graded"):
        rows = sets[name]
        with open(tests / f"{name}.qrels", "w") as fh:
            for row in rows:
                q, v = row[0], row[1]
                grade = row[2] if len(row) > 2 else 1
                fh.write(f"{q} 0 {v} {grade}\n")
                used.add(q)
        counts[f"{name}_queries"] = len({r[0] for r in rows})
        counts[f"{name}_qrels"] = len(rows)
    text = {q: world.forms.text[int(q[1:])] for q in used}
    with open(tests / "queries.tsv", "w") as fh:
        for q in sorted(used, key=lambda x: int(x[1:])):
            fh.write(f"{q}\t{text[q]}\n")
    return counts


# --------------------------------------------------------------------------- the run


@contextmanager
def _writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    w = pq.ParquetWriter(path, schema, compression="zstd")
    try:
        yield w
    finally:
        w.close()


def simulate(cfg: WorldConfig, out: str | Path, progress: Progress | None = None) -> dict:
    """Simulate a world into `out`; returns the world.json content (config, counts, summary)."""
    from crops.world.summary import summarize

    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    if progress:
        progress("catalogue", 0, 1)
    world = World.build(cfg)
    if progress:
        progress("catalogue", 1, 1)
    pq.write_table(world.videos_table(), out / "videos.parquet", compression="zstd")
    for name, table in world.truth_tables().items():
        pq.write_table(table, out / "truth" / f"{name}.parquet", compression="zstd")

    ids = IdCounter()
    counts = {"videos": len(world.videos), "users": len(world.users), "search_log": 0, "rec_log": 0}
    with (
        _writer(out / "search_log.parquet", SEARCH_LOG) as sw,
        _writer(out / "rec_log.parquet", REC_LOG) as rw,
    ):
        truth_parts = []
        for day in range(cfg.days):
            logs = simulate_day(world, day, cfg.searches_per_user_day, ids, progress)
            sw.write_table(logs.search, row_group_size=1_000_000)
            rw.write_table(logs.rec, row_group_size=1_000_000)
            counts["search_log"] += logs.search.num_rows
            counts["rec_log"] += logs.rec.num_rows
            truth_parts.append(logs.requests)
    requests = pa.concat_tables(truth_parts)
    counts["requests"] = requests.num_rows
    counts["sessions"] = ids.session

    sets = test_sets(world, cfg.days, ids, progress)
    counts.update(write_test_sets(out, sets, world))
    test_req = sets["requests"].cast(requests.schema)
    pq.write_table(
        sets["search_log"], out / "truth" / "test_search_log.parquet", compression="zstd"
    )
    pq.write_table(
        pa.concat_tables(
            [
                requests.append_column(
                    "split", pa.array(["train"] * requests.num_rows, pa.string())
                ),
                test_req.append_column(
                    "split", pa.array(["test"] * test_req.num_rows, pa.string())
                ),
            ]
        ),
        out / "truth" / "requests.parquet",
        compression="zstd",
    )
    if progress:
        progress("summary", 0, 1)
    summary = summarize(out, world)
    if progress:
        progress("summary", 1, 1)
    meta = {
        "simulator": __version__,
        "fingerprint": world.fingerprint(),
        "config": cfg.model_dump(),
        "counts": counts,
        "summary": summary,
        "files": {
            "videos": "videos.parquet",
            "search_log": "search_log.parquet",
            "rec_log": "rec_log.parquet",
            "tests": [
                "tests/queries.tsv",
                "tests/ct.qrels",
                "tests/qr.qrels",
                "tests/graded.qrels",
            ],
            "truth": "truth/ (simulator ground truth, and the test day's log: not for training)",
        },
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
