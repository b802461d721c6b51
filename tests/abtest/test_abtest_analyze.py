"""`crops abtest analyze`: decisions from logs, one look per day through the ledger, data hygiene,
bad input, and the CLI as the CronJob runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crops.abtest.analyze import AnalyzeConfig, AnalyzeError, analyze_logs
from crops.abtest.layout import LogsError, day_start
from crops.abtest.ledger import Ledger, LedgerLocked, PolicyMismatch
from crops.abtest.synthlogs import HASHES, SynthSpec, write_logs
from crops.evaluate.sequential import CanaryPolicy
from crops.schema import SchemaError

POLICY = CanaryPolicy(min_users_per_arm=50, max_p99_ms=10_000, max_p99_increase_ms=10_000)
START = date(2026, 1, 5)


def as_of(day: int) -> datetime:
    """An hour after simulated day `day` (0-based) ends: when the CronJob takes its look."""
    return day_start(START) + timedelta(days=day + 1, hours=1)


def cfg(logs: Path, out: Path, **kw) -> AnalyzeConfig:
    values = {"treatment_share": 0.5, "policy": POLICY, "ledger": str(out.parent / "ledger")}
    return AnalyzeConfig(logs=str(logs), out=out, **(values | kw))


def looks_of(report: dict) -> list[dict]:
    data = json.loads(Path(report["experiment"]["ledger"]).read_text())
    return [{k: v for k, v in lk.items() if k != "written_at"} for lk in data["looks"]]


def test_a_planted_lift_is_promoted_and_no_lift_is_not(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=3000, ctr_lift=0.4, seed=3), tmp_path / "lift")
    lift = analyze_logs(cfg(tmp_path / "lift", tmp_path / "a" / "R"), plots=False)
    assert lift["decision"]["action"] == "promote"
    assert lift["stopped_early"] == (lift["looks_run"] < 5)
    ctr = lift["analysis"]["metrics"]["ctr"]
    assert 0.25 < ctr["lift"] < 0.55 and ctr["better"]
    write_logs(SynthSpec(users=3000, seed=4), tmp_path / "aa")
    aa = analyze_logs(cfg(tmp_path / "aa", tmp_path / "b" / "R"), plots=False)
    assert aa["decision"]["action"] != "promote" and aa["looks_run"] == 5
    assert (aa["experiment"]["control_hash"], aa["experiment"]["candidate_hash"]) == (
        HASHES["control"],
        HASHES["treatment"],
    )


def test_one_invocation_a_day_gives_the_ledger_of_one_catch_up_run(tmp_path: Path) -> None:
    spec = SynthSpec(users=800, seed=5)
    daily = tmp_path / "daily"
    for d in range(5):
        write_logs(spec, daily / "logs", days=range(d, d + 1))
        rep = analyze_logs(cfg(daily / "logs", daily / f"R{d}", as_of=as_of(d)), plots=False)
        assert rep["looks_taken_now"] == [d + 1]
        if d < 4:
            assert "complete at" in rep["pending"]
    write_logs(spec, tmp_path / "all" / "logs")
    once = analyze_logs(cfg(tmp_path / "all" / "logs", tmp_path / "all" / "R"), plots=False)
    assert once["looks_taken_now"] == [1, 2, 3, 4, 5]
    assert looks_of(rep) == looks_of(once)
    # a rerun of the last look: nothing new, the ledger unchanged byte for byte
    ledger = Path(rep["experiment"]["ledger"])
    before = ledger.read_bytes()
    again = analyze_logs(cfg(daily / "logs", daily / "again", as_of=as_of(4)), plots=False)
    assert again["looks_taken_now"] == [] and ledger.read_bytes() == before
    assert again["history"] == rep["history"] and again["decision"] == rep["decision"]


def test_a_day_not_yet_complete_waits(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=400, seed=1), tmp_path / "logs", days=range(0, 1))
    early = as_of(0) - timedelta(hours=2)  # day 1 ended an hour ago: not settled
    rep = analyze_logs(cfg(tmp_path / "logs", tmp_path / "R", as_of=early), plots=False)
    assert rep["looks_run"] == 0 and rep["decision"]["action"] == "hold"
    assert "no look yet" in rep["decision"]["reasons"][0]
    assert (tmp_path / "R" / "report.md").is_file()


_KILL = """
import os, signal, sys
import crops.abtest.ledger as L
from crops.abtest.analyze import AnalyzeConfig, analyze_logs
original = L._atomic_write
def dying(path, data):
    if path.endswith(".json") and b'"index": 2' in data:
        os.kill(os.getpid(), signal.SIGKILL)  # between reading the logs and writing look 2
    return original(path, data)
