"""The data contracts (docs/design.md section 3): Arrow schemas, validation and quarantine.

Every step that reads a table goes through :func:`load_table`, so a malformed file fails the
same way everywhere (a :class:`SchemaError` naming file and column) and bad rows are split off
with a reason instead of being dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TS = pa.timestamp("ms", tz="UTC")

#: Stages of the production cascade a search_log row can have reached.
STAGES = ("prefiltered", "ranked", "shown")

#: Hierarchical Label Assignment (the paper's Table 1): source -> label. Label 0 is in-batch.
HLA_LABELS: dict[str, int] = {
    "reformulation": 5,
    "recfeed": 4,
    "llm": 4,
    "click": 4,
    "exposed": 3,
    "ranked": 2,
    "prefiltered": 1,
}
#: Human relevance judgements (a graded collection: `crops ingest query-title`, `crops train
#: --qrels`) are a source of their own, not a behaviour: see :func:`judged_label`.
JUDGED_SOURCE = "judged"
SOURCES = (*HLA_LABELS, JUDGED_SOURCE)
#: The labels a judgement can take (1..5): 0 is kept for in-batch negatives.
JUDGED_LABELS = (1, 5)


def judged_label(grade: int, top: int) -> int:
    """The HLA label of a human judgement: grade g on a scale 0..top becomes 1 + round(4 g/top).

    The lowest grade sits just above the in-batch negatives (a judged title was retrieved for
    the query: a harder negative than a random video), the top grade at the top level with
    reformulations; 0/1/2 (QBQTC) gives 1/3/5, 0..3 (TREC) 1/2/4/5, binary 0/1 gives 1/5.
    Rounding is half up, so the rule does not depend on Python's banker's rounding.
    """
    if top < 1:
        raise ValueError(f"a grade scale needs a top grade of at least 1, got {top}")
    if not 0 <= grade <= top:
        raise ValueError(f"grade {grade} is outside the scale 0..{top}")
    return 1 + int(4 * grade / top + 0.5)


#: The search cascade's level samples (labels 1-3, highest first), which the level filter gates.
LEVEL_SOURCES = tuple(s for s, label in HLA_LABELS.items() if label <= 3)

MAX_QUERY_BYTES = 1024

#: A play is long when watch_ms >= min(duration_ms, LONG_PLAY_MS). The one definition.
LONG_PLAY_MS = 18_000

#: A user's next query within this many seconds, and different, is a reformulation.
REFORMULATION_WINDOW_S = 90

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("cover_text", pa.string()),
        pa.field("category", pa.string()),
        pa.field("upload_ts", TS),
        pa.field("synthetic", pa.bool_()),
        pa.field("source_query", pa.string()),
    ]
)

SEARCH_LOG = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("watch_ms", pa.int64(), nullable=False),
        pa.field("duration_ms", pa.int64(), nullable=False),
    ]
)

REC_LOG = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("watch_ms", pa.int64(), nullable=False),
        pa.field("duration_ms", pa.int64(), nullable=False),
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("query", pa.string(), nullable=False),
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("relevance", pa.float32()),
        pa.field("request_id", pa.int64()),
        pa.field("session_id", pa.int64()),
    ]
)

#: One row per query answered (or refused) by `crops serve --request-log`: a request of n
#: queries is n rows (instance 0..n-1); a refused request is one row with a null query and
#: null results. user_id comes from the caller's ``x-user-id`` header.
REQUEST_LOG = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("instance", pa.int32(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.int64()),
        pa.field("query", pa.string()),
        pa.field("top_k", pa.int32()),
        pa.field("video_ids", pa.list_(pa.int64())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("model_hash", pa.string(), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("protocol", pa.string()),
        pa.field("error", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "search_log": SEARCH_LOG,
    "rec_log": REC_LOG,
    "samples": SAMPLES,
    "request_log": REQUEST_LOG,
}

#: Columns whose values are user or uploader text and must be valid UTF-8.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "videos": ("caption", "cover_text", "category", "source_query"),
    "search_log": ("query", "stage"),
    "rec_log": (),
    "samples": ("query", "source"),
    "request_log": ("request_id", "query", "model_hash", "protocol", "error"),
}


class SchemaError(ValueError):
    """A file-level problem: unreadable file, missing column or incompatible type."""

    def __init__(self, path: str | Path, column: str | None, message: str) -> None:
        self.path, self.column, self.message = str(path), column, message
        where = f"{self.path}: column '{column}'" if column else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # survives pickling (Ray sends worker errors to the driver)
        return (SchemaError, (self.path, self.column, self.message))


def long_play(watch_ms: pl.Expr, duration_ms: pl.Expr, threshold_ms: int = LONG_PLAY_MS) -> pl.Expr:
    """The one long-play definition: watched at least min(duration, threshold)."""
    return watch_ms >= pl.min_horizontal(duration_ms, pl.lit(threshold_ms, pl.Int64))


def video_text(videos: pl.DataFrame) -> pl.DataFrame:
    """(video_id, text): caption, tags and cover text joined, the text models read of a video."""
    return videos.select(
        "video_id",
        pl.concat_str(
            [
                pl.col("caption").fill_null(""),
                pl.col("tags").list.join(" ").fill_null(""),
                pl.col("cover_text").fill_null(""),
            ],
            separator=" ",
        )
        .str.strip_chars()
        .alias("text"),
    )


def log_requests(search: pl.LazyFrame) -> pl.LazyFrame:
    """One row per request of a search log: request_id, session_id, user_id, ts, query.

    Each request's first row in file order. Logs keep a request's rows together, so the rows
    that start a run are nearly one per request; a `unique` over those few handles logs that
    do not (same result as a group-by `first`, at a fraction of its cost on 10 M+ rows).
    """
    cols = ["request_id", "session_id", "user_id", "ts", "query"]
    starts = search.select(cols).filter(
        pl.col("request_id").ne_missing(pl.col("request_id").shift(1))
    )
    return starts.unique(subset="request_id", keep="first", maintain_order=True)


def long_play_np(watch_ms, duration_ms, threshold_ms: int = LONG_PLAY_MS):
    """NumPy twin of :func:`long_play` for the simulator's vectorised inner loop."""
    import numpy as np

    return np.asarray(watch_ms) >= np.minimum(np.asarray(duration_ms), threshold_ms)


