"""Day digests: what each day partition of the logs contributes to a look, cached between runs.

A daily CronJob takes one look over all the days so far; re-reading and re-validating every
day's rows each run would make its cost grow with the experiment. The logs are partitioned by
day (`crops.abtest.layout`), so each partition (``search_log/day=D`` with ``request_log/day=D``)
is digested once into two layers, each stored beside the ledger and reused while the
partition's files (path, size, modification time) are unchanged:

- `Validated` (no experiment needed): rows read, the contracts' quarantine, the requests the
  two logs share (for the model hashes and the clock skew) and the keys that tell whether two
  partitions interact;
- `Analysed` (per experiment): the experiment's quarantine, per (user, day) sums
  (`crops.abtest.usersums`), the request log's guardrail rows, rows per day (for late rows).

A look then adds the digests of its days up. The result is the one a single read of every
file gives, because the rules that span rows are checked across partitions first: a request or
request-log key in two partitions (a duplicate delivered later), a request served in one
partition and searched in another, a session whose rows go back in time across partitions, or a
user's requests of one day in two partitions that overlap in time. Any of these makes the run
read all partitions as one (and the report says why), as does a file outside ``day=``
folders. A partition whose rows reach past the analysis time is digested but not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from crops import __version__
from crops.abtest.layout import ARM, ASSIGNMENT, REQUESTS, SEARCH, LogFile, LogPrefix
from crops.abtest.logs import (
    Logs,
    Quarantine,
    arm_in_search_log,
    read_assignment,
    read_tables,
    served_requests,
)
from crops.abtest.usersums import user_day_sums
from crops.rowcheck import run_starts

DIGEST_VERSION = 1
TABLES = (SEARCH, REQUESTS)
KEY_SEED = 20260105


@dataclass(frozen=True)
class Unit:
    """The files read together: one day partition of both logs, or every file."""

    name: str  # "2026-01-05", or "all"
    files: dict[str, list[LogFile]]

    def manifest(self) -> list[list[Any]]:
        return [[f.path, f.size, f.mtime_ns] for k in TABLES for f in self.files[k]]


def units_of(prefix: LogPrefix) -> tuple[list[Unit], str | None]:
    """The day partitions of `prefix` in order, or one unit of every file and why."""
    whole = [Unit("all", {k: list(prefix.files[k]) for k in TABLES})]
    days: dict[str, dict[str, list[LogFile]]] = {}
    for kind in TABLES:
        for f in prefix.files[kind]:
            parts = f.path.split("/")
            if len(parts) != 3 or not parts[1].startswith("day="):
                return whole, f"{f.path} is not in a day=YYYY-MM-DD folder"
            days.setdefault(parts[1][4:], {k: [] for k in TABLES})[kind].append(f)
    if not days:
        return whole, None
    return [Unit(d, days[d]) for d in sorted(days)], None


def _frame_fields(obj: Any) -> dict[str, pl.DataFrame]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name.endswith("_df")}


@dataclass
class Validated:
    """A unit's rows read, the contracts' quarantine, shared requests and cross-unit keys."""

    rows_read: dict[str, int]
    files: dict[str, int]
    #: per table, the quarantined rows (`Quarantine.table`)
    quarantine: dict[str, pl.DataFrame]
    #: the search requests the request log has, per arm and model hash: n, and the latest
    #: one's request_ts and request_id (`crops.abtest.analyze.infer_hashes`)
    hashes_df: pl.DataFrame
    #: per shared request, search time minus request time in ms (`analyze.clock_skew`)
    skew_df: pl.DataFrame
    #: every search row's request_id, once (valid rows or not)
    search_ids_df: pl.DataFrame
    #: every request-log row's (request_id, instance), once, as a 64-bit hash (a collision
    #: only makes the run read the partitions as one)
    request_keys_df: pl.DataFrame
    #: the request log's answered ids (instance 0) that no search row of this unit has
    unlinked_df: pl.DataFrame
    #: per session: earliest and latest ts
    sessions_df: pl.DataFrame


@dataclass
class Analysed:
    """A unit's part of every look of one experiment."""

    quarantine: dict[str, pl.DataFrame]
    treatment_first: datetime | None
    max_ts: datetime | None
    future_rows: int
    #: `crops.abtest.usersums.user_day_sums`
    groups_df: pl.DataFrame
    #: request-log rows: day, arm, status, latency_ms (`crops.abtest.analyze.guardrails`)
    guard_df: pl.DataFrame
    #: valid rows per table and event day: table, day, rows
    counts_df: pl.DataFrame


