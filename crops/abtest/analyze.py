"""`crops abtest analyze`: the canary decision from the platform's logs, one look per day.

An experiment is (control model hash, candidate model hash, start, policy); its looks live in
the ledger (`crops.abtest.ledger`). An invocation reads the logs (`crops.abtest.logs`) one day
partition at a time, each digested once and reused by later runs (`crops.abtest.digest`), finds
the experiment, and takes every look whose day is complete (its window ended `settle_s` before
the analysis time) and not yet in the ledger, one per day in order, stopping at a promote or
rollback; a daily CronJob therefore takes one look per run, and a run that was missed is caught
up. Look k analyses all events from the start of the experiment's first day to the end of its
k-th day, cumulatively, at information fraction k / looks, so the boundaries the ledger spends
alpha on are the ones the policy planned.

Per look: users by their first assignment (a user served by both arms counts once, in the arm
that served them first, and the contaminated share is reported); per user sums of impressions,
clicks and long plays (search log, shown rows) and requests and reformulations (a user's next
query within the window, and different; requests are the search log's plus the request log's
that never reached it, such as failed ones); the user-clustered statistics and SRM
(`crops.evaluate.abstats`); guardrails per arm from the request logs (errors are HTTP 5xx, p50
and p99 latency); the decision (`crops.evaluate.sequential.decide`). Data hygiene that needs the
experiment happens here: rows served by a model hash outside the experiment, search rows whose
serving model belongs to the other arm, event times after the analysis time (clock skew) are
quarantined with their reason; rows before the experiment started are counted, not analysed;
late rows (event time in an analysed look's window, but not there when it was analysed) are
counted in the next look and reported; the skew between the two logs' clocks is measured on
the requests they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crops.abtest.digest import Analysed, Digests, cache_dir
from crops.abtest.layout import (
    ARM,
    ARMS,
    DAY,
    REQUESTS,
    SEARCH,
    LogsError,
    day_start,
    list_logs,
    utc_day,
)
from crops.abtest.ledger import Ledger, LedgerError, Look, break_lock, status
from crops.abtest.logs import Logs, Quarantine, served_requests
from crops.abtest.report import REPORT_VERSION, write_report
from crops.abtest.usersums import merge_users, request_blocks
from crops.evaluate.abstats import COUNTS, METRICS, analyze
from crops.evaluate.sequential import CanaryPolicy, decide
from crops.rowcheck import chunk_lengths, like_chunks
from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S

Progress = Callable[[str, int, int], None]


class AnalyzeConfig(BaseModel):
    """One invocation: where the logs and the ledger are, which experiment, the policy."""

    model_config = ConfigDict(extra="forbid")

    logs: str = Field(description="folder or pyarrow URI (s3://...) of the logs")
    out: Path = Field(description="report folder")
    ledger: str | None = Field(None, description="ledger folder (default: OUT/ledger)")
    experiment: str | None = Field(None, description="an experiment id from the ledger")
    control_hash: str | None = None
    candidate_hash: str | None = None
    treatment_share: float = Field(0.1, gt=0.0, lt=1.0, description="planned, for SRM")
    policy: CanaryPolicy = Field(default_factory=CanaryPolicy)
    reformulation_window_s: int = Field(REFORMULATION_WINDOW_S, gt=0)
    long_play_ms: int = Field(LONG_PLAY_MS, gt=0)
    as_of: datetime | None = Field(None, description="analysis time (default: now)")
    settle_s: float = Field(3600.0, ge=0, description="a day is complete this long after it ends")
    max_skew_s: float = Field(300.0, gt=0, description="clock skew beyond this is flagged")
    break_stale_lock: bool = Field(
        False, description="break a lock older than 6 h or left by a dead process of this host"
    )

    @field_validator("as_of")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("as_of needs a time zone (e.g. 2026-01-10T06:00:00Z)")
        return v

    @model_validator(mode="after")
    def _one_way_to_name_the_experiment(self) -> AnalyzeConfig:
        if (self.control_hash is None) != (self.candidate_hash is None):
            raise ValueError("give both control_hash and candidate_hash, or neither")
        if self.control_hash is not None and self.control_hash == self.candidate_hash:
            raise ValueError("control_hash and candidate_hash are the same model")
        if self.experiment is not None and self.control_hash is not None:
            raise ValueError("give an experiment id or the two hashes, not both")
        return self

    @property
    def ledger_root(self) -> str:
        return self.ledger or str(Path(self.out) / "ledger")


class AnalyzeError(ValueError):
    """The logs or the ledger do not allow a decision; nothing was written to the ledger."""


# --------------------------------------------------------------------------- the experiment


def linked_requests(logs: Logs, long_play_ms: int = LONG_PLAY_MS) -> pl.DataFrame:
    """Search requests joined to the request log by id: request_id, arm, model_hash, ts pair."""
    agg = (pl.col(ARM).first(), pl.col("ts").min().alias("search_ts"))
    blocks = request_blocks(logs.search, long_play_ms, logs.memo)[0]
    search = blocks.group_by("request_id").agg(*agg)
    req = served_requests(logs.requests).select(
        "request_id", "model_hash", pl.col("ts").alias("request_ts")
    )
    return search.join(req, on="request_id", how="inner")


def infer_hashes(hashes: pl.DataFrame, uri: str) -> tuple[str, str]:
    """(control, candidate) model hashes from the requests both logs share.

    `hashes` counts them per arm and model hash, with each one's latest (last_ts, last_id)
    (`crops.abtest.digest.Validated.hashes_df`, any number of rows per pair). The candidate is
    the hash that served the latest treatment request (a new candidate starts a new
    experiment); the control the hash that served most control requests.
    """
    ctl = hashes.filter(pl.col(ARM) == "control")
    trt = hashes.filter(pl.col(ARM) == "treatment")
    if ctl.height == 0 or trt.height == 0:
        raise AnalyzeError(
            f"cannot tell the arms' model hashes from {uri}: no "
            f"{'control' if ctl.height == 0 else 'treatment'} request of the search log is in "
            "the request log (the app sends its search_log request id as x-request-id); pass "
            "--control-hash and --candidate-hash"
        )
    candidate = trt.sort(["last_ts", "last_id"])["model_hash"][-1]
    counts = (
        ctl.group_by("model_hash")
        .agg(pl.col("n").sum())
        .sort(["n", "model_hash"], descending=[True, False])
    )
    control = counts["model_hash"][0]
    if control == candidate:
        raise AnalyzeError(
            f"both arms were served by model {control}: nothing to compare (is the canary "
            "deployed, and does the app route users to it?)"
        )
    return str(control), str(candidate)


def _experiment_hashes(cfg: AnalyzeConfig, hashes: pl.DataFrame) -> tuple[str, str]:
    if cfg.control_hash is not None and cfg.candidate_hash is not None:
        return cfg.control_hash, cfg.candidate_hash
    if cfg.experiment is not None:
        rows = status(cfg.ledger_root)
        match = [r for r in rows if r["experiment"] == cfg.experiment]
        if not match:
            known = ", ".join(r["experiment"] for r in rows) or "none"
            raise AnalyzeError(
                f"experiment {cfg.experiment} is not in the ledger {cfg.ledger_root} "
                f"(experiments there: {known})"
            )
        return match[0]["control"], match[0]["candidate"]
    return infer_hashes(hashes, str(cfg.logs))


# --------------------------------------------------------------------------- hygiene


def _arm_of_hash(control: str, candidate: str) -> pl.Expr:
    return (
        pl.when(pl.col("model_hash") == control)
        .then(pl.lit("control"))
        .when(pl.col("model_hash") == candidate)
        .then(pl.lit("treatment"))
        .otherwise(None)
    )


def experiment_hygiene(
    logs: Logs,
    q: Quarantine,
    *,
    control: str,
    candidate: str,
    latest_ok: datetime,
    long_play_ms: int = LONG_PLAY_MS,
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Quarantine (into `q`) rows outside the experiment or from the future; the search and
    request rows left (`logs.search` itself when none of its rows goes), and how many rows
    were in the future."""
    req = logs.requests.with_columns(_arm_of_hash(control, candidate).alias(ARM))
    unknown = pl.col(ARM).is_null()
    q.add(
        REQUESTS,
        req.filter(unknown),
        pl.format(
            "model hash {} is not this experiment's (control {}, candidate {})",
            pl.col("model_hash"),
            pl.lit(control[:12]),
            pl.lit(candidate[:12]),
        ),
    )
    req = req.filter(~unknown)
    served = (
        served_requests(logs.requests)
        .select("request_id", pl.col("model_hash").alias("_served_by"))
        .unique("request_id", keep="first")  # the first row of an id, as before the select
    )
    served_arm = (
        pl.when(pl.col("_served_by") == control)
        .then(pl.lit("control"))
        .when(pl.col("_served_by") == candidate)
        .then(pl.lit("treatment"))
        .otherwise(pl.lit("other"))
    )
    linked = pl.col("_served_by").is_not_null()
    outside = linked & (pl.col("_served_arm") == "other")
    mismatch = linked & ~outside & (pl.col("_served_arm") != pl.col(ARM))
    search = logs.search
    # the verdicts depend on a row's request and arm only: decided once per run of rows
    blocks, runs = request_blocks(search, long_play_ms, logs.memo)
    if runs:
        lengths = blocks["rows"].to_numpy()
        verdicts = (
            blocks.select("request_id", ARM)
            .join(served, on="request_id", how="left", maintain_order="left")
            .with_columns(served_arm.alias("_served_arm"))
            .select(
                outside.fill_null(False).alias("outside"),
                mismatch.fill_null(False).alias("mismatch"),
                (~outside & ~mismatch).fill_null(False).alias("keep"),
            )
        )
        per_row = {c: np.repeat(verdicts[c].to_numpy(), lengths) for c in verdicts.columns}
        chunks = chunk_lengths(search)

        def rows(mask: np.ndarray) -> pl.DataFrame:
            picked = search.filter(like_chunks(mask, "", chunks)) if mask.any() else search.clear()
            return picked.join(served, on="request_id", how="left", maintain_order="left")

        bad_outside, bad_mismatch = rows(per_row["outside"]), rows(per_row["mismatch"])
        bad_mismatch = bad_mismatch.with_columns(served_arm.alias("_served_arm"))
        keep = per_row["keep"]
        kept = search if keep.all() else search.filter(like_chunks(keep, "", chunks))
    else:
        joined = search.join(served, on="request_id", how="left")
        joined = joined.with_columns(served_arm.alias("_served_arm"))
        bad_outside, bad_mismatch = joined.filter(outside), joined.filter(mismatch)
        kept = joined.filter(~outside & ~mismatch).drop("_served_by", "_served_arm")
    q.add(
        SEARCH,
        bad_outside,
        pl.format("served by model hash {}, outside this experiment", pl.col("_served_by")),
    )
    q.add(
        SEARCH,
        bad_mismatch,
        pl.format("logged as {} but served by the {} model", pl.col(ARM), pl.col("_served_arm")),
    )
    search = kept
    future = pl.col("ts") > latest_ok
    why = f"event time after the analysis time plus the allowed skew ({latest_ok.isoformat()})"
    ahead = (search.filter(future), req.filter(future))
    q.add(SEARCH, ahead[0], why)
    q.add(REQUESTS, ahead[1], why)
    if ahead[0].height:
        search = search.filter(~future)
    if ahead[1].height:
        req = req.filter(~future)
    return search, req, ahead[0].height + ahead[1].height


