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
from crops.rowcheck import chunk_lengths, like_chunks, split_rows
from crops.schema import SCHEMAS, SchemaError, check_rows, check_schema, conform


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
    SEARCH: ("request_id", "session_id", "user_id", "ts", "video_id", "stage", ARM),
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


def _no_rows(schema: pa.Schema) -> pa.Table:
    """An empty table of `schema` (`Schema.empty_table` imports pandas: 0.2 s a process)."""
    return pa.Table.from_batches([], schema=schema)


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
    check_schema(schema, contract, shown)  # raises SchemaError(file, column)
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
        empty = pl.from_arrow(_no_rows(contract))
        assert isinstance(empty, pl.DataFrame)
        return empty.with_columns(
            pl.lit(None, pl.String).alias("_file"), pl.lit(None, pl.Int64).alias("_row")
        ), 0
    schemas = [_check_file_schema(prefix, f, kind, extra, seen) for f in files]
    fast = _read_exact(prefix, kind, files, schemas, extra)
    if fast is not None:
        valid, bad = split_rows(kind, fast)
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


def read_assignment(prefix: LogPrefix, quarantine: Quarantine) -> pl.DataFrame | None:
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
    assignment = read_assignment(prefix, quarantine)
    seen: dict[str, pa.Schema] = {}
    has_arm = arm_in_search_log(prefix, assignment, seen)
    return read_tables(prefix, quarantine, assignment, has_arm=has_arm, seen=seen)


def arm_in_search_log(
    prefix: LogPrefix, assignment: pl.DataFrame | None, seen: dict[str, pa.Schema] | None = None
) -> bool:
    """Whether search rows carry `arm` (else the assignment table gives it); neither: an error."""
    has_arm = _has_arm_column(prefix, seen)
    if not has_arm and assignment is None and prefix.files[SEARCH]:
        first = prefix.files[SEARCH][0]
        raise SchemaError(
            f"{prefix.uri.rstrip('/')}/{first.path}",
            ARM,
            f"missing, and there is no {ASSIGNMENT}/*.parquet table: the analysis needs each "
            "search row's arm",
        )
    return has_arm


def read_tables(
    prefix: LogPrefix,
    quarantine: Quarantine,
    assignment: pl.DataFrame | None,
    *,
    has_arm: bool,
    seen: dict[str, pa.Schema] | None = None,
) -> Logs:
    """The search and request logs of `prefix`'s files (all, or one partition's), validated.

    `assignment` and `has_arm` come from the whole prefix (`read_assignment`,
    `arm_in_search_log`), so that every partition is read alike.
    """
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


def served_requests(requests: pl.DataFrame) -> pl.DataFrame:
    """The request log's answers a search row can name: instance 0, with a numeric request id
    (the app's search_log id sent as x-request-id), ``request_id`` cast to Int64."""
    return (
        requests.filter(pl.col("instance") == 0)
        .with_columns(pl.col("request_id").cast(pl.Int64, strict=False))
        .filter(pl.col("request_id").is_not_null())
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
# Logs whose files hold exactly the contract's types are read with polars and validated by
# `crops.rowcheck.split_rows` (no cast, no UTF-8 scan: polars refuses invalid UTF-8 in a string
# column, and such a file takes the general path, `conform` and `check_rows`, which flags the
# cells).


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
    expect = pl.from_arrow(_no_rows(pa.schema(wanted)))
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


__all__ = [
    "Logs",
    "Quarantine",
    "arm_in_search_log",
    "read_assignment",
    "read_logs",
    "read_tables",
    "served_requests",
]