def _session_runs(search: pl.DataFrame) -> pl.DataFrame:
    """(session_id, ts) reduced to each run of a session's consecutive rows: its earliest and
    latest ts as two rows (logs keep a session's rows together: a few runs per session)."""
    if search.height == 0 or search["ts"].null_count() or search["session_id"].null_count():
        return search.select("session_id", "ts")
    starts = run_starts(search, ["session_id"])
    ts = search["ts"].to_physical().to_numpy()
    ids = search["session_id"].gather(starts)
    lo = pl.Series("ts", np.minimum.reduceat(ts, starts)).cast(search["ts"].dtype)
    hi = pl.Series("ts", np.maximum.reduceat(ts, starts)).cast(search["ts"].dtype)
    return pl.concat([pl.DataFrame([ids, lo]), pl.DataFrame([ids, hi])])


def validated(logs: Logs, linked: pl.DataFrame, files: dict[str, int]) -> Validated:
    """Layer one of a unit from its logs (`linked` is `crops.abtest.analyze.linked_requests`:
    request_id, arm, search_ts, model_hash, request_ts)."""
    q = logs.quarantine
    qs, qr = q.table(SEARCH), q.table(REQUESTS)
    ids = [logs.search.select("request_id")]
    if "request_id" in qs.columns:
        ids.append(qs.select(pl.col("request_id").cast(pl.Int64)))
    keys = [logs.requests.select("request_id", "instance")]
    if {"request_id", "instance"} <= set(qr.columns):
        keys.append(qr.select(pl.col("request_id").cast(pl.String), pl.col("instance")))
    keys_df = pl.concat(keys, how="vertical_relaxed").select(
        pl.struct("request_id", "instance").hash(KEY_SEED).alias("key")
    )
    sess = [_session_runs(logs.search)]
    if {"session_id", "ts"} <= set(qs.columns):
        sess.append(qs.select(pl.col("session_id").cast(pl.Int64), pl.col("ts")))
    answered = served_requests(logs.requests).select("request_id")
    return Validated(
        rows_read=dict(logs.rows_read),
        files=files,
        quarantine={k: q.table(k) for k in q.parts},
        hashes_df=linked.group_by(ARM, "model_hash").agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("request_ts").max().alias("last_ts"),
            pl.col("request_id").sort_by("request_ts", "request_id").last().alias("last_id"),
        ),
        skew_df=linked.select(
            (pl.col("search_ts") - pl.col("request_ts")).dt.total_milliseconds().alias("skew_ms")
        ),
        search_ids_df=pl.concat(ids, how="vertical_relaxed").unique().drop_nulls(),
        request_keys_df=keys_df.unique(),
        unlinked_df=answered.join(linked.select("request_id"), on="request_id", how="anti"),
        sessions_df=pl.concat(sess, how="vertical_relaxed")
        .drop_nulls("session_id")
        .group_by("session_id")
        .agg(pl.col("ts").min().alias("min_ts"), pl.col("ts").max().alias("max_ts")),
    )


def _repeats(values: pl.Series) -> bool:
    """Whether a value occurs twice (each unit's values are distinct: a sort, not a hash set)."""
    a = np.sort(values.drop_nulls().to_numpy())
    return bool((a[1:] == a[:-1]).any())


