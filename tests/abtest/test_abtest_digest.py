"""Day digests (`crops.abtest.digest`): a look over cached digests gives the numbers of one
read of every file; changed partitions are digested again; partitions that interact are read
as one; digests made at a later analysis time are not reused at an earlier one."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from crops.abtest.analyze import AnalyzeConfig, analyze_logs
from crops.abtest.layout import day_start
from crops.abtest.synthlogs import SynthSpec, write_logs
from crops.abtest.usersums import merge_users, user_day_sums
from crops.evaluate.sequential import CanaryPolicy

POLICY = CanaryPolicy(min_users_per_arm=50, max_p99_ms=10_000, max_p99_increase_ms=10_000)
START = date(2026, 1, 5)


def as_of(day: int):
    return day_start(START) + timedelta(days=day + 1, hours=1)


def run(logs: Path, work: Path, day: int, *, ledger: str | None = None) -> dict:
    cfg = AnalyzeConfig(
        logs=str(logs),
        out=work / f"R{day}",
        ledger=ledger or str(work / "ledger"),
        treatment_share=0.5,
        policy=POLICY,
        as_of=as_of(day),
    )
    return analyze_logs(cfg, plots=False)


def numbers(report: dict) -> dict:
    """Everything a decision rests on, without paths and timings."""
    hyg = {k: v for k, v in report["hygiene"].items() if k != "partitions"}
    return json.loads(
        json.dumps(
            {
                "history": report["history"],
                "analysis": report["analysis"],
                "hygiene": hyg,
                "decision": report["decision"],
            },
            sort_keys=True,
            default=str,
        )
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digest") / "logs"
    spec = SynthSpec(users=600, seed=11, duplicate_share=0.01, error_rate=0.01, skew_s=3.0)
    write_logs(spec, root)
    return root


def test_daily_runs_over_cached_digests_equal_one_read_of_everything(
    logs: Path, tmp_path: Path
) -> None:
    once = run(logs, tmp_path / "once", 4, ledger=str(tmp_path / "once" / "ledger"))
    assert once["looks_taken_now"] == [1, 2, 3, 4, 5]
    daily = tmp_path / "daily"
    reused = []
    for day in range(5):
        # a CronJob run at the end of each day sees only the partitions written so far
        part = daily / "logs"
        shutil.rmtree(part, ignore_errors=True)
        for table in ("search_log", "request_log"):
            for d in range(day + 1):
                name = f"day={(START + timedelta(days=d)).isoformat()}"
                shutil.copytree(logs / table / name, part / table / name)
        # the copies of earlier days keep their files: copy with the same mtimes
        report = run(part, daily, day)
        assert report["looks_taken_now"] == [day + 1]
        reused.append(report["hygiene"]["partitions"]["digests_reused"]["analysed"])
    assert reused == [0, 1, 2, 3, 4]  # each run digests only the new day
    assert report["hygiene"]["partitions"]["read_as_one"] is None
    assert numbers(report)["analysis"] == numbers(once)["analysis"]
    assert numbers(report)["history"] == numbers(once)["history"]
    assert numbers(report)["hygiene"] == numbers(once)["hygiene"]
    # and a run with no digests at all (a ledger elsewhere) agrees too
    fresh = run(logs, tmp_path / "fresh", 4)
    assert fresh["hygiene"]["partitions"]["digests_reused"] == {"validated": 0, "analysed": 0}
    assert numbers(fresh) == numbers(once)


def test_a_late_file_is_digested_again_and_counted_late(logs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    first = run(copy, tmp_path, 2)
    assert first["looks_taken_now"] == [1, 2, 3]
    # late rows for day 2 arrive in a new file of day 2's partition, with new request ids
    d2 = copy / "search_log" / f"day={(START + timedelta(days=1)).isoformat()}"
    rows = pl.read_parquet(d2 / "part-0.parquet")
    rows = rows.unique(["request_id", "video_id"], keep="first", maintain_order=True).head(40)
    rows = rows.with_columns(pl.col("request_id") + 10**12, pl.col("session_id") + 10**12)
    rows.write_parquet(d2 / "late-1.parquet")
    again = run(copy, tmp_path, 3)
    assert again["looks_taken_now"] == [4]
    parts = again["hygiene"]["partitions"]
    assert parts["read_as_one"] is None
    # validated: every day but the changed day 2; analysed: days 1 and 3 (days 4 and 5 held
    # rows after the first run's analysis time, so they were not stored)
    assert parts["digests_reused"] == {"validated": 4, "analysed": 2}
    assert again["hygiene"]["late_events"]["looks"]["4"] == 40
    # the same numbers as one read of the same files with no digests
    fresh = run(copy, tmp_path / "fresh", 3)
    assert numbers(fresh)["analysis"] == numbers(again)["analysis"]


def test_a_duplicate_delivered_in_a_later_partition_reads_all_as_one(
    logs: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    d1 = copy / "search_log" / f"day={START.isoformat()}"
    d3 = copy / "search_log" / f"day={(START + timedelta(days=2)).isoformat()}"
    pl.read_parquet(d1 / "part-0.parquet").head(8).write_parquet(d3 / "redelivered.parquet")
    report = run(copy, tmp_path, 4)
    parts = report["hygiene"]["partitions"]
    assert parts["read_as_one"] == "a search request has rows in two partitions"
    assert parts["partitions"] == 1
    quarantined = report["hygiene"]["search_log"]["quarantined"]
    assert quarantined["duplicate (request_id, video_id)"] >= 8


def test_digests_from_a_later_analysis_time_are_not_reused_earlier(
    logs: Path, tmp_path: Path
) -> None:
    late = run(logs, tmp_path / "a", 4)
    assert late["looks_run"] == 5
    # the same ledger folder's digests, a new experiment ledger, an earlier analysis time
    for p in (tmp_path / "a" / "ledger").glob("*.json"):
        p.unlink()
    early = run(logs, tmp_path / "a", 1)
    reference = run(logs, tmp_path / "b", 1)
    assert early["hygiene"]["partitions"]["digests_reused"]["analysed"] == 2  # days 1 and 2
    assert numbers(early) == numbers(reference)
    future = early["hygiene"]["search_log"]["quarantined"]
    assert any(r.startswith("event time after the analysis time") for r in future)


def test_reformulations_across_midnight_and_partitions_are_paired() -> None:
    """A user's last query before midnight and first after it: one reformulation, as in a
    single sort of all requests."""
    ts = pl.Series(
        ["2026-01-05T23:59:30", "2026-01-06T00:00:20", "2026-01-06T09:00:00"]
    ).str.to_datetime(time_unit="ms", time_zone="UTC")
    search = pl.DataFrame(
        {
            "request_id": [1, 2, 3],
            "user_id": [7, 7, 7],
            "arm": ["control"] * 3,
            "query": ["jaguar", "jaguar car", "jaguar car"],
            "ts": ts,
            "stage": ["shown"] * 3,
            "clicked": [True, False, True],
            "watch_ms": [20_000, 0, 1_000],
            "duration_ms": [30_000] * 3,
        }
    )
    requests = pl.DataFrame(
        schema={
            "request_id": pl.String,
            "user_id": pl.Int64,
            "ts": pl.Datetime("ms", "UTC"),
            "query": pl.String,
            "arm": pl.String,
        }
    )
    whole = user_day_sums(search, requests, window_s=90, long_play_ms=18_000)
    assert whole.height == 2  # two days
    end = date(2026, 1, 7)
    users, _ = merge_users(whole, window_s=90, end_day=end)
    assert users.row(0, named=True)["reformulated"] == 1
    assert users.row(0, named=True)["requests"] == 3
    # the same rows digested as two partitions (one request each way) merge to the same
    parts = pl.concat(
        [
            user_day_sums(search[i : i + 1], requests, window_s=90, long_play_ms=18_000)
            for i in range(3)
        ]
    )
    assert merge_users(parts, window_s=90, end_day=end)[0].equals(users)
    # a window that ends at midnight leaves the pair out
    first, _ = merge_users(whole, window_s=90, end_day=date(2026, 1, 6))
    assert first.row(0, named=True)["reformulated"] == 0


def test_one_users_day_split_over_partitions_that_overlap_reads_all_as_one(
    logs: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    day2, day3 = (f"day={(START + timedelta(days=d)).isoformat()}" for d in (1, 2))
    search = pl.read_parquet(copy / "search_log" / day2 / "part-0.parquet")
    per_user = search.group_by("user_id").agg(pl.col("request_id").unique(maintain_order=True))
    user, ids = per_user.filter(pl.col("request_id").list.len() >= 3).row(0)
    moved = ids[1]  # the middle request of the user's day goes to the next day's partition
    keep, move = (
        search.filter(pl.col("request_id") != moved),
        search.filter(pl.col("request_id") == moved),
    )
    keep.write_parquet(copy / "search_log" / day2 / "part-0.parquet")
    move.with_columns(pl.col("session_id") + 10**12).write_parquet(
        copy / "search_log" / day3 / "moved.parquet"
    )
    req_file = copy / "request_log" / day2 / "requests-0.parquet"
    requests = pl.read_parquet(req_file)
    is_moved = pl.col("request_id") == str(moved)
    requests.filter(~is_moved).write_parquet(req_file)
    requests.filter(is_moved).write_parquet(copy / "request_log" / day3 / "moved.parquet")
    report = run(copy, tmp_path, 4)
    assert report["hygiene"]["partitions"]["read_as_one"] == (
        "a user's requests of one day in two partitions overlap in time"
    )
    assert report["looks_run"] == 5


def test_a_session_that_goes_back_in_time_across_partitions_reads_all_as_one(
    logs: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    day1, day3 = (f"day={(START + timedelta(days=d)).isoformat()}" for d in (0, 2))
    rows = pl.read_parquet(copy / "search_log" / day1 / "part-0.parquet")
    session = rows["session_id"][0]
    late = rows.filter(pl.col("session_id") == session).with_columns(
        pl.col("request_id") + 10**12, pl.col("ts") - timedelta(minutes=30)
    )
    late.write_parquet(copy / "search_log" / day3 / "late-session.parquet")
    report = run(copy, tmp_path, 4)
    assert report["hygiene"]["partitions"]["read_as_one"] == (
        "a session's rows go back in time across partitions"
    )
    quarantined = report["hygiene"]["search_log"]["quarantined"]
    assert quarantined["ts earlier than a previous row of its session"] >= 1


def test_a_new_candidate_replaces_the_old_experiments_digests(tmp_path: Path) -> None:
    """Digests are kept for one experiment per partition: the folder does not grow with every
    candidate."""
    logs = tmp_path / "logs"
    old = ("sha256:" + "c" * 64, "sha256:" + "1" * 64)
    new = ("sha256:" + "c" * 64, "sha256:" + "2" * 64)
    write_logs(SynthSpec(users=300, seed=5, hashes=old), logs)
    first = run(logs, tmp_path, 4)
    assert first["experiment"]["candidate_hash"] == old[1]
    shutil.rmtree(logs)
    write_logs(SynthSpec(users=300, seed=5, hashes=new), logs)
    second = run(logs, tmp_path, 4)
    assert second["experiment"]["candidate_hash"] == new[1]
    units = [d for d in (tmp_path / "ledger" / ".digests").glob("*/*") if d.is_dir()]
    assert units and all(len(list(u.glob("analysed-*"))) == 1 for u in units)
