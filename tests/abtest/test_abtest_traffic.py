"""The simulated A/B run as a log source: arms, assignment, one day of traffic per arm through
real HTTP endpoints, and the logs it writes in the layout of `crops.abtest.layout`."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fakes.fake_kserve import FakeKServeEndpoint

from crops.abtest.arms import AbTestError, Arm, resolve_arms
from crops.abtest.layout import ARMS, SEARCH_WITH_ARM, list_logs
from crops.abtest.traffic import (
    NO_ANSWER_STATUS,
    TIMEOUT_STATUS,
    DayTraffic,
    assign,
    assignment_hash,
    log_day,
    serve_day,
    write_day,
)
from crops.schema import REQUEST_LOG
from crops.world.online import run_online
from crops.world.world import World

SALT = "crops-abtest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(world: World, arm: str, url: str, rows: np.ndarray, base: tuple[int, int], **kw):
    values = dict(seed=0, searches_per_user=1.0, model_name="crops", timeout_s=10.0)
    values |= dict(concurrency=8) | kw
    return serve_day(
        world,
        arm,
        url,
        rows,
        world.cfg.days + 1,
        request_id_base=base[0],
        session_id_base=base[1],
        **values,
    )


def _in_process(fake: FakeKServeEndpoint):
    """The fake's answers called in-process: the same simulation as over HTTP."""

    def retrieve(queries, k):
        return [fake.answer(q, k)[1]["predictions"][0]["video_ids"] for q in queries]

    return retrieve


# --------------------------------------------------------------------------- assignment


def test_assignment_is_the_salted_sha256_split() -> None:
    ids = np.array([1, 2, 3, 42, 299, 300, 10_000])
    expected = [
        int(hashlib.sha256(f"{SALT}:{u}".encode()).hexdigest()[:16], 16) / 2**64 < 0.5 for u in ids
    ]
    assert assign(ids, 0.5, SALT).tolist() == expected
    assert (
        assignment_hash(42, SALT)
        == int(hashlib.sha256(b"crops-abtest:42").hexdigest()[:16], 16) / 2**64
    )
    many = np.arange(1, 20_001)
    assert abs(assign(many, 0.1, "s1").mean() - 0.1) < 0.01


# --------------------------------------------------------------------------- two arms, a day


@pytest.fixture(scope="module")
def two_arms(
    tiny_dir: Path, tiny_index, tmp_path_factory
) -> Iterator[tuple[Arm, Arm, FakeKServeEndpoint, Path]]:
    """Control: the tiny model folder served by `crops serve` (sends x-model-hash), started by
    `resolve_arms`; treatment: the lexical fake endpoint by URL (sends no model hash)."""
    model_dir, index_dir = tiny_index
    out = tmp_path_factory.mktemp("arms")
    world = World.load(tiny_dir)
    with FakeKServeEndpoint(world) as fake, ExitStack() as stack:
        control, treatment = resolve_arms(
            {"control": (str(model_dir), index_dir), "treatment": (fake.url, None)},
            world=tiny_dir,
            out=out,
            model_name="crops",
            timeout_s=5.0,
            server_start_s=120.0,
            stack=stack,
        )
        yield control, treatment, fake, out


@pytest.fixture(scope="module")
def day_logs(tiny_world: World, two_arms, tmp_path_factory):
    """One simulated day of both arms (shared id base), written under a log prefix."""
    control, treatment, _, _ = two_arms
    rows = np.arange(len(tiny_world.users))
    treated = assign(rows + 1, 0.5, SALT)
    arm_rows = {"control": rows[~treated], "treatment": rows[treated]}
    logs = tmp_path_factory.mktemp("ab") / "logs"
    day = log_day(tiny_world.cfg.days + 1)
    traffic: dict[str, DayTraffic] = {}
    base = (0, 0)
    for arm in (control, treatment):
        t = _serve(tiny_world, arm.name, arm.url, arm_rows[arm.name], base)
        base = (t.next_request_id, t.next_session_id)
        traffic[arm.name] = t
        write_day(logs, day, arm.name, t)
    return logs, day, traffic, arm_rows


def test_arms_are_resolved_and_the_server_logs_outside_the_log_prefix(two_arms) -> None:
    control, treatment, fake, out = two_arms
    assert [control.name, treatment.name] == list(ARMS)
    assert control.source == "model" and control.url.startswith("http://127.0.0.1:")
    assert treatment.describe() == {"source": "url", "url": fake.url}
    assert "serving crops at" in (out / "servers" / "control.log").read_text()
    assert not (out / "logs").exists()