def interaction(units: list[Validated]) -> str | None:
    """Why the units cannot be digested apart (a rule spans two of them), or None."""
    if len(units) <= 1:
        return None
    ids = pl.concat([u.search_ids_df for u in units])
    if _repeats(ids["request_id"]):
        return "a search request has rows in two partitions"
    if _repeats(pl.concat([u.request_keys_df for u in units])["key"]):
        return "a request-log (request_id, instance) is in two partitions"
    unlinked = pl.concat([u.unlinked_df for u in units])
    if unlinked["request_id"].is_in(ids["request_id"].implode()).any():
        return "a request is in one partition's request log and another's search log"
    sessions = pl.concat(
        [u.sessions_df.with_columns(pl.lit(i).alias("_unit")) for i, u in enumerate(units)]
    )
    if not _repeats(sessions["session_id"]):  # no session in two partitions (the usual case)
        return None
    dup = sessions.filter(pl.col("session_id").is_duplicated()).sort("session_id", "_unit")
    if dup.height:
        before = pl.col("max_ts").cum_max().shift(1).over("session_id")
        if dup.select((pl.col("min_ts") < before).any()).item():
            return "a session's rows go back in time across partitions"
    return None


def interleaved(units: list[Analysed]) -> str | None:
    """Why the units' (user, day) groups cannot be merged exactly, or None."""
    if len(units) <= 1:
        return None
    cols = ["user_id", "day", "rq_first_ts", "rq_last_ts"]
    g = pl.concat([u.groups_df.filter(pl.col("requests") > 0).select(cols) for u in units])
    g = g.filter(pl.struct("user_id", "day").is_duplicated()).sort(cols)
    if g.height == 0:
        return None
    same = (pl.col("user_id").shift(-1) == pl.col("user_id")) & (
        pl.col("day").shift(-1) == pl.col("day")
    )
    if g.select((same & (pl.col("rq_first_ts").shift(-1) < pl.col("rq_last_ts"))).any()).item():
        return "a user's requests of one day in two partitions overlap in time"
    return None


_PER_DAY = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def day_counts(ts: pl.Series) -> pl.DataFrame:
    """Rows per UTC day of `ts` (day, rows): a bincount of days since the epoch, where it can."""
    dtype = ts.dtype
    if (
        len(ts)
        and isinstance(dtype, pl.Datetime)
        and dtype.time_zone in (None, "UTC")
        and not ts.null_count()
    ):
        days = ts.to_physical().to_numpy() // _PER_DAY[dtype.time_unit]
        lo = int(days.min())
        if int(days.max()) - lo < 100_000:
            counts = np.bincount(days - lo)
            at = np.flatnonzero(counts)
            return pl.DataFrame(
                {"day": (at + lo).astype("datetime64[D]"), "rows": counts[at].astype(np.int64)}
            ).with_columns(pl.col("day").cast(pl.Date))
    return (
        ts.to_frame("ts")
        .group_by(pl.col("ts").dt.date().alias("day"))
        .len("rows")
        .select("day", pl.col("rows").cast(pl.Int64))
        .sort("day")
    )


def analysed(
    logs: Logs,
    hygiene: Callable[[Logs, Quarantine], tuple[pl.DataFrame, pl.DataFrame, int]],
    *,
    window_s: int,
    long_play_ms: int,
) -> Analysed:
    """Layer two of a unit: `hygiene` (the experiment's rules) then the per-day sums."""
    q = Quarantine()
    search, requests, future = hygiene(logs, q)
    day = pl.col("ts").dt.date().alias("day")
    counts = pl.concat(
        [
            day_counts(t["ts"]).select(pl.lit(kind).alias("table"), "day", "rows")
            for kind, t in ((SEARCH, search), (REQUESTS, requests))
        ]
    )
    treated = requests.filter(pl.col(ARM) == "treatment")["ts"].min()
    latest = [x for x in (search["ts"].max(), requests["ts"].max()) if x is not None]
    return Analysed(
        quarantine={k: q.table(k) for k in q.parts},
        treatment_first=treated,  # type: ignore[arg-type]
        max_ts=max(latest) if latest else None,  # type: ignore[type-var]
        future_rows=future,
        groups_df=user_day_sums(
            search, requests, window_s=window_s, long_play_ms=long_play_ms, memo=logs.memo
        ),
        guard_df=requests.select(day, ARM, "status", "latency_ms"),
        counts_df=counts,
    )