L._atomic_write = dying
analyze_logs(AnalyzeConfig.model_validate_json(sys.argv[1]), plots=False)
"""


def test_a_run_killed_before_writing_its_look_reruns_to_the_same_ledger(tmp_path: Path) -> None:
    spec = SynthSpec(users=600, seed=9)
    write_logs(spec, tmp_path / "logs", days=range(0, 2))
    clean = analyze_logs(cfg(tmp_path / "logs", tmp_path / "clean" / "R", as_of=as_of(1)))
    killed = cfg(tmp_path / "logs", tmp_path / "k" / "R", as_of=as_of(1))
    proc = subprocess.run(
        [sys.executable, "-c", _KILL, killed.model_dump_json()],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == -9, proc.stderr
    ledger = Ledger.load(killed.ledger_root, HASHES["control"], HASHES["treatment"])
    assert ledger is not None and len(ledger.looks) == 1  # look 1 written, look 2 not
    dead = ledger.lock_holder()
    assert dead is not None  # the dead run's lock is still there
    with pytest.raises(LedgerLocked, match="process is gone"):
        analyze_logs(killed)
    rerun = analyze_logs(killed.model_copy(update={"break_stale_lock": True}))
    assert rerun["broke_stale_lock"]["holder"] == dead.holder
    assert rerun["looks_taken_now"] == [2]
    assert (
        Path(rerun["experiment"]["ledger"]).read_bytes()
        == Path(clean["experiment"]["ledger"]).read_bytes()
    )


def test_an_overlapping_run_cannot_write_a_look(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=400, seed=2), tmp_path / "logs", days=range(0, 1))
    c = cfg(tmp_path / "logs", tmp_path / "R", as_of=as_of(0))
    ledger = Ledger.open_or_start(
        c.ledger_root, HASHES["control"], HASHES["treatment"], POLICY, as_of(0)
    )
    with ledger.lock(), pytest.raises(LedgerLocked, match="another run is taking"):
        analyze_logs(c)
    assert Ledger.load(c.ledger_root, HASHES["control"], HASHES["treatment"]).looks == []


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_hygiene_counts_and_quarantines_every_kind_of_bad_row(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    spec = SynthSpec(users=600, seed=4, duplicate_share=0.01, error_rate=0.004)
    written = write_logs(spec, logs, days=range(0, 1))
    day1 = pl.read_parquet(logs / "search_log/day=2026-01-05/part-0.parquet")
    req1 = pl.read_parquet(logs / "request_log/day=2026-01-05/requests-0.parquet")
    odd = logs / "search_log/day=2026-01-05/odd.parquet"
    bad = pl.concat(
        [
            day1.head(3).with_columns(pl.lit("canary").alias("arm")),  # unknown arm
            day1.slice(10, 2).with_columns(pl.lit(-5, pl.Int64).alias("watch_ms")),  # malformed
        ]
    ).with_columns(pl.col("video_id") + 10**9)  # not duplicates of the real rows
    _write(bad.to_arrow().cast(pq.read_schema(odd.parent / "part-0.parquet")), odd)
    # a user seen in both arms: one more request of a control user, logged as treatment
    user = day1.filter(pl.col("arm") == "control")["user_id"][0]
    cross = (
        day1.filter(pl.col("arm") == "treatment")
        .head(8)
        .with_columns(
            pl.lit(user).alias("user_id"),
            pl.lit(999).alias("request_id"),
            pl.lit(999).alias("session_id"),
            pl.col("ts").max() + timedelta(hours=1),
        )
    )
    _write(cross.to_arrow().cast(pq.read_schema(odd)), logs / "search_log/day=2026-01-05/x.parquet")
    foreign = req1.head(4).with_columns(
        pl.lit("sha256:someone-else").alias("model_hash"),
        (pl.col("request_id") + "-f").alias("request_id"),
    )
    future = req1.head(2).with_columns(
        pl.lit(datetime(2030, 1, 1, tzinfo=UTC)).cast(pl.Datetime("ms", "UTC")).alias("ts"),
        (pl.col("request_id") + "-t").alias("request_id"),
    )
    schema = pq.read_schema(logs / "request_log/day=2026-01-05/requests-0.parquet")
    _write(
        pl.concat([foreign, future]).to_arrow().cast(schema),
        logs / "request_log/day=2026-01-05/odd.parquet",
    )
    first = analyze_logs(cfg(logs, tmp_path / "R1", as_of=as_of(0)), plots=False)
    h = first["hygiene"]
    sq, rq = h["search_log"]["quarantined"], h["request_log"]["quarantined"]
    assert sq["unknown arm 'canary'"] == 3
    assert sq["negative watch_ms"] == 2
    assert sq["duplicate (request_id, video_id)"] > 0
    assert any(r.startswith("model hash sha256:someone-else") for r in rq)
    assert sum(n for r, n in rq.items() if r.startswith("event time after")) == 2
    assert h["search_log"]["rows"] == written["search_log"] + bad.height + cross.height
    assert h["search_log"]["valid"] + sum(sq.values()) >= h["search_log"]["rows"]
    assert h["contamination"]["users_both_arms"] == 1 and h["contamination"]["share"] > 0
    q = pl.read_parquet(tmp_path / "R1" / "quarantine" / "search_log.parquet")
    canary = q.filter(pl.col("reason") == "unknown arm 'canary'")
    assert canary["file"].to_list() == ["search_log/day=2026-01-05/odd.parquet"] * 3
    assert canary["row"].to_list() == [0, 1, 2]
    # late events: day-1 rows arriving in day 2's partition after look 1 was taken
    write_logs(spec, logs, days=range(1, 2))
    late = day1.head(16).with_columns(pl.col("request_id", "session_id") + 10**12)
    _write(late.to_arrow().cast(schema_of(odd)), logs / "search_log/day=2026-01-06/late.parquet")
    second = analyze_logs(cfg(logs, tmp_path / "R2", as_of=as_of(1)), plots=False)
    assert second["history"][1]["late_events"]["search_log"] == 16
    assert second["hygiene"]["late_events"]["looks"]["2"] == 16
    md = (tmp_path / "R2" / "report.md").read_text()
    assert "late" in md.lower() and "both arms" in md


def schema_of(path: Path) -> pa.Schema:
    return pq.read_schema(path)


def test_an_assignment_table_stands_in_for_the_arm_column(tmp_path: Path) -> None:
    spec = SynthSpec(users=500, seed=8)
    write_logs(spec, tmp_path / "with")
    with_arm = analyze_logs(cfg(tmp_path / "with", tmp_path / "a" / "R"), plots=False)
    write_logs(spec, tmp_path / "table")
    arms = []
    for f in sorted((tmp_path / "table" / "search_log").rglob("*.parquet")):
        df = pl.read_parquet(f)
        arms.append(df.select("user_id", "arm").unique())
        _write(df.drop("arm").to_arrow(), f)
    assignment = pl.concat(arms).unique().sort("user_id")
    _write(assignment.to_arrow(), tmp_path / "table" / "assignment" / "a.parquet")
    via_table = analyze_logs(cfg(tmp_path / "table", tmp_path / "b" / "R"), plots=False)
    assert via_table["hygiene"]["arm_source"] == "assignment"
    assert via_table["history"] == with_arm["history"]


def test_bad_logs_are_refused_with_no_decision_written(tmp_path: Path) -> None:
    with pytest.raises(LogsError, match="no such folder"):
        analyze_logs(cfg(tmp_path / "nope", tmp_path / "R"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogsError, match="empty"):
        analyze_logs(cfg(tmp_path / "empty", tmp_path / "R"))
    write_logs(SynthSpec(users=300, seed=1), tmp_path / "logs", days=range(0, 1))
    f = tmp_path / "logs/search_log/day=2026-01-05/part-0.parquet"
    df = pl.read_parquet(f)
    broken = tmp_path / "logs/search_log/day=2026-01-05/part-1.parquet"
    _write(df.with_columns(pl.col("watch_ms").cast(pl.String)).to_arrow(), broken)
    with pytest.raises(SchemaError) as e:
        analyze_logs(cfg(tmp_path / "logs", tmp_path / "R"))
    assert "watch_ms" in str(e.value) and "part-1.parquet" in str(e.value)
    _write(df.drop("clicked").to_arrow(), broken)
    with pytest.raises(SchemaError, match="'clicked'.*missing|clicked"):
        analyze_logs(cfg(tmp_path / "logs", tmp_path / "R"))
    broken.unlink()
    _write(df.drop("arm").to_arrow(), f)
    with pytest.raises(SchemaError, match="arm"):
        analyze_logs(cfg(tmp_path / "logs", tmp_path / "R"))
    assert not (tmp_path / "ledger").exists()


def test_a_ledger_under_another_policy_is_refused(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=300, seed=1), tmp_path / "logs", days=range(0, 1))
    analyze_logs(cfg(tmp_path / "logs", tmp_path / "R", as_of=as_of(0)), plots=False)
    other = POLICY.model_copy(update={"alpha": 0.1})
    with pytest.raises(PolicyMismatch, match="alpha"):
        analyze_logs(cfg(tmp_path / "logs", tmp_path / "R2", policy=other, as_of=as_of(0)))


def test_clock_skew_between_the_logs_is_reported(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=300, seed=1, skew_s=600), tmp_path / "logs", days=range(0, 1))
    rep = analyze_logs(cfg(tmp_path / "logs", tmp_path / "R", as_of=as_of(0)), plots=False)
    skew = rep["hygiene"]["clock_skew"]
    assert skew["flagged"] and skew["median_s"] == pytest.approx(600.0)
    assert "clock skew" in (tmp_path / "R" / "report.md").read_text().lower()


def test_hashes_that_cannot_be_read_off_the_logs_are_asked_for(tmp_path: Path) -> None:
    write_logs(SynthSpec(users=300, seed=1), tmp_path / "logs", days=range(0, 1))
    for f in (tmp_path / "logs" / "request_log").rglob("*.parquet"):
        df = pl.read_parquet(f).with_columns(
            (pl.lit("x") + pl.col("request_id")).alias("request_id")
        )
        _write(df.to_arrow(), f)
    with pytest.raises(AnalyzeError, match="--control-hash and --candidate-hash"):
        analyze_logs(cfg(tmp_path / "logs", tmp_path / "R"))
    given = cfg(
        tmp_path / "logs",
        tmp_path / "R",
        control_hash=HASHES["control"],
        candidate_hash=HASHES["treatment"],
        as_of=as_of(0),
    )
    assert analyze_logs(given, plots=False)["looks_run"] == 1


def test_cli_analyze_and_status_as_the_cronjob_runs_them(run, tmp_path: Path) -> None:
    write_logs(SynthSpec(users=400, seed=6), tmp_path / "logs", days=range(0, 2))
    ledger = tmp_path / "ledger"
    base = ["abtest", "analyze", "--logs", tmp_path / "logs", "--ledger", ledger]
    policy = ["--treatment-share", "0.5", "--min-users-per-arm", "50", "--max-p99-ms", "10000"]
    code, stdout, stderr = run(
        *base, "--out", tmp_path / "R1", *policy, "--as-of", "2026-01-06T01:00:00"
    )
    assert code == 0, stderr
    assert "after look 1 of 5" in stdout and "next: look 2" in stdout
    exp = json.loads((tmp_path / "R1" / "ab_report.json").read_text())["experiment"]["id"]
    code, stdout, stderr = run(
        *base,
        "--out",
        tmp_path / "R2",
        *policy,
        "--experiment",
        exp,
        "--as-of",
        "2026-01-07T01:00:00",
    )
    assert code == 0, stderr and "after look 2 of 5" in stdout
    code, stdout, _ = run("abtest", "status", "--ledger", ledger)
    assert code == 0 and exp in stdout and "2/5" in stdout
    code, _, stderr = run(*base, "--out", tmp_path / "R3", "--alpha", "0.1", *policy)
    assert code == 2 and "policy" in stderr and "no decision written" in stderr
    code, _, stderr = run(
        "abtest", "analyze", "--logs", tmp_path / "none", "--out", tmp_path / "R4"
    )
    assert code == 2 and "no such folder" in stderr
    code, _, stderr = run(*base, "--out", tmp_path / "R5", "--experiment", "nope")
    assert code == 2 and "not in the ledger" in stderr


def test_files_that_store_the_arm_as_a_categorical_read_like_the_rest(tmp_path: Path) -> None:
    spec = SynthSpec(users=400, seed=7)
    write_logs(spec, tmp_path / "plain")
    plain = analyze_logs(cfg(tmp_path / "plain", tmp_path / "a" / "R"), plots=False)
    write_logs(spec, tmp_path / "mixed")
    f = tmp_path / "mixed/search_log/day=2026-01-06/part-0.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("arm")
    _write(t.set_column(i, "arm", t.column("arm").dictionary_encode()), f)
    mixed = analyze_logs(cfg(tmp_path / "mixed", tmp_path / "b" / "R"), plots=False)
    assert mixed["history"] == plain["history"]