# --------------------------------------------------------------------------- type conformance


def _compatible(found: pa.DataType, want: pa.DataType) -> bool:
    """Types we cast losslessly into the contract (widening ints, other string/timestamp kinds)."""
    if found.equals(want):
        return True
    if pa.types.is_integer(want):
        return pa.types.is_integer(found)
    if pa.types.is_floating(want):
        return pa.types.is_floating(found) or pa.types.is_integer(found)
    if pa.types.is_string(want):
        return (
            pa.types.is_string(found)
            or pa.types.is_large_string(found)
            or pa.types.is_string_view(found)
            or pa.types.is_binary(found)
            or pa.types.is_large_binary(found)
        )
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(found)
    if pa.types.is_list(want):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and _compatible(
            found.value_type, want.value_type
        )
    return False


def _invalid_utf8(arr: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """Boolean mask of rows holding bytes that are not UTF-8, or None when all are valid.

    For list<string> columns a row is bad when any element is.
    """
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        inner = _invalid_utf8(arr.flatten())
        if inner is None:
            return None
        parents = pc.list_parent_indices(arr).to_numpy()
        bad = np.zeros(len(arr), dtype=bool)
        bad[parents[inner.to_numpy(zero_copy_only=False)]] = True
        return pa.array(bad)
    as_binary = arr.cast(pa.binary()) if not pa.types.is_binary(arr.type) else arr
    try:
        as_binary.cast(pa.string()).validate(full=True)
        return None
    except (pa.ArrowInvalid, pa.ArrowException):
        pass
    bad = []
    for value in as_binary.to_pylist():
        try:
            if value is not None:
                value.decode("utf-8")
            bad.append(False)
        except UnicodeDecodeError:
            bad.append(True)
    return pa.array(bad, pa.bool_())


def _out_of_range(col: pa.ChunkedArray, want: pa.DataType) -> pa.Array | None:
    """Rows of an integer column whose value does not fit the (narrower) contract type."""
    if not (pa.types.is_integer(col.type) and pa.types.is_integer(want)):
        return None
    info = np.iinfo(want.to_pandas_dtype())
    values = col.combine_chunks()
    mask = pc.greater(values, pa.scalar(info.max, pa.uint64() if info.max > 0 else pa.int64()))
    if pa.types.is_signed_integer(col.type):
        mask = pc.or_(mask, pc.less(values, info.min))
    mask = pc.fill_null(mask, False)
    return mask if pc.any(mask).as_py() else None


#: Per column, rows whose cell could not be read into the contract: (mask, reason).
Flags = dict[str, tuple[pa.Array, str]]


_OPTIONAL = {"videos": ("synthetic", "source_query")}  # may be absent: conform fills them


def check_schema(found: pa.Schema, name: str, path: str | Path) -> None:
    """The contract's columns and types against a file's schema, before any row is read.

    A missing column or a type that cannot be cast losslessly is a SchemaError naming the
    column and `path`; dictionary (categorical) columns are judged by their value type, and an
    all-null column passes where the contract allows nulls.
    """
    for f in SCHEMAS[name]:
        if f.name not in found.names:
            if f.nullable and f.name in _OPTIONAL.get(name, ()):
                continue
            raise SchemaError(path, f.name, f"missing (the {name} contract requires it)")
        got = found.field(found.names.index(f.name)).type
        if pa.types.is_dictionary(got):  # categoricals from pandas or polars
            got = got.value_type
        if pa.types.is_null(got) and f.nullable:
            continue
        if not _compatible(got, f.type):
            raise SchemaError(path, f.name, f"has type {got}, the {name} contract wants {f.type}")


def conform(table: pa.Table, name: str, path: str | Path) -> tuple[pa.Table, Flags]:
    """Check columns and types against the contract and cast into it.

    Returns the conformed table (contract columns only, in contract order) and the flagged
    cells: text that is not valid UTF-8, integers out of the contract type's range. Flagged
    cells become null and their rows are quarantined by :func:`check_rows` with the reason.
    Timestamps finer than milliseconds are truncated to milliseconds.
    """
    check_schema(table.schema, name, path)
    schema = SCHEMAS[name]
    flags: Flags = {}
    columns = []
    for f in schema:
        if f.name not in table.column_names:  # an optional videos column (check_schema)
            default = pa.nulls(table.num_rows, f.type)
            if f.name == "synthetic":
                default = pa.array([False] * table.num_rows, pa.bool_())
            columns.append(default)
            continue
        col = table.column(f.name)
        if pa.types.is_dictionary(col.type):  # categoricals from pandas or polars
            col = col.cast(col.type.value_type)
        if pa.types.is_null(col.type) and f.nullable:  # an all-null optional column
            col = pa.chunked_array([pa.nulls(len(col), f.type)])
        mask, reason = None, ""
        if f.name in TEXT_COLUMNS[name] or f.name == "tags":
            mask, reason = _invalid_utf8(col), f"{f.name} is not valid UTF-8"
            if mask is not None and f.name != "tags":
                col = col.cast(pa.binary())
        else:
            mask, reason = _out_of_range(col, f.type), f"{f.name} out of range for {f.type}"
        if mask is not None:
            flags[f.name] = (mask, reason)
            col = pc.if_else(mask, pa.scalar(None, col.type), col)
        if pa.types.is_timestamp(f.type) and col.type.tz is None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
        try:
            # timestamps truncate to ms; floats may round (a score needs no 53-bit precision)
            lossy_ok = pa.types.is_timestamp(f.type) or pa.types.is_floating(f.type)
            col = col.cast(f.type, safe=not lossy_ok)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(path, f.name, f"cannot be read as {f.type}: {exc}") from exc
        columns.append(col)
    nullable_schema = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_arrays(columns, schema=nullable_schema), flags


# --------------------------------------------------------------------------- row checks


def _row_reasons(
    name: str,
    df: pl.DataFrame,
    video_ids: pl.Series | None,
    flagged: frozenset[str] = frozenset(),
) -> list[pl.Expr]:
    """One expression per rule: a reason string where the row breaks it, else null.

    `flagged` names the columns with a `_flag_<column>` column: those cells were nulled by
    :func:`conform` (invalid UTF-8, out of range) and are reported for that, not as nulls.
    """
    schema = SCHEMAS[name]
    c = pl.col
    rules: list[tuple[pl.Expr, str]] = [
        (
            c(f.name).is_null() & ~c(f"_flag_{f.name}")
            if f.name in flagged
            else c(f.name).is_null(),
            f"null {f.name}",
        )
        for f in schema
        if not f.nullable
    ]
    if name in ("search_log", "samples"):
        q = c("query")
        rules += [
            (q.is_not_null() & (q.str.strip_chars().str.len_bytes() == 0), "empty query"),
            (q.str.len_bytes() > MAX_QUERY_BYTES, f"query over {MAX_QUERY_BYTES} bytes"),
        ]
    if name in ("search_log", "rec_log"):
        rules += [
            (c("watch_ms") < 0, "negative watch_ms"),
            (c("duration_ms") <= 0, "duration_ms not positive"),
        ]
    if name == "search_log":
        rules += [
            (c("stage").is_not_null() & ~c("stage").is_in(STAGES), "unknown stage"),
            (c("position") < 0, "negative position"),
            (c("clicked") & (c("stage") != "shown"), "clicked but not shown"),
            (
                c("ts") < c("ts").cum_max().shift(1).over("session_id"),
                "ts earlier than a previous row of its session",
            ),
            (
                c("request_id").is_not_null()
                & ~pl.struct("request_id", "video_id").is_first_distinct(),
                "duplicate (request_id, video_id)",
            ),
        ]
        # a request has one query, session and user: rows that disagree with the request's
        # majority are the odd ones out (an empty query is already reported as such)
        for col in ("query", "session_id", "user_id"):
            odd = c(col) != c(col).mode().first().over("request_id")
            if col == "query":
                odd = odd & (c(col).str.strip_chars().str.len_bytes() > 0)
            rules.append((odd, f"{col} differs from the rest of its request"))
    if name == "rec_log":
        rules.append((~pl.struct("user_id", "ts", "video_id").is_first_distinct(), "duplicate row"))
    if name == "videos":
        rules.append(
            (c("video_id").is_not_null() & ~c("video_id").is_first_distinct(), "duplicate video_id")
        )
    if name == "samples":
        rules += [
            (~c("source").is_in(SOURCES), "unknown source"),
            ((c("label") < 0) | (c("label") > 5), "label outside 0..5"),
            (
                c("source").is_in(list(HLA_LABELS))
                & (c("label") != c("source").replace_strict(HLA_LABELS, default=-1)),
                "label does not match its source under HLA",
            ),
            (
                (c("source") == JUDGED_SOURCE) & ~c("label").is_between(*JUDGED_LABELS),
                f"judged label outside {JUDGED_LABELS[0]}..{JUDGED_LABELS[1]}",
            ),
            (c("relevance").is_not_null() & ~c("relevance").is_finite(), "relevance not finite"),
        ]
    if name == "request_log":
        ok = c("status").is_between(200, 299)
        rules += [
            (
                ~pl.struct("request_id", "instance").is_first_distinct(),
                "duplicate (request_id, instance)",
            ),
            (c("instance") < 0, "negative instance"),
            ((c("status") < 100) | (c("status") > 599), "status not an HTTP code"),
            (c("latency_ms") < 0, "negative latency_ms"),
            (c("query").str.len_bytes() > MAX_QUERY_BYTES, f"query over {MAX_QUERY_BYTES} bytes"),
            (ok & c("query").is_null(), "answered without a query"),
            (ok & c("video_ids").is_null(), "answered without video_ids"),
            (
                c("video_ids").list.len() != c("scores").list.len(),
                "video_ids and scores differ in length",
            ),
        ]
    if video_ids is not None and name in ("search_log", "rec_log", "samples"):
        rules.append(
            (
                c("video_id").is_not_null() & ~c("video_id").is_in(video_ids.implode()),
                "video_id not in videos",
            )
        )
    return [pl.when(bad).then(pl.lit(reason)).otherwise(None) for bad, reason in rules]


@dataclass
class TableReport:
    """What validation found in one table."""

    table: str
    path: str
    rows: int
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "path": self.path,
            "rows": self.rows,
            "valid": self.rows - self.quarantined,
            "quarantined": self.quarantined,
            "reasons": self.reasons,
        }