def clock_skew(skew: pl.DataFrame, threshold_s: float) -> dict[str, Any]:
    """Search log time minus request log time on the requests both logs hold (`skew_ms`)."""
    out: dict[str, Any] = {
        "pairs": skew.height,
        "median_s": None,
        "max_abs_s": None,
        "threshold_s": threshold_s,
        "flagged": False,
    }
    if skew.height == 0:
        return out
    d = pl.col("skew_ms") / 1000.0
    s = skew.select(d.median().alias("m"), d.abs().max().alias("x")).row(0)
    out.update(median_s=round(float(s[0]), 3), max_abs_s=round(float(s[1]), 3))
    out["flagged"] = bool(abs(s[0]) > threshold_s)
    return out


# --------------------------------------------------------------------------- one look


@dataclass
class LookData:
    """Every look's inputs, summed over the partitions (`crops.abtest.digest.Analysed`)."""

    groups: pl.DataFrame  # `crops.abtest.usersums.user_day_sums`
    guard: pl.DataFrame  # day, arm, status, latency_ms
    counts: pl.DataFrame  # table, day, rows

    @classmethod
    def merge(cls, parts: list[Analysed]) -> LookData:
        counts = pl.concat([p.counts_df for p in parts])
        return cls(
            groups=pl.concat([p.groups_df for p in parts]),
            guard=pl.concat([p.guard_df for p in parts]),
            counts=counts.group_by("table", "day").agg(pl.col("rows").sum()).sort("table", "day"),
        )

    def day_counts(self, first: date, end: date) -> dict[str, dict[str, int]]:
        """Rows per table and event day in [first, end)."""
        out: dict[str, dict[str, int]] = {SEARCH: {}, REQUESTS: {}}
        window = self.counts.filter((pl.col("day") >= first) & (pl.col("day") < end))
        for table, day, n in window.iter_rows():
            out[table][day.isoformat()] = int(n)
        return out

    def before(self, first: date) -> dict[str, int]:
        """Rows per table with an event day before `first` (before the experiment started)."""
        early = self.counts.filter(pl.col("day") < first)
        out = {SEARCH: 0, REQUESTS: 0}
        for table, _, n in early.iter_rows():
            out[table] += int(n)
        return out


