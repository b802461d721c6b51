"""Reading an A/B test's logs with data hygiene: every row kept, or quarantined with a reason.

`read_logs(uri)` lists the prefix (`crops.abtest.layout`), checks each file's columns and types
against the contracts first (a mismatch is a `SchemaError` naming the column and the file, and
nothing is decided), then reads every file and splits rows into valid ones and quarantined
ones with the contracts' row validation (`crops.schema.check_rows`: malformed values, duplicate
events, ...) plus the A/B rules that need no experiment: a search row's arm must be
``control`` or ``treatment`` (from its ``arm`` column, else from the assignment table).
Quarantined rows keep the file and row they came from. The rules that need the experiment
(model hashes, its time window, the clock) are applied by `crops.abtest.analyze`, which adds
its own reasons to the same `Quarantine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from crops.abtest.layout import (
    ARM,
    ARMS,
    ASSIGNMENT,
    ASSIGNMENT_SCHEMA,
    REQUESTS,
    SEARCH,
    LogFile,
    LogPrefix,
    list_logs,
)
from crops.schema import SCHEMAS, SchemaError, _row_reasons, check_rows, conform


@dataclass
class Quarantine:
    """Rows set aside per table: key columns, source file and row, and the reason."""

    parts: dict[str, list[pl.DataFrame]] = field(default_factory=dict)

    def add(self, kind: str, rows: pl.DataFrame, reason: str | pl.Expr) -> None:
        """Set `rows` of table `kind` aside (they carry `_file` and `_row`) with `reason`."""
        if rows.height == 0:
            return
        reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
        keep = [c for c in _KEYS[kind] if c in rows.columns]
        part = rows.select(
            pl.col("_file").alias("file"),
            pl.col("_row").alias("row"),
            *keep,
            reason_expr.cast(pl.String).alias("reason"),
        )
        self.parts.setdefault(kind, []).append(part)

    def table(self, kind: str) -> pl.DataFrame:
        parts = self.parts.get(kind, [])
        if not parts:
            return pl.DataFrame(schema={"file": pl.String, "row": pl.Int64, "reason": pl.String})
        return pl.concat(parts, how="diagonal_relaxed")

    def reasons(self, kind: str) -> dict[str, int]:
        """Quarantined rows per reason (a row with several reasons counts once, under all)."""
        t = self.table(kind)
        if t.height == 0:
            return {}
        counts = (
            t.select(pl.col("reason").str.split("; ").explode())
            .group_by("reason")
            .len()
            .sort(["len", "reason"], descending=[True, False])
        )
        return {str(r): int(n) for r, n in counts.iter_rows()}

    def count(self, kind: str) -> int:
        return sum(p.height for p in self.parts.get(kind, []))

    def write(self, out: Path) -> dict[str, str]:
        """Write each table's quarantine to ``out/quarantine/<table>.parquet``; their paths."""
        written = {}
        for kind in self.parts:
            path = out / "quarantine" / f"{kind}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.table(kind).write_parquet(path)
            written[kind] = str(path.relative_to(out))
        return written


_KEYS = {
    SEARCH: ("request_id", "user_id", "ts", "video_id", "stage", ARM),
    REQUESTS: ("request_id", "instance", "user_id", "ts", "model_hash", "status"),
    ASSIGNMENT: ("user_id", ARM),
}


@dataclass
class Logs:
    """Valid rows of each table (with `_file`, `_row`), what was quarantined, and the files."""

    prefix: LogPrefix
    search: pl.DataFrame
    requests: pl.DataFrame
    quarantine: Quarantine
    rows_read: dict[str, int]
    arm_source: str  # "column" | "assignment"
    #: results derived from `search` and `requests` that `crops.abtest.analyze` reuses
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def files(self, kind: str) -> list[LogFile]:
        return self.prefix.files[kind]


def _file_schema(prefix: LogPrefix, f: LogFile, seen: dict[str, pa.Schema] | None) -> pa.Schema:
    """The parquet schema of one file, read once per `read_logs` (`seen` keeps it)."""
    if seen is not None and f.path in seen:
        return seen[f.path]
    schema = pq.read_schema(prefix.fs.open_input_file(prefix.full(f)))
    if seen is not None:
        seen[f.path] = schema
    return schema