def check_rows(
    name: str,
    table: pa.Table,
    path: str | Path,
    *,
    flags: Flags | None = None,
    video_ids: pl.Series | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, TableReport]:
    """Split a conformed table into valid rows and quarantined rows (with `reason`, `row`)."""
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    flags = flags or {}
    for column, (mask, _) in flags.items():
        df = df.with_columns(pl.Series(f"_flag_{column}", mask.to_pylist(), pl.Boolean))
    exprs = _row_reasons(name, df, video_ids, frozenset(flags))
    for column, (_, reason) in flags.items():
        exprs.append(pl.when(pl.col(f"_flag_{column}")).then(pl.lit(reason)))
    if name == "videos" and "tags" in df.columns:
        exprs.append(
            pl.when(
                pl.col("tags").list.eval(pl.element().str.len_bytes() > MAX_QUERY_BYTES).list.any()
            ).then(pl.lit(f"tag over {MAX_QUERY_BYTES} bytes"))
        )
    df = df.with_row_index("row").with_columns(
        pl.concat_str(exprs, separator="; ", ignore_nulls=True).alias("reason")
        if exprs
        else pl.lit(None, pl.String).alias("reason")
    )
    df = df.with_columns(
        pl.when(pl.col("reason") == "").then(None).otherwise(pl.col("reason")).alias("reason")
    )
    df = df.drop([c for c in df.columns if c.startswith("_flag_")])
    bad_mask = pl.col("reason").is_not_null()
    quarantine = df.filter(bad_mask)
    valid = df.filter(~bad_mask).drop("row", "reason")
    report = TableReport(name, str(path), df.height, quarantine.height)
    if quarantine.height:
        counts = (
            quarantine.select(pl.col("reason").str.split("; ").explode())
            .group_by("reason")
            .len()
            .sort("reason")
        )
        report.reasons = dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))
    return valid, quarantine, report