def test_bad_arms_are_refused_before_any_server(tiny_dir: Path, two_arms, tmp_path) -> None:
    _, treatment, _, _ = two_arms
    kw = dict(world=tiny_dir, out=tmp_path, model_name="crops", timeout_s=1.0, server_start_s=5)
    with ExitStack() as stack:
        with pytest.raises(AbTestError, match="neither an http"):
            specs = {"control": (str(tmp_path / "nope"), None), "treatment": (treatment.url, None)}
            resolve_arms(specs, stack=stack, **kw)
        with pytest.raises(AbTestError, match="goes with a model folder"):
            specs = {"control": (treatment.url, tmp_path), "treatment": (treatment.url, None)}
            resolve_arms(specs, stack=stack, **kw)
        dead = f"http://127.0.0.1:{_free_port()}"
        with pytest.raises(AbTestError, match="not reachable"):
            resolve_arms({"control": (dead, None), "treatment": (dead, None)}, stack=stack, **kw)
    assert not (tmp_path / "servers").exists()


def test_a_day_is_written_in_the_layout_and_the_contracts(tiny_world: World, day_logs) -> None:
    logs, day, traffic, _ = day_logs
    assert day == date(2026, 1, 5) + timedelta(days=tiny_world.cfg.days + 1)
    prefix = list_logs(logs)
    assert [f.path for f in prefix.files["search_log"]] == [
        f"search_log/day={day}/part-{arm}.parquet" for arm in ARMS
    ]
    assert [f.path for f in prefix.files["request_log"]] == [
        f"request_log/day={day}/requests-{arm}.parquet" for arm in ARMS
    ]
    assert not list(logs.rglob("*.tmp"))
    for arm in ARMS:
        search_path = logs / f"search_log/day={day}/part-{arm}.parquet"
        requests_path = logs / f"request_log/day={day}/requests-{arm}.parquet"
        assert pq.read_schema(search_path).equals(SEARCH_WITH_ARM)
        assert pq.read_schema(requests_path).equals(REQUEST_LOG)
        search = pq.read_table(search_path)
        assert search.num_rows > 0 and set(search["arm"].to_pylist()) == {arm}
        assert pq.read_table(search_path).equals(traffic[arm].search)
        assert pq.read_table(requests_path).equals(traffic[arm].requests)


def test_request_ids_link_the_two_logs_across_arms(day_logs) -> None:
    logs, day, traffic, arm_rows = day_logs
    ids: list[str] = []
    for arm in ARMS:
        search = pq.read_table(logs / f"search_log/day={day}/part-{arm}.parquet").to_pylist()
        requests = pq.read_table(logs / f"request_log/day={day}/requests-{arm}.parquet")
        ids += requests["request_id"].to_pylist()
        by_id = {r["request_id"]: r for r in requests.to_pylist()}
        for row in search:  # every search_log request is in the request log, same time
            logged = by_id[str(row["request_id"])]
            assert logged["ts"] == row["ts"]
            assert logged["user_id"] == row["user_id"] and logged["query"] == row["query"]
        users = set(requests["user_id"].to_pylist())
        assert users <= set((arm_rows[arm] + 1).tolist())
        assert set(pc.unique(requests["instance"]).to_pylist()) == {0}
        assert set(requests["protocol"].to_pylist()) == {"v1"}
        assert set(requests["status"].to_pylist()) == {200}
        assert requests["error"].null_count == requests.num_rows
        assert requests["video_ids"].null_count == 0
    assert len(ids) == len(set(ids))  # unique across both arms
    numbers = sorted(int(i) for i in ids)
    assert numbers == list(range(len(numbers)))  # one running base: no gaps, no overlap
    assert traffic["treatment"].next_request_id == len(numbers)
    c, t = traffic["control"], traffic["treatment"]
    c_sessions = set(
        pq.read_table(logs / f"search_log/day={day}/part-control.parquet")["session_id"].to_pylist()
    )
    t_sessions = set(
        pq.read_table(logs / f"search_log/day={day}/part-treatment.parquet")[
            "session_id"
        ].to_pylist()
    )
    assert not c_sessions & t_sessions
    assert max(c_sessions) < c.next_session_id <= min(t_sessions) <= max(t_sessions)
    assert max(t_sessions) < t.next_session_id


