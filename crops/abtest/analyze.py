"""`crops abtest analyze`: the canary decision from the platform's logs, one look per day.

An experiment is (control model hash, candidate model hash, start, policy); its looks live in
the ledger (`crops.abtest.ledger`). An invocation reads the logs (`crops.abtest.logs`), finds
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
and p99 latency); the decision (`crops.evaluate.canary.decide`). Data hygiene that needs the
experiment happens here: rows served by a model hash outside the experiment, search rows whose
serving model belongs to the other arm, event times after the analysis time (clock skew) are
quarantined with their reason; rows before the experiment started are counted, not analysed;
late rows (event time in an analysed look's window, but not there when it was analysed) are
counted in the next look and reported; the skew between the two logs' clocks is measured on
the requests they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crops.abtest.layout import ARM, ARMS, DAY, REQUESTS, SEARCH, LogsError, day_start, utc_day
from crops.abtest.ledger import Ledger, LedgerError, Look, break_lock, status
from crops.abtest.logs import (
    Logs,
    Quarantine,
    chunk_lengths,
    like_chunks,
    read_logs,
    run_starts,
)
from crops.abtest.report import REPORT_VERSION, write_report
from crops.evaluate.abstats import COUNTS, METRICS, analyze
from crops.evaluate.canary import CanaryPolicy, decide
from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S, long_play

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


def _linked(logs: Logs) -> pl.DataFrame:
    """Search requests joined to the request log by id: request_id, arm, model_hash, ts pair."""
    memo = logs.memo.get("linked")
    if memo is not None and memo[0] is logs.search and memo[1] is logs.requests:
        return memo[2]
    agg = (pl.col(ARM).first(), pl.col("ts").min().alias("search_ts"))
    blocks = _blocks(logs.search, ["request_id"], first=["request_id", ARM], least=["ts"])
    search = (blocks[0] if blocks is not None else logs.search).group_by("request_id").agg(*agg)
    req = (
        logs.requests.filter(pl.col("instance") == 0)
        .with_columns(pl.col("request_id").cast(pl.Int64, strict=False).alias("_rid"))
        .filter(pl.col("_rid").is_not_null())
        .select("_rid", "model_hash", pl.col("ts").alias("request_ts"))
    )
    linked = search.join(req, left_on="request_id", right_on="_rid", how="inner")
    logs.memo["linked"] = (logs.search, logs.requests, linked)
    return linked


def _blocks(
    df: pl.DataFrame,
    by: list[str],
    *,
    first: Sequence[str] = (),
    least: Sequence[str] = (),
    count: dict[str, pl.Expr] | None = None,
) -> tuple[pl.DataFrame, np.ndarray] | None:
    """One row per run of consecutive rows equal in `by`: `first` columns' first values,
    `least` columns' minima, `count` booleans' sums, and the runs' first rows; None when a
    `least` column has nulls.

    Logs keep a request's rows together, so a group-by over requests or users can run over
    these runs (a few per request) instead of every row, with the same result: the first of
    the first run is the first row, the minimum of the minima the minimum, sums add up.
    """
    if df.height == 0 or any(df[c].null_count() for c in least):
        return None
    starts = run_starts(df, by)
    cols: dict[str, Any] = {c: df[c].gather(starts) for c in first}
    for c in least:
        values = df[c].to_physical().to_numpy()
        cols[c] = pl.Series(c, np.minimum.reduceat(values, starts)).cast(df[c].dtype)
    if count:
        flags = df.select(**{n: e.fill_null(False) for n, e in count.items()})
        for n in count:
            cols[n] = np.add.reduceat(flags[n].to_numpy(), starts, dtype=np.int64)
    return pl.DataFrame(cols), starts


def infer_hashes(logs: Logs) -> tuple[str, str]:
    """(control, candidate) model hashes from the requests both logs share.

    The candidate is the hash that served the latest treatment request (a new candidate starts
    a new experiment); the control the hash that served most control requests.
    """
    linked = _linked(logs)
    ctl = linked.filter(pl.col(ARM) == "control")
    trt = linked.filter(pl.col(ARM) == "treatment")
    if ctl.height == 0 or trt.height == 0:
        raise AnalyzeError(
            f"cannot tell the arms' model hashes from {logs.prefix.uri}: no "
            f"{'control' if ctl.height == 0 else 'treatment'} request of the search log is in "
            "the request log (the app sends its search_log request id as x-request-id); pass "
            "--control-hash and --candidate-hash"
        )
    candidate = trt.sort(["request_ts", "request_id"])["model_hash"][-1]
    counts = ctl.group_by("model_hash").len().sort(["len", "model_hash"], descending=[True, False])
    control = counts["model_hash"][0]
    if control == candidate:
        raise AnalyzeError(
            f"both arms were served by model {control}: nothing to compare (is the canary "
            "deployed, and does the app route users to it?)"
        )
    return str(control), str(candidate)


def _experiment_hashes(cfg: AnalyzeConfig, logs: Logs) -> tuple[str, str]:
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
    return infer_hashes(logs)


# --------------------------------------------------------------------------- hygiene


def _arm_of_hash(control: str, candidate: str) -> pl.Expr:
    return (
        pl.when(pl.col("model_hash") == control)
        .then(pl.lit("control"))
        .when(pl.col("model_hash") == candidate)
        .then(pl.lit("treatment"))
        .otherwise(None)
    )


def _experiment_hygiene(
    logs: Logs, control: str, candidate: str, latest_ok: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Quarantine rows outside the experiment or from the future; (search, requests) left."""
    q = logs.quarantine
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
        logs.requests.filter(pl.col("instance") == 0)
        .with_columns(pl.col("request_id").cast(pl.Int64, strict=False).alias("_rid"))
        .filter(pl.col("_rid").is_not_null())
        .select(pl.col("_rid").alias("request_id"), pl.col("model_hash").alias("_served_by"))
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
    blocks = _blocks(search, ["request_id", ARM], first=["request_id", ARM])
    if blocks is not None:
        lengths = np.diff(np.append(blocks[1], search.height))
        verdicts = (
            blocks[0]
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
    q.add(SEARCH, search.filter(future), why)
    q.add(REQUESTS, req.filter(future), why)
    return search.filter(~future), req.filter(~future)


def clock_skew(logs: Logs, threshold_s: float) -> dict[str, Any]:
    """Search log time minus request log time on the requests both logs hold."""
    linked = _linked(logs)
    out: dict[str, Any] = {
        "pairs": linked.height,
        "median_s": None,
        "max_abs_s": None,
        "threshold_s": threshold_s,
        "flagged": False,
    }
    if linked.height == 0:
        return out
    d = (pl.col("search_ts") - pl.col("request_ts")).dt.total_milliseconds() / 1000.0
    s = linked.select(d.median().alias("m"), d.abs().max().alias("x")).row(0)
    out.update(median_s=round(float(s[0]), 3), max_abs_s=round(float(s[1]), 3))
    out["flagged"] = bool(abs(s[0]) > threshold_s)
    return out


# --------------------------------------------------------------------------- one look


_PER_DAY = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _day_counts(df: pl.DataFrame) -> dict[str, int]:
    if df.height == 0:
        return {}
    ts = df["ts"]
    dtype = ts.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone in (None, "UTC") and not ts.null_count():
        # UTC days since the epoch: a bincount, not a group-by over every row
        days = ts.to_physical().to_numpy() // _PER_DAY[dtype.time_unit]
        lo = int(days.min())
        if int(days.max()) - lo < 1_000_000:
            counts = np.bincount(days - lo)
            epoch = date(1970, 1, 1)
            return {
                (epoch + timedelta(days=lo + int(i))).isoformat(): int(counts[i])
                for i in np.flatnonzero(counts)
            }
    g = df.group_by(pl.col("ts").dt.date().alias("d")).len().sort("d")
    return {d.isoformat(): int(n) for d, n in g.iter_rows()}


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


def user_sums(
    search: pl.DataFrame, requests: pl.DataFrame, *, window_s: int, long_play_ms: int
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Per user: first arm and COUNTS over both arms; and the contamination figures."""
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    is_shown = pl.col("stage") == "shown"
    # per run of rows of one request, user and arm (logs keep a request's rows together):
    # the first user, arm and query, the earliest ts, the shown rows' counts
    blocks = _blocks(
        search,
        ["request_id", "user_id", ARM],
        first=["request_id", "user_id", ARM, "query"],
        least=["ts"],
        count={
            "impressions": is_shown,
            "clicks": is_shown & pl.col("clicked"),
            "long_plays": is_shown & pl.col("clicked") & lp,
        },
    )
    rows = blocks[0] if blocks is not None else search
    events = pl.concat(
        [
            rows.select("user_id", "ts", ARM),
            requests.filter(pl.col("user_id").is_not_null()).select("user_id", "ts", ARM),
        ]
    )
    assigned = events.group_by("user_id").agg(
        pl.col(ARM).sort_by("ts").first(), (pl.col(ARM).n_unique() > 1).alias("_both")
    )
    if blocks is not None:
        shown = rows.group_by("user_id").agg(
            pl.col(c).sum().cast(pl.Int64) for c in ("impressions", "clicks", "long_plays")
        )
    else:
        shown = (
            search.filter(is_shown)
            .group_by("user_id")
            .agg(
                pl.len().cast(pl.Int64).alias("impressions"),
                pl.col("clicked").sum().cast(pl.Int64).alias("clicks"),
                (pl.col("clicked") & lp).sum().cast(pl.Int64).alias("long_plays"),
            )
        )
    from_search = rows.group_by("request_id").agg(
        pl.col("user_id").first(), pl.col("ts").min(), pl.col("query").first()
    )
    only_logged = (
        requests.filter(pl.col("user_id").is_not_null())
        .with_columns(pl.col("request_id").cast(pl.Int64, strict=False).alias("_rid"))
        .join(from_search.select(pl.col("request_id").alias("_rid")), on="_rid", how="anti")
        .select("user_id", "ts", "query")
    )
    reqs = pl.concat([from_search.select("user_id", "ts", "query"), only_logged]).sort(
        ["user_id", "ts"]
    )
    nxt_user, nxt_q, nxt_ts = (pl.col(c).shift(-1) for c in ("user_id", "query", "ts"))
    reform = (
        (nxt_user == pl.col("user_id"))
        & (nxt_q != pl.col("query"))
        & ((nxt_ts - pl.col("ts")).dt.total_milliseconds() <= window_s * 1000)
    ).fill_null(False)
    per_req = (
        reqs.with_columns(reform.alias("reformulated"))
        .group_by("user_id")
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            pl.col("reformulated").sum().cast(pl.Int64).alias("reformulated"),
        )
    )
    users = (
        assigned.join(shown, on="user_id", how="left")
        .join(per_req, on="user_id", how="left")
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in COUNTS)
        .sort("user_id")
    )
    both = int(users["_both"].sum()) if users.height else 0
    contamination = {
        "users_both_arms": both,
        "users": users.height,
        "share": round(both / users.height, 6) if users.height else None,
        "rule": "first assignment",
    }
    return users.drop("_both"), contamination


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
    search: pl.DataFrame,
    requests: pl.DataFrame,
    cfg: AnalyzeConfig,
    start: datetime,
    written_at: datetime,
) -> Look:
    """Analyse look k (events from `start` to the end of the experiment's k-th day), decide."""
    policy = ledger.policy
    end = start + k * DAY
    # the columns the look reads; a window that holds every row is no copy
    used = ["request_id", "user_id", "ts", "query", "stage", "clicked", "watch_ms", "duration_ms"]
    s = search.select(*used, ARM).filter(pl.col("ts") < end)
    r = requests.filter(pl.col("ts") < end)
    counts = {SEARCH: _day_counts(s), REQUESTS: _day_counts(r)}
    prev = ledger.looks[-1] if ledger.looks else None
    late = late_rows(prev, counts)
    users, contamination = user_sums(
        s, r, window_s=cfg.reformulation_window_s, long_play_ms=cfg.long_play_ms
    )
    analysis = analyze(
        users,
        alpha=policy.alpha,
        expected_treatment_share=cfg.treatment_share,
        srm_threshold=policy.srm_p,
    )
    guards = guardrails(r)
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


def _hygiene(logs: Logs, q: Quarantine, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in (SEARCH, REQUESTS):
        n = logs.rows_read[kind]
        out[kind] = {
            "files": len(logs.files(kind)),
            "rows": n,
            "valid": n - q.count(kind),
            "quarantined": q.reasons(kind),
        }
    out["arm_source"] = logs.arm_source
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
    if progress:
        progress("read logs", 0, 1)
    logs = read_logs(cfg.logs)
    if progress:
        progress("read logs", 1, 1)
    control, candidate = _experiment_hashes(cfg, logs)
    read_s = time.perf_counter() - started
    skew = clock_skew(logs, cfg.max_skew_s)
    latest_ok = as_of + timedelta(seconds=cfg.max_skew_s)
    search, requests = _experiment_hygiene(logs, control, candidate, latest_ok)
    existing = Ledger.load(cfg.ledger_root, control, candidate)
    if existing is not None:
        started_at = existing.experiment.started_at
    else:
        first = requests.filter(pl.col(ARM) == "treatment")["ts"].min()
        if first is None:
            raise AnalyzeError(
                f"no request in {cfg.logs} was served by the candidate {candidate}: the "
                "experiment has not started (is the canary receiving traffic?)"
            )
        started_at = first  # type: ignore[assignment]
    start = day_start(utc_day(started_at))
    before = pl.col("ts") < start
    before_start = {
        SEARCH: int(search.select(before.sum()).item()),
        REQUESTS: int(requests.select(before.sum()).item()),
    }
    search, requests = search.filter(~before), requests.filter(~before)
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
            ledger.record_look(take_look(ledger, nxt.index, search, requests, cfg, start, as_of))
            taken.append(nxt.index)
            if progress:
                progress("looks", nxt.index, ledger.policy.looks)
    report = build_report(
        cfg, ledger, logs, taken, pending, skew, before_start, source=source, as_of=as_of
    )
    if broken is not None:
        report["broke_stale_lock"] = broken.model_dump(mode="json")
    report["timings"] = {
        "read_s": round(read_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report["outputs"]["quarantine"] = logs.quarantine.write(out)
    write_report(report, out, plots=plots)
    return report


def build_report(
    cfg: AnalyzeConfig,
    ledger: Ledger,
    logs: Logs,
    taken: list[int],
    pending: str | None,
    skew: dict[str, Any],
    before_start: dict[str, int],
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
    hygiene = _hygiene(
        logs,
        logs.quarantine,
        {
            "late_events": {"rows": sum(late_by_look.values()), "looks": late_by_look},
            "contamination": (last or {}).get("contamination")
            or {"users_both_arms": 0, "users": 0, "share": None, "rule": "first assignment"},
            "clock_skew": skew,
            "before_start": before_start,
        },
    )
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
    "infer_hashes",
    "late_rows",
    "take_look",
    "user_sums",
]