def read_parquet(path: str | Path, name: str) -> pa.Table:
    """Read a Parquet file for table `name`, turning I/O and format errors into SchemaError."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(path, None, f"not found (the {name} table)")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(path, None, f"not a readable Parquet file: {exc}") from exc


def load_table(
    path: str | Path, name: str, *, video_ids: pl.Series | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, TableReport]:
    """Read, conform and row-check one table: (valid rows, quarantined rows, report)."""
    table, flags = conform(read_parquet(path, name), name, path)
    return check_rows(name, table, path, flags=flags, video_ids=video_ids)


def write_quarantine(
    quarantine: pl.DataFrame, directory: str | Path, name: str, into: str | Path | None = None
) -> Path:
    """Write quarantined rows to DIRECTORY/_quarantine/<name>.parquet, or INTO/<name>.parquet
    when given (always, even empty)."""
    out = Path(into) if into is not None else Path(directory) / "_quarantine"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.parquet"
    quarantine.write_parquet(target)
    return target


#: A folder of tables is refused (`crops validate` exits 1, the validate task fails) when more
#: than this share of one table's rows is quarantined.
MAX_QUARANTINE_SHARE = 0.01


def worst_share(reports: list[TableReport], *, unreadable: int = 0) -> float:
    """The largest share of quarantined rows over the tables (0 for empty tables).

    `unreadable`: source rows an importer could not parse into any table; they count as a
    share of every row read (the tables' rows and themselves), so an import that loses its
    rows before the tables is refused like one that quarantines them.
    """
    shares = [r.quarantined / r.rows for r in reports if r.rows]
    if unreadable:
        shares.append(unreadable / (sum(r.rows for r in reports) + unreadable))
    return max(shares, default=0.0)


def check_tables(
    tables: dict[str, tuple[pa.Table, str | Path]],
) -> list[tuple[pl.DataFrame, pl.DataFrame, TableReport]]:
    """Conform and row-check a set of contract tables together: (valid, quarantine, report)
    per table, videos first, in contract order.

    videos is required: the logs' and samples' video ids are checked against it. A video
    quarantined for a bad field still exists, so logs may refer to it.
    """
    if "videos" not in tables:
        raise SchemaError("videos.parquet", None, "missing (every folder of tables needs videos)")
    out = []
    for name in ("videos", "search_log", "rec_log", "samples"):
        if name not in tables:
            continue
        table, path = tables[name]
        conformed, flags = conform(table, name, path)
        ids = None
        if name != "videos":  # a video quarantined for a bad field still exists
            videos, q = out[0][0], out[0][1]
            ids = pl.concat([videos["video_id"], q["video_id"]]).drop_nulls().unique()
        out.append(check_rows(name, conformed, path, flags=flags, video_ids=ids))
    return out


def validate_dir(directory: str | Path, out: str | Path | None = None) -> list[TableReport]:
    """Validate every contract table present in a directory; quarantine bad rows.

    videos.parquet is required; the others are checked when present. Row-level problems go to
    OUT/<table>.parquet and a report.json beside them; OUT defaults to DIRECTORY/_quarantine,
    and a given OUT leaves DIRECTORY untouched (read-only data validates in place).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SchemaError(directory, None, "not a directory")
    qdir = Path(out) if out is not None else directory / "_quarantine"
    if qdir.exists() and not qdir.is_dir():
        raise SchemaError(qdir, None, "the quarantine folder is not a directory")
    tables = {
        name: (read_parquet(directory / f"{name}.parquet", name), directory / f"{name}.parquet")
        for name in ("videos", "search_log", "rec_log", "samples")
        if name == "videos" or (directory / f"{name}.parquet").exists()
    }
    reports = []
    for _, q, rep in check_tables(tables):
        write_quarantine(q, directory, rep.table, into=qdir)
        reports.append(rep)
    (qdir / "report.json").write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    return reports