def _check_file_schema(
    prefix: LogPrefix,
    f: LogFile,
    contract: str,
    extra: pa.Schema,
    seen: dict[str, pa.Schema] | None = None,
) -> pa.Schema:
    """Columns and types of one file against the contract (plus `extra`), before reading rows."""
    try:
        schema = _file_schema(prefix, f, seen)
    except (OSError, pa.ArrowInvalid) as exc:
        where = f"{prefix.uri.rstrip('/')}/{f.path}"
        raise SchemaError(where, None, f"not a readable parquet file ({exc})") from exc
    shown = f"{prefix.uri.rstrip('/')}/{f.path}"
    conform(schema.empty_table(), contract, shown)  # raises SchemaError(file, column)
    for want in extra:
        if want.name in schema.names:
            got = schema.field(want.name).type
            if pa.types.is_dictionary(got):
                got = got.value_type
            if not (
                got == want.type or (pa.types.is_large_string(got) and want.type == pa.string())
            ):
                raise SchemaError(
                    shown, want.name, f"has type {got}, the A/B logs want {want.type}"
                )
    return schema


def _read(prefix: LogPrefix, files: list[LogFile], columns: list[str] | None) -> pa.Table:
    """Concatenate files (only `columns` that exist), adding `_file` and `_row` provenance."""
    tables = []
    for f in files:
        t = pq.read_table(prefix.full(f), filesystem=prefix.fs, partitioning=None)
        if columns is not None:
            t = t.select([c for c in columns if c in t.column_names])
        for i, col_field in enumerate(t.schema):  # categoricals in one file, plain text in another
            if pa.types.is_dictionary(col_field.type):
                t = t.set_column(i, col_field.name, t.column(i).cast(col_field.type.value_type))
        n = t.num_rows
        t = t.append_column(
            "_file", pa.array([f.path] * 1, pa.string()).take(np.zeros(n, np.int64))
        )
        t = t.append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="permissive")