def test_model_hash_is_the_header_the_endpoint_sends(day_logs, two_arms) -> None:
    control, treatment, fake, _ = two_arms
    logs, day, traffic, _ = day_logs
    c = traffic["control"].requests["model_hash"].to_pylist()
    assert set(c) == {control.model_hash}  # `crops serve` sends x-model-hash
    t = traffic["treatment"].requests["model_hash"].to_pylist()
    assert set(t) == {f"url:{fake.url}"}  # the fake sends none: the endpoint stands for it
    assert set(traffic["control"].requests["top_k"].to_pylist()) == {60}


def test_every_simulated_request_is_logged(tiny_world: World, day_logs, two_arms) -> None:
    """The treatment's day over HTTP is the same simulation as the fake called in-process: as
    many request_log rows as simulated requests, the same search_log but for ids and arm."""
    _, _, fake, _ = two_arms
    _, _, traffic, arm_rows = day_logs
    t = traffic["treatment"]
    direct = run_online(
        tiny_world, _in_process(fake), users=arm_rows["treatment"], day=tiny_world.cfg.days + 1
    )
    assert t.requests.num_rows == direct.requests.num_rows
    base = traffic["control"].next_request_id
    assert sorted(int(i) for i in t.requests["request_id"].to_pylist()) == [
        base + i for i in direct.requests["request_id"].to_pylist()
    ]
    shifted = pc.subtract(t.search["request_id"], base).to_pylist()
    assert shifted == direct.search_log["request_id"].to_pylist()
    assert t.search.drop_columns(["request_id", "session_id", "arm"]).equals(
        direct.search_log.drop_columns(["request_id", "session_id"])
    )
    # the endpoint was called once per distinct query of a round, not once per request
    assert 0 < t.stats.requests <= t.requests.num_rows and t.stats.errors == 0


# --------------------------------------------------------------------------- faults


def test_a_dead_endpoint_logs_every_request_and_no_search_rows(
    tiny_world: World, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    rows = np.arange(0, 60)
    t = _serve(tiny_world, "treatment", dead, rows, (1000, 50), timeout_s=1.0)
    direct = run_online(
        tiny_world, lambda qs, k: [[] for _ in qs], users=rows, day=tiny_world.cfg.days + 1
    )
    assert t.requests.num_rows == direct.requests.num_rows > 0
    assert t.search.num_rows == 0
    assert set(t.requests["status"].to_pylist()) == {NO_ANSWER_STATUS}
    assert all("URLError" in e for e in t.requests["error"].to_pylist())
    assert t.requests["video_ids"].null_count == t.requests.num_rows
    assert set(t.requests["model_hash"].to_pylist()) == {f"url:{dead}"}
    assert t.next_request_id == 1000 + t.requests.num_rows
    assert t.stats.errors == t.stats.requests > 0
    written = write_day(tmp_path, log_day(tiny_world.cfg.days + 1), "treatment", t)
    assert pq.read_table(written[0]).num_rows == 0
    assert pq.read_table(written[1]).equals(t.requests)


def test_failures_and_timeouts_are_logged_with_their_status(tiny_world: World) -> None:
    rows = np.arange(0, 80)
    flaky = FakeKServeEndpoint(tiny_world, fail_share=0.3, slow_share=0.2, slow_s=1.0)
    with flaky:
        t = _serve(tiny_world, "control", flaky.url, rows, (0, 0), timeout_s=0.3)
    log = t.requests.to_pylist()
    statuses = {r["status"] for r in log}
    assert statuses == {200, 500, TIMEOUT_STATUS}
    for r in log:
        assert (r["status"] == 200) == (r["error"] is None) == (r["video_ids"] is not None)
    answered = {int(r["request_id"]) for r in log if r["status"] == 200}
    assert set(t.search["request_id"].to_pylist()) <= answered
    assert t.stats.errors > 0


def test_no_users_is_an_empty_day_and_bad_arm_names_are_refused(tiny_world: World) -> None:
    t = _serve(tiny_world, "control", "http://127.0.0.1:1", np.array([], dtype=int), (7, 3))
    assert (t.next_request_id, t.next_session_id) == (7, 3)
    assert t.search.schema.equals(SEARCH_WITH_ARM) and t.search.num_rows == 0
    assert t.requests.schema.equals(REQUEST_LOG) and t.requests.num_rows == 0
    with pytest.raises(ValueError, match="arm must be one of"):
        _serve(tiny_world, "canary", "http://127.0.0.1:1", np.arange(3), (0, 0))
    with pytest.raises(ValueError, match="arm must be one of"):
        write_day(Path("/nonexistent"), date(2026, 1, 1), "../x", t)