def late_rows(prev: Look | None, counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Rows now found in the previous look's window that it did not analyse (late arrivals)."""
    late = {SEARCH: 0, REQUESTS: 0}
    if prev is None:
        return late
    end = utc_day(prev.window_end)
    for kind in late:
        before = prev.counts.get(kind, {})
        for day, n in counts.get(kind, {}).items():
            if datetime.fromisoformat(day).date() < end:
                late[kind] += max(0, n - before.get(day, 0))
    return late


def guardrails(requests: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per arm from the request log: requests, errors (HTTP 5xx), error rate, p50, p99 (ms)."""
    out = {}
    for arm in ARMS:
        r = requests.filter(pl.col(ARM) == arm)
        n = r.height
        errors = int((r["status"] >= 500).sum()) if n else 0
        lat = r["latency_ms"].cast(pl.Float64)
        out[arm] = {
            "requests": n,
            "errors": errors,
            "error_rate": errors / n if n else 0.0,
            "p50_ms": round(float(lat.quantile(0.5, "linear")), 3) if n else None,
            "p99_ms": round(float(lat.quantile(0.99, "linear")), 3) if n else None,
        }
    return out


def _history_entry(
    k: int, window: tuple[datetime, datetime], analysis: dict, guards: dict, decision: Any
) -> dict[str, Any]:
    metrics = {}
    for m in METRICS:
        lift = analysis["metrics"][m]
        row: dict[str, Any] = {}
        for arm in ARMS:
            s = analysis["arms"][arm]["metrics"][m]
            row[arm] = {k2: s[k2] for k2 in ("value", "ci_low", "ci_high", "users", "status")}
        row["lift"] = {
            k2: lift.get(k2)
            for k2 in ("lift", "lift_ci_low", "lift_ci_high", "p_value", "status", "z", "log_se")
        }
        metrics[m] = row
    return {
        "look": k,
        "day": (window[1] - DAY).date().isoformat(),
        "window_start": window[0].isoformat(),
        "window_end": window[1].isoformat(),
        "users": {arm: analysis["arms"][arm]["users"] for arm in ARMS},
        "metrics": metrics,
        "srm": analysis["srm"],
        "guardrails": guards,
        "decision": {"action": decision.action, "reasons": list(decision.reasons)},
    }


def take_look(
    ledger: Ledger,
    k: int,
    data: LookData,
    cfg: AnalyzeConfig,
    start: datetime,
    written_at: datetime,
) -> Look:
    """Analyse look k (events from `start` to the end of the experiment's k-th day), decide."""
    policy = ledger.policy
    end = start + k * DAY
    first, last = utc_day(start), utc_day(end)
    counts = data.day_counts(first, last)
    prev = ledger.looks[-1] if ledger.looks else None
    late = late_rows(prev, counts)
    users, contamination = merge_users(
        data.groups, window_s=cfg.reformulation_window_s, first_day=first, end_day=last
    )
    analysis = analyze(
        users,
        alpha=policy.alpha,
        expected_treatment_share=cfg.treatment_share,
        srm_threshold=policy.srm_p,
    )
    guards = guardrails(data.guard.filter((pl.col("day") >= first) & (pl.col("day") < last)))
    history = [lk.information_fraction for lk in ledger.looks]
    decision = decide(
        analysis,
        guards,
        look=k,
        information_fraction=k / policy.looks,
        history=history,
        policy=policy,
    )
    entry = _history_entry(k, (start, end), analysis, guards, decision)
    entry["late_events"] = late
    entry["contamination"] = contamination
    sums = users.group_by(ARM).agg(pl.len().alias("users"), *(pl.col(c).sum() for c in COUNTS))
    inputs = {
        "window_end": end.isoformat(),
        "sums": sorted(sums.rows(named=True), key=lambda x: x[ARM]),
        "guardrails": guards,
        "settings": [cfg.treatment_share, cfg.reformulation_window_s, cfg.long_play_ms],
    }
    z = analysis["metrics"][policy.primary].get("z")
    look = Look.from_decision(
        decision,
        policy,
        window_start=start,
        window_end=end,
        users=entry["users"],
        z=z,
        inputs=inputs,
        written_at=written_at,
        counts=counts,
        record={**entry, "analysis": analysis},
    )
    entry["boundary"] = {
        "information_fraction": look.information_fraction,
        "nominal_alpha": look.nominal_alpha,
        "boundary_z": look.boundary_z,
        "alpha_spent": look.alpha_spent,
        "z": z,
    }
    return look.model_copy(update={"record": {**entry, "analysis": analysis}})


# --------------------------------------------------------------------------- the job


def _hygiene(digests: Digests, q: Quarantine, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in (SEARCH, REQUESTS):
        n = sum(v.rows_read[kind] for v in digests.validated)
        out[kind] = {
            "files": sum(v.files[kind] for v in digests.validated),
            "rows": n,
            "valid": n - q.count(kind),
            "quarantined": q.reasons(kind),
        }
    out["arm_source"] = digests.arm_source
    out["partitions"] = digests.summary()
    return {**out, **extra}


def analyze_logs(
    cfg: AnalyzeConfig,
    progress: Progress | None = None,
    *,
    source: str = "logs",
    plots: bool = True,
) -> dict[str, Any]:
    """Take the looks the logs allow, record them in the ledger, write the report; return it.

    Raises `LogsError`/`SchemaError` (bad logs), `AnalyzeError`, `LedgerError` (a policy
    mismatch, a lock held by an overlapping run): in each case no look was written.
    """
    started = time.perf_counter()
    as_of = cfg.as_of or datetime.now(UTC)
    digests = Digests(list_logs(cfg.logs), cache_dir(cfg.ledger_root), progress)

    def linked(logs: Logs) -> pl.DataFrame:
        return linked_requests(logs, cfg.long_play_ms)

    parts_a = digests.validate(linked)
    control, candidate = _experiment_hashes(cfg, pl.concat([v.hashes_df for v in parts_a]))
    read_s = time.perf_counter() - started
    skew = clock_skew(pl.concat([v.skew_df for v in parts_a]), cfg.max_skew_s)
    latest_ok = as_of + timedelta(seconds=cfg.max_skew_s)

    def hygiene(logs: Logs, q: Quarantine) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        return experiment_hygiene(
            logs,
            q,
            control=control,
            candidate=candidate,
            latest_ok=latest_ok,
            long_play_ms=cfg.long_play_ms,
        )

    parts = digests.analyse(
        [control, candidate],
        latest_ok,
        hygiene,
        linked,
        window_s=cfg.reformulation_window_s,
        long_play_ms=cfg.long_play_ms,
    )
    digest_s = time.perf_counter() - started
    data = LookData.merge(parts)
    existing = Ledger.load(cfg.ledger_root, control, candidate)
    if existing is not None:
        started_at = existing.experiment.started_at
    else:
        firsts = [p.treatment_first for p in parts if p.treatment_first is not None]
        if not firsts:
            raise AnalyzeError(
                f"no request in {cfg.logs} was served by the candidate {candidate}: the "
                "experiment has not started (is the canary receiving traffic?)"
            )
        started_at = min(firsts)
    start = day_start(utc_day(started_at))
    before_start = data.before(utc_day(started_at))
    try:
        ledger = Ledger.open_or_start(cfg.ledger_root, control, candidate, cfg.policy, started_at)
    except NotImplementedError as exc:
        raise AnalyzeError(f"--ledger {cfg.ledger_root}: {exc}") from exc
    taken: list[int] = []
    pending: str | None = None
    broken = ledger.stale_holder() if cfg.break_stale_lock else None
    if broken is not None:  # reported below, never silent
        break_lock(cfg.ledger_root, control, candidate, force=True)
    with ledger.lock():  # one writer: an overlapping run fails here, before any look
        ledger.refresh()
        while (nxt := ledger.next_look()) is not None:
            end = start + nxt.index * DAY
            ready = end + timedelta(seconds=cfg.settle_s)
            if ready > as_of:
                pending = (
                    f"look {nxt.index} covers through {(end - DAY).date().isoformat()}, complete "
                    f"at {ready.isoformat()} (analysis time {as_of.isoformat()})"
                )
                break
            ledger.record_look(take_look(ledger, nxt.index, data, cfg, start, as_of))
            taken.append(nxt.index)
            if progress:
                progress("looks", nxt.index, ledger.policy.looks)
    quarantine = digests.quarantine(parts)
    report = build_report(
        cfg,
        ledger,
        _hygiene(digests, quarantine, {"clock_skew": skew, "before_start": before_start}),
        taken,
        pending,
        source=source,
        as_of=as_of,
    )
    if broken is not None:
        report["broke_stale_lock"] = broken.model_dump(mode="json")
    analysis_s = time.perf_counter() - started
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report["outputs"]["quarantine"] = quarantine.write(out)
    report["timings"] = {
        "read_s": round(read_s, 3),
        "digest_s": round(digest_s, 3),
        "analysis_s": round(analysis_s, 3),
    }
    write_report(report, out, plots=plots)
    report["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    return report


def build_report(
    cfg: AnalyzeConfig,
    ledger: Ledger,
    hygiene: dict[str, Any],
    taken: list[int],
    pending: str | None,
    *,
    source: str,
    as_of: datetime,
) -> dict[str, Any]:
    """The report dict (`crops.abtest.report`) from the ledger's looks and this run's hygiene."""
    looks = ledger.looks
    exp = ledger.experiment
    history = [{k: v for k, v in lk.record.items() if k != "analysis"} for lk in looks]
    late_by_look = {str(h["look"]): sum(h.get("late_events", {}).values()) for h in history}
    last = looks[-1].record if looks else None
    hygiene = {
        **hygiene,
        "late_events": {"rows": sum(late_by_look.values()), "looks": late_by_look},
        "contamination": (last or {}).get("contamination")
        or {"users_both_arms": 0, "users": 0, "share": None, "rule": "first assignment"},
    }
    if last is not None:
        decision = {**last["decision"], "look": last["look"]}
    else:
        decision = {
            "action": "hold",
            "reasons": [f"no look yet: {pending or 'no complete day in the logs'}"],
            "look": 0,
        }
    return {
        "report_version": REPORT_VERSION,
        "source": source,
        "logs": str(cfg.logs),
        "as_of": as_of.isoformat(),
        "experiment": {
            "id": exp.id,
            "control_hash": exp.control_hash,
            "candidate_hash": exp.candidate_hash,
            "started_at": exp.started_at.isoformat(),
            "policy_fingerprint": exp.policy_fingerprint,
            "ledger": ledger.path,
        },
        "policy": ledger.policy.model_dump(mode="json"),
        "settings": {
            "treatment_share": cfg.treatment_share,
            "reformulation_window_s": cfg.reformulation_window_s,
            "long_play_ms": cfg.long_play_ms,
            "settle_s": cfg.settle_s,
        },
        "looks_planned": ledger.policy.looks,
        "looks_run": len(looks),
        "stopped_early": bool(looks)
        and looks[-1].action in ("promote", "rollback")
        and len(looks) < ledger.policy.looks,
        "finished": ledger.finished,
        "looks_taken_now": taken,
        "pending": None if ledger.finished else pending,
        "history": history,
        "analysis": last["analysis"] if last else {"metrics": {}},
        "guardrails": last["guardrails"] if last else {},
        "hygiene": hygiene,
        "decision": decision,
        "outputs": {
            "report_md": "report.md",
            "metrics_plot": "metrics_over_time.png",
            "lift_plot": "lift_over_time.png",
            "boundary_plot": "sequential_boundary.png",
            "ledger": ledger.path,
        },
    }


__all__ = [
    "AnalyzeConfig",
    "AnalyzeError",
    "LedgerError",
    "LogsError",
    "analyze_logs",
    "clock_skew",
    "guardrails",
    "experiment_hygiene",
    "infer_hashes",
    "late_rows",
    "linked_requests",
    "take_look",
]