def _validated(
    prefix: LogPrefix,
    kind: str,
    files: list[LogFile],
    extra: pa.Schema,
    quarantine: Quarantine,
    seen: dict[str, pa.Schema] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Read one table's files and split off its malformed rows; (valid rows, rows read)."""
    contract = SCHEMAS[kind]
    if not files:
        empty = pl.from_arrow(contract.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty.with_columns(
            pl.lit(None, pl.String).alias("_file"), pl.lit(None, pl.Int64).alias("_row")
        ), 0
    schemas = [_check_file_schema(prefix, f, kind, extra, seen) for f in files]
    fast = _read_exact(prefix, kind, files, schemas, extra)
    if fast is not None:
        valid, bad = _split_rows(kind, fast)
        quarantine.add(kind, bad, pl.col("reason"))
        return valid, fast.height
    wanted = [*contract.names, *extra.names]
    raw = _read(prefix, files, wanted)
    table, flags = conform(raw, kind, prefix.uri)
    for name in ("_file", "_row", *extra.names):
        if name in raw.column_names:
            table = table.append_column(name, raw.column(name))
    valid, bad, _ = check_rows(kind, table, prefix.uri, flags=flags)
    quarantine.add(kind, bad, pl.col("reason"))
    return valid, raw.num_rows


def _assignment(prefix: LogPrefix, quarantine: Quarantine) -> pl.DataFrame | None:
    """The assignment table (user_id -> arm), one arm per user; None when there is none."""
    files = prefix.files[ASSIGNMENT]
    if not files:
        return None
    for f in files:
        shown = f"{prefix.uri.rstrip('/')}/{f.path}"
        schema = pq.read_schema(prefix.fs.open_input_file(prefix.full(f)))
        for want in ASSIGNMENT_SCHEMA:
            if want.name not in schema.names:
                raise SchemaError(shown, want.name, "missing (the assignment table requires it)")
    raw = _read(prefix, files, ASSIGNMENT_SCHEMA.names)
    df = pl.from_arrow(raw)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(
        pl.col("user_id").cast(pl.Int64, strict=False), pl.col(ARM).cast(pl.String)
    )
    bad = df.filter(pl.col("user_id").is_null() | ~pl.col(ARM).is_in(ARMS))
    quarantine.add(
        ASSIGNMENT,
        bad,
        pl.when(pl.col("user_id").is_null())
        .then(pl.lit("null user_id"))
        .otherwise(pl.format("unknown arm '{}'", pl.col(ARM).fill_null("null"))),
    )
    df = df.filter(pl.col("user_id").is_not_null() & pl.col(ARM).is_in(ARMS))
    dup = ~pl.col("user_id").is_first_distinct()
    quarantine.add(ASSIGNMENT, df.filter(dup), "duplicate user_id in the assignment table")
    return df.filter(~dup).select("user_id", ARM)


def read_logs(uri: str | Any) -> Logs:
    """Read and validate the logs under `uri` (see the module docstring); no experiment yet."""
    prefix = list_logs(uri)
    quarantine = Quarantine()
    assignment = _assignment(prefix, quarantine)
    seen: dict[str, pa.Schema] = {}
    has_arm = _has_arm_column(prefix, seen)
    if not has_arm and assignment is None and prefix.files[SEARCH]:
        first = prefix.files[SEARCH][0]
        raise SchemaError(
            f"{prefix.uri.rstrip('/')}/{first.path}",
            ARM,
            f"missing, and there is no {ASSIGNMENT}/*.parquet table: the analysis needs each "
            "search row's arm",
        )
    arm_schema = pa.schema([pa.field(ARM, pa.string())]) if has_arm else pa.schema([])
    search, n_search = _validated(
        prefix, SEARCH, prefix.files[SEARCH], arm_schema, quarantine, seen
    )
    requests, n_requests = _validated(
        prefix, REQUESTS, prefix.files[REQUESTS], pa.schema([]), quarantine, seen
    )
    if has_arm:
        search = search.with_columns(pl.col(ARM).cast(pl.String))
        source = "column"
    else:
        assert assignment is not None
        search = search.join(assignment, on="user_id", how="left")
        source = "assignment"
    unknown = ~pl.col(ARM).is_in(ARMS) | pl.col(ARM).is_null()
    why = (
        pl.format("unknown arm '{}'", pl.col(ARM).fill_null("null"))
        if has_arm
        else pl.lit(f"user not in the {ASSIGNMENT} table")
    )
    unknown_rows = search.filter(unknown)
    quarantine.add(SEARCH, unknown_rows, why)
    if unknown_rows.height:
        search = search.filter(~unknown)
    return Logs(
        prefix=prefix,
        search=search,
        requests=requests,
        quarantine=quarantine,
        rows_read={SEARCH: n_search, REQUESTS: n_requests},
        arm_source=source,
    )


def _has_arm_column(prefix: LogPrefix, seen: dict[str, pa.Schema] | None = None) -> bool:
    """Whether the search log carries `arm`: all files or none (a mix is a schema error)."""
    files = prefix.files[SEARCH]
    have = []
    for f in files:
        schema = _file_schema(prefix, f, seen)
        have.append(ARM in schema.names)
    if have and any(have) and not all(have):
        missing = next(f for f, h in zip(files, have, strict=True) if not h)
        raise SchemaError(
            f"{prefix.uri.rstrip('/')}/{missing.path}",
            ARM,
            "missing here but present in other search_log files",
        )
    return bool(have) and all(have)


# --------------------------------------------------------------------------- the fast path
#
# Logs whose files hold exactly the contract's types (what `crops serve --request-log` and the
# apps write) are read with polars and validated with the contract's own rule expressions
# (`crops.schema._row_reasons`): no cast, no UTF-8 scan (polars refuses invalid UTF-8 in a
# string column, and such a file takes the general path, which flags the cells), so the split
# and the reasons are those of `check_rows`. The search log's group rules (a session's
# timestamps, duplicate (request_id, video_id), a request's odd query/session/user) cost a
# hash group-by over every row each; logs keep a request's rows and a session's rows together,
# so they are decided on runs of consecutive rows instead, and the rows of any request or
# session that is not one clean run are checked with the rule's own expression. Each rule is
# replaced only when it is, expression for expression, the one known here (`meta.eq`), so a
# change of the contract's rules falls back to the rules as written.


def _exact(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether `conform` leaves a column of type `got` unchanged (no cast, no range flags)."""
    if got == want:
        return True
    if want == pa.string():
        return pa.types.is_large_string(got)
    return False


def _read_exact(
    prefix: LogPrefix,
    kind: str,
    files: list[LogFile],
    schemas: list[pa.Schema],
    extra: pa.Schema,
) -> pl.DataFrame | None:
    """The table's rows (contract columns, `_file`, `_row`, `extra`) read with polars, or None.

    None when a file's types are not exactly the contract's or polars cannot read it (invalid
    UTF-8, for one): the general path (`conform`, `check_rows`) then reads every file.
    """
    contract = SCHEMAS[kind]
    wanted = [*contract, *extra]
    for schema in schemas:
        for want in wanted:
            i = schema.get_field_index(want.name)
            if i < 0 or not _exact(schema.field(i).type, want.type):
                return None
    expect = pl.from_arrow(pa.schema(wanted).empty_table())
    assert isinstance(expect, pl.DataFrame)
    names = [w.name for w in wanted]
    local = isinstance(prefix.fs, pafs.LocalFileSystem)
    frames = []
    for f in files:
        source: Any = prefix.full(f) if local else prefix.fs.open_input_file(prefix.full(f))
        try:
            df = pl.read_parquet(source, columns=names, hive_partitioning=False)
        except Exception:  # noqa: BLE001 - the general path reports what is wrong
            return None
        if df.schema != expect.schema:
            return None
        lengths = chunk_lengths(df)
        if any(chunk_lengths(df.select(c)) != lengths for c in df.columns):
            df = df.rechunk()
            lengths = [df.height]
        row = like_chunks(np.arange(df.height, dtype=np.int64), "_row", lengths)
        path = pl.Series("_file", [f.path], pl.String)
        file = pl.concat([path.new_from_index(0, n) for n in lengths], rechunk=False)
        frames.append(
            df.with_columns(file, row).select(*contract.names, "_file", "_row", *extra.names)
        )
    return pl.concat(frames, how="vertical")


def chunk_lengths(df: pl.DataFrame) -> list[int]:
    """Row counts of the chunks of `df`'s first column (all columns alike in frames read here)."""
    if df.width == 0:
        return [df.height]
    return [len(c) for c in df.to_series(0).get_chunks()]


def like_chunks(values: np.ndarray | pl.Series, name: str, lengths: list[int]) -> pl.Series:
    """`values` as a Series cut into chunks of `lengths` rows (zero-copy slices).

    A column chunked unlike the rest of a frame makes polars rechunk the whole frame at the
    next select or filter (a copy of every column): masks and new columns go in cut alike.
    """
    s = (values if isinstance(values, pl.Series) else pl.Series(values)).alias(name)
    if len(lengths) <= 1:
        return s
    parts, start = [], 0
    for n in lengths:
        parts.append(s.slice(start, n))
        start += n
    return pl.concat(parts, rechunk=False)


def _split_rows(kind: str, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, quarantined rows with `reason`): `check_rows` on a table without flags.

    The rules' conditions are evaluated as booleans on every row, and the reason strings
    (`check_rows`'s concatenation) built for the rows that break one: a string column of nulls
    per rule over every row is what costs.
    """
    exprs = _row_reasons(kind, df, None)
    lengths = chunk_lengths(df)
    source = df
    if kind == SEARCH:
        exprs, masks = _search_group_rules(df, exprs)
        source = df.with_columns(like_chunks(m, n, lengths) for n, m in masks.items())
    rules = _conditions(exprs)
    if rules is None:  # not all in the when(bad).then(reason) form: as check_rows does it
        flags = source
        candidates = np.ones(df.height, dtype=bool)
    else:
        names = [f"_bad_{i}" for i in range(len(rules))]
        flags = source.select(
            cond.fill_null(False).alias(n) for n, (cond, _) in zip(names, rules, strict=True)
        )
        candidates = flags.select(pl.any_horizontal(pl.all())).to_series().to_numpy()
        exprs = [_rule(pl.col(n), reason) for n, (_, reason) in zip(names, rules, strict=True)]
    empty = df.clear().with_columns(pl.lit(None, pl.String).alias("reason"))
    if not exprs or not candidates.any():
        return df, empty
    reason = pl.concat_str(exprs, separator="; ", ignore_nulls=True)
    reason = pl.when(reason == "").then(None).otherwise(reason)
    sub = flags if candidates.all() else flags.filter(like_chunks(candidates, "", lengths))
    reasons = sub.select(reason.alias("reason")).to_series()
    rows = np.flatnonzero(candidates)
    kept = reasons.is_not_null().to_numpy()
    if not kept.all():
        rows, reasons = rows[kept], reasons.filter(pl.Series(kept))
    if len(rows) == 0:
        return df, empty
    bad_mask = np.zeros(df.height, dtype=bool)
    bad_mask[rows] = True
    bad = df.filter(like_chunks(bad_mask, "", lengths)).rechunk().with_columns(reasons)
    return df.filter(like_chunks(~bad_mask, "", lengths)), bad


def _conditions(exprs: list[pl.Expr]) -> list[tuple[pl.Expr, str]] | None:
    """Each rule `when(bad).then(reason).otherwise(None)` as (bad, reason); None if one is not."""
    out = []
    for e in exprs:
        try:
            parts = e.meta.pop()
            if len(parts) != 3:
                return None
            bad, then = parts[0], parts[2]
            reason = pl.select(then).item()
        except Exception:  # noqa: BLE001 - another shape of rule: the general way
            return None
        if not isinstance(reason, str) or not _rule(bad, reason).meta.eq(e):
            return None
        out.append((bad, reason))
    return out


def _rule(bad: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(bad).then(pl.lit(reason)).otherwise(None)


def _known_search_rules() -> dict[str, tuple[pl.Expr, str]]:
    """The search log's group rules as `crops.schema` states them: name -> (condition, reason)."""
    c = pl.col
    rules = {
        "ts": (
            c("ts") < c("ts").cum_max().shift(1).over("session_id"),
            "ts earlier than a previous row of its session",
        ),
        "dup": (
            c("request_id").is_not_null()
            & ~pl.struct("request_id", "video_id").is_first_distinct(),
            "duplicate (request_id, video_id)",
        ),
    }
    for col in ("query", "session_id", "user_id"):
        odd = c(col) != c(col).mode().first().over("request_id")
        if col == "query":
            odd = odd & (c(col).str.strip_chars().str.len_bytes() > 0)
        rules[col] = (odd, f"{col} differs from the rest of its request")
    return rules


def _search_group_rules(
    df: pl.DataFrame, exprs: list[pl.Expr]
) -> tuple[list[pl.Expr], dict[str, np.ndarray]]:
    """Replace the known group rules among `exprs` by the same verdicts computed on runs.

    Returns the rules, a replaced one reading column ``_rule_<name>``, and those columns.
    """
    if df.height == 0:
        return exprs, {}
    known = _known_search_rules()
    where: dict[str, int] = {}
    for name, (bad, reason) in known.items():
        rule = _rule(bad, reason)
        hit = [i for i, e in enumerate(exprs) if e.meta.eq(rule)]
        if len(hit) == 1:
            where[name] = hit[0]
    if not where:
        return exprs, {}
    masks: dict[str, np.ndarray] = {}
    per_request = [n for n in ("dup", "query", "session_id", "user_id") if n in where]
    if per_request:
        masks.update(_request_rules(df, per_request, known))
    if "ts" in where:
        masks["ts"] = _session_rule(df, known["ts"][0])
    out = list(exprs)
    for name, i in where.items():
        out[i] = _rule(pl.col(f"_rule_{name}"), known[name][1])
    return out, {f"_rule_{name}": masks[name] for name in where}


def _starts(df: pl.DataFrame, by: list[str]) -> np.ndarray:
    """Boolean: the row starts a run of consecutive rows equal in `by` (nulls equal)."""
    out = np.zeros(df.height, dtype=bool)
    if df.height:
        out[0] = True
    general = []
    for c in by:
        s = df[c]
        if (s.dtype.is_integer() or s.dtype.is_temporal()) and not s.null_count():
            _changes(s.to_physical(), out)
        else:
            general.append(pl.col(c).ne_missing(pl.col(c).shift(1)))
    if general:
        new = df.select(pl.any_horizontal(general).fill_null(True)).to_series().to_numpy()
        out |= new
    return out


def _changes(s: pl.Series, out: np.ndarray) -> None:
    """Set `out` where a null-free numeric `s` differs from the row before (chunk by chunk)."""
    start, prev = 0, None
    for chunk in s.get_chunks():
        a = chunk.to_numpy()
        n = len(a)
        if n == 0:
            continue
        if prev is not None and a[0] != prev:
            out[start] = True
        out[start + 1 : start + n] |= a[1:] != a[:-1]
        start, prev = start + n, a[-1]


def run_starts(df: pl.DataFrame, by: list[str]) -> np.ndarray:
    """Indices of the rows that start a run of consecutive rows equal in `by` (nulls equal)."""
    return np.flatnonzero(_starts(df, by))


def _checked_on(df: pl.DataFrame, rows: np.ndarray, conds: dict[str, pl.Expr]) -> dict:
    """Each condition evaluated on the rows `rows` only (a set closed under its groups)."""
    sub = df.filter(like_chunks(rows, "", chunk_lengths(df)))
    got = sub.select(**{n: e.fill_null(False) for n, e in conds.items()})
    return {n: got[n].to_numpy() for n in conds}


def _request_rules(
    df: pl.DataFrame, names: list[str], known: dict[str, tuple[pl.Expr, str]]
) -> dict[str, np.ndarray]:
    """Duplicate (request_id, video_id) and a request's odd query/session/user, on runs.

    A request is regular when its rows are one run (no other run has its id), its id is not
    null, no video_id is null, and query, session_id and user_id are the same on every row:
    then no row is odd, and a duplicate is a repeat of (run, video_id). The rows of the other
    requests (a set closed under request_id) are checked with the rules' own expressions.
    """
    n = df.height
    starts = _starts(df, ["request_id"])
    first = np.flatnonzero(starts)
    run = np.cumsum(starts) - 1
    inner = _starts(df, ["query", "session_id", "user_id"]) & ~starts
    inner |= df["video_id"].is_null().to_numpy()
    odd_run = np.logical_or.reduceat(inner, first)
    ids = df["request_id"].gather(first)
    odd_run |= (ids.is_duplicated() | ids.is_null()).to_numpy()
    irregular = odd_run[run]
    out = {name: np.zeros(n, dtype=bool) for name in names}
    if "dup" in names:
        vid = df["video_id"]
        lo, hi = vid.min(), vid.max()
        span = (int(hi) - int(lo) + 1) if lo is not None and hi is not None else 1
        if len(first) * span < 2**62:
            key = run.astype(np.int64) * span + (vid.fill_null(lo or 0).to_numpy() - (lo or 0))
            order = np.argsort(key, kind="stable")
            ordered = key[order]
            again = np.empty(n, dtype=bool)
            again[0] = False
            np.equal(ordered[1:], ordered[:-1], out=again[1:])
            out["dup"][order] = again
        else:
            irregular = np.ones(n, dtype=bool)
    if irregular.any():
        rows = np.flatnonzero(irregular)
        got = _checked_on(df, irregular, {name: known[name][0] for name in names})
        for name in names:
            out[name][rows] = got[name]
    return out


def _session_rule(df: pl.DataFrame, cond: pl.Expr) -> np.ndarray:
    """ts earlier than a previous row of its session, on runs of session_id.

    A session that is one run with no null ts is decided by a running maximum over the runs
    laid end to end (each run shifted above the previous one); the rows of the others are
    checked with the rule's own expression.
    """
    n = df.height
    starts = _starts(df, ["session_id"])
    first = np.flatnonzero(starts)
    run = np.cumsum(starts) - 1
    ts = df["ts"].to_physical()
    null_ts = ts.is_null().to_numpy()
    ids = df["session_id"].gather(first)
    odd_run = (ids.is_duplicated() | ids.is_null()).to_numpy()
    odd_run |= np.logical_or.reduceat(null_ts, first)
    irregular = odd_run[run]
    out = np.zeros(n, dtype=bool)
    lo, hi = ts.min(), ts.max()
    band = (int(hi) - int(lo) + 1) if lo is not None and hi is not None else 1
    if len(first) * band < 2**62:
        x = run.astype(np.int64) * band + (ts.fill_null(lo or 0).to_numpy() - (lo or 0))
        before = np.maximum.accumulate(x)
        np.less(x[1:], before[:-1], out=out[1:])
    else:
        irregular = np.ones(n, dtype=bool)
    if irregular.any():
        out[np.flatnonzero(irregular)] = _checked_on(df, irregular, {"ts": cond})["ts"]
    return out


__all__ = ["Logs", "Quarantine", "read_logs"]