# --------------------------------------------------------------------------- the cache


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def _save(path: Path, obj: Any, key: str) -> None:
    """Store `obj` (a Validated or Analysed) under `path`: frames as parquet, the rest JSON."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        meta: dict[str, Any] = {"key": key}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if f.name.endswith("_df"):
                v.write_parquet(tmp / f"{f.name}.parquet", compression="lz4", statistics=False)
            elif f.name == "quarantine":
                for kind, t in v.items():
                    t.write_parquet(tmp / f"quarantine_{kind}.parquet", compression="lz4")
                meta["quarantine"] = sorted(v)
            elif isinstance(v, datetime):
                meta[f.name] = {"datetime": v.isoformat()}
            else:
                meta[f.name] = v
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: another run stored the same, or the volume is full; read it next time
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_others(unit_dir: Path, keep: str) -> None:
    """Remove a partition's digests for other experiments or settings: one set per partition,
    so the folder does not grow with every candidate (two experiments analysed in turn just
    digest again)."""
    for old in unit_dir.glob("analysed-*"):
        if old.name != keep and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def _load(path: Path, cls: type, key: str) -> Any | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.endswith("_df"):
                kw[f.name] = pl.read_parquet(path / f"{f.name}.parquet")
            elif f.name == "quarantine":
                kw[f.name] = {
                    k: pl.read_parquet(path / f"quarantine_{k}.parquet") for k in meta[f.name]
                }
            else:
                v = meta[f.name]
                if isinstance(v, dict) and set(v) == {"datetime"}:
                    v = datetime.fromisoformat(v["datetime"])
                kw[f.name] = v
        return cls(**kw)
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None  # missing, partial or from another version: digest again


@dataclass
class Digests:
    """The digests of one log prefix for one run: read, cached, or re-read as one unit."""

    prefix: LogPrefix
    cache: Path | None  # None: nothing stored (a remote ledger, or tests)
    progress: Callable[[str, int, int], None] | None = None
    assignment_q: Quarantine = field(default_factory=Quarantine)
    units: list[Unit] = field(default_factory=list)
    merged_why: str | None = None
    validated: list[Validated] = field(default_factory=list)
    cached: dict[str, int] = field(default_factory=lambda: {"validated": 0, "analysed": 0})
    _logs: dict[str, Logs] = field(default_factory=dict)
    _base: str = ""

    def __post_init__(self) -> None:
        seen: dict[str, pa.Schema] = {}
        self.assignment = read_assignment(self.prefix, self.assignment_q)
        self.has_arm = arm_in_search_log(self.prefix, self.assignment, seen)
        self._seen = seen
        assign = [[f.path, f.size, f.mtime_ns] for f in self.prefix.files[ASSIGNMENT]]
        self._base = _key(
            DIGEST_VERSION, __version__, pl.__version__, self.prefix.uri, assign, self.has_arm
        )
        self.units, self.merged_why = units_of(self.prefix)

    @property
    def arm_source(self) -> str:
        return "column" if self.has_arm else "assignment"

    def _dir(self, unit: Unit) -> Path | None:
        if self.cache is None or unit.name == "all":
            return None
        return self.cache / self._base[:16] / unit.name

    def logs(self, unit: Unit) -> Logs:
        if unit.name not in self._logs:
            sub = LogPrefix(
                self.prefix.uri,
                self.prefix.fs,
                self.prefix.root,
                {SEARCH: unit.files[SEARCH], REQUESTS: unit.files[REQUESTS], ASSIGNMENT: []},
            )
            self._logs[unit.name] = read_tables(
                sub, Quarantine(), self.assignment, has_arm=self.has_arm, seen=self._seen
            )
        return self._logs[unit.name]

    def validate(self, linked: Callable[[Logs], pl.DataFrame]) -> list[Validated]:
        """Layer one of every unit; all files as one unit if two partitions interact."""
        out = []
        for i, unit in enumerate(self.units):
            if self.progress:
                self.progress("read logs", i, len(self.units))
            key = _key(self._base, unit.manifest())
            where = self._dir(unit)
            got = _load(where / "validated", Validated, key) if where else None
            if got is None:
                logs = self.logs(unit)
                files = {k: len(unit.files[k]) for k in TABLES}
                got = validated(logs, linked(logs), files)
                if where:
                    _save(where / "validated", got, key)
            else:
                self.cached["validated"] += 1
            out.append(got)
        if self.progress:
            self.progress("read logs", len(self.units), len(self.units))
        why = interaction(out)
        if why is not None:
            self._as_one(why)
            return self.validate(linked)
        self.validated = out
        return out

    def _as_one(self, why: str) -> None:
        self.merged_why = why
        self.units = [Unit("all", {k: list(self.prefix.files[k]) for k in TABLES})]
        self._logs.clear()
        self.cached = {"validated": 0, "analysed": 0}

    def analyse(
        self,
        experiment: list[Any],
        latest_ok: datetime,
        hygiene: Callable[[Logs, Quarantine], tuple[pl.DataFrame, pl.DataFrame, int]],
        linked: Callable[[Logs], pl.DataFrame],
        *,
        window_s: int,
        long_play_ms: int,
    ) -> list[Analysed]:
        """Layer two of every unit for one experiment (its hashes, the analysis time)."""
        out = []
        for unit in self.units:
            key = _key(self._base, unit.manifest(), experiment, window_s, long_play_ms)
            where = self._dir(unit)
            got = _load(where / f"analysed-{key[:16]}", Analysed, key) if where else None
            if got is not None and got.max_ts is not None and got.max_ts > latest_ok:
                got = None  # digested at a later analysis time: rows would be in the future
            if got is None:
                got = analysed(
                    self.logs(unit), hygiene, window_s=window_s, long_play_ms=long_play_ms
                )
                if where and got.future_rows == 0:
                    _save(where / f"analysed-{key[:16]}", got, key)
                    _drop_others(where, f"analysed-{key[:16]}")
            else:
                self.cached["analysed"] += 1
            out.append(got)
        why = interleaved(out)
        if why is not None:
            self._as_one(why)
            self.validate(linked)
            return self.analyse(
                experiment,
                latest_ok,
                hygiene,
                linked,
                window_s=window_s,
                long_play_ms=long_play_ms,
            )
        return out

    def quarantine(self, analysed: list[Analysed]) -> Quarantine:
        """Every quarantined row of this run: the assignment table's and each unit's."""
        q = Quarantine({k: list(v) for k, v in self.assignment_q.parts.items()})
        for layer in (*self.validated, *analysed):
            for kind, t in layer.quarantine.items():
                if t.height:
                    q.parts.setdefault(kind, []).append(t)
        return q

    def summary(self) -> dict[str, Any]:
        return {
            "partitions": len(self.units),
            "digests_reused": dict(self.cached),
            "read_as_one": self.merged_why,
        }


def cache_dir(ledger_root: str) -> Path | None:
    """Where a local ledger keeps its digests (``LEDGER/.digests``); None for a remote one."""
    if "://" in ledger_root:
        fs, path = pafs.FileSystem.from_uri(ledger_root)
        if not isinstance(fs, pafs.LocalFileSystem):
            return None
        ledger_root = path
    return Path(ledger_root).absolute() / ".digests"


__all__ = [
    "DIGEST_VERSION",
    "Analysed",
    "Digests",
    "Unit",
    "Validated",
    "analysed",
    "cache_dir",
    "interaction",
    "interleaved",
    "units_of",
    "validated",
]
