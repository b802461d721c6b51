"""Format `mapped`: a platform's own CSV, TSV or Parquet tables through a YAML column mapping.

The mapping (``--mapping FILE``, docs/ingest.md has the reference and docs/examples/ an example)
names, per contract table, the source file, which source column fills each contract column,
constants for contract columns the source lacks, and how timestamps and booleans are written.
:class:`Mapping` validates it: unknown keys, unknown contract columns and contract columns left
unfilled are errors naming the YAML file and key.

Cells are parsed column by column with polars (non-strict casts): a cell that was not null
and became null did not parse, and its row goes to the unreadable rows with the column named,
so millions of rows parse at polars' speed and none is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crops.ingest.ids import ID_COLUMNS
from crops.ingest.tables import INGESTED, WHERE, Imported, unreadable_rows
from crops.ingest.text import IngestError, read_csv_text
from crops.schema import SCHEMAS

if TYPE_CHECKING:
    from crops.ingest.formats import IngestOptions

FORMAT = "mapped"
#: File suffix -> CSV separator (None: Parquet).
SUFFIXES: dict[str, str | None] = {".csv": ",", ".tsv": "\t", ".parquet": None}
#: Named timestamp formats; anything else is a strftime pattern (it must contain a %).
TS_FORMATS = ("iso", "unix_s", "unix_ms")
#: The ISO 8601 shapes `iso` accepts, with an offset (or Z) and without (then `timezone`).
_ISO_AWARE = ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z")
_ISO_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M")
_ISO_DATE = "%Y-%m-%d"
#: The contract's videos.synthetic is left out when unmapped, so the contract's default applies.
_CONTRACT_DEFAULTED = {"videos": ("synthetic",)}


class TableMapping(BaseModel):
    """How one contract table is read from one source file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = Field(
        None,
        description="the source file, relative to SRC (.csv, .tsv or .parquet); may be left"
        " out when SRC is that file",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="contract column: source column"
    )
    constants: dict[str, str | bool | int | float] = Field(
        default_factory=dict, description="contract column: value, for columns the source lacks"
    )
    ts_format: str = Field(
        "iso", description="iso, unix_s, unix_ms or a strftime pattern such as %Y-%m-%d %H:%M:%S"
    )
    timezone: str = Field("UTC", description="the zone of timestamps written without an offset")
    true_values: list[str] = Field(
        ["1", "true", "t", "yes", "y"], description="boolean cells read as true (any case)"
    )
    false_values: list[str] = Field(
        ["0", "false", "f", "no", "n"], description="boolean cells read as false (any case)"
    )
    list_separator: str = Field("|", min_length=1, description="between a text cell's tags")
    separator: str | None = Field(
        None, min_length=1, max_length=1, description="CSV field separator (default by suffix)"
    )

    @field_validator("file")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and Path(v).suffix.lower() not in SUFFIXES:
            raise ValueError(f"{v!r} is not a {', '.join(SUFFIXES)} file")
        return v

    @field_validator("ts_format")
    @classmethod
    def _ts_format(cls, v: str) -> str:
        if v not in TS_FORMATS and "%" not in v:
            raise ValueError(f"{v!r}: one of {', '.join(TS_FORMATS)} or a strftime pattern")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None
        return v

    @model_validator(mode="after")
    def _booleans(self) -> TableMapping:
        both = {v.lower() for v in self.true_values} & {v.lower() for v in self.false_values}
        if both:
            raise ValueError(f"true_values and false_values share {sorted(both)}")
        return self


class Mapping(BaseModel):
    """A platform's tables as contract tables: ``tables: {name: TableMapping}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tables: dict[str, TableMapping]

    @model_validator(mode="after")
    def _covers_contract(self) -> Mapping:
        for name in self.tables:
            if name not in INGESTED:
                raise ValueError(f"tables.{name}: not a contract table ({', '.join(INGESTED)})")
        if "videos" not in self.tables:
            raise ValueError("tables.videos is missing: every import needs a videos table")
        for name, t in self.tables.items():
            contract = SCHEMAS[name]
            for part, keys in (("columns", t.columns), ("constants", t.constants)):
                for key in keys:
                    if key not in contract.names:
                        raise ValueError(
                            f"tables.{name}.{part}.{key}: not a column of the {name} contract"
                            f" ({', '.join(contract.names)})"
                        )
            for key in set(t.columns) & set(t.constants):
                raise ValueError(f"tables.{name}.constants.{key}: also in tables.{name}.columns")
            unfilled = [
                f.name
                for f in contract
                if not f.nullable and f.name not in t.columns and f.name not in t.constants
            ]
            if unfilled:
                raise ValueError(
                    f"tables.{name}.columns: the {name} contract requires"
                    f" {', '.join(unfilled)} (map a source column or give a constant)"
                )
        return self


def load_mapping(path: Path) -> Mapping:
    """The mapping in YAML file `path`; any problem is an IngestError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"--mapping {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 at byte {exc.start}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise IngestError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise IngestError(f"{path}: a mapping needs a top-level 'tables:' key")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(x) for x in e["loc"])
            message = e["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message}" if key else message)
        raise IngestError(f"{path}: {'; '.join(problems)}") from None


# --------------------------------------------------------------------------- reading sources


def _read_source(path: Path, t: TableMapping, encoding: str | None) -> pl.DataFrame:
    """The source file as a frame: CSV/TSV all text, Parquet with its own types (text columns
    as binary, so bytes that are not UTF-8 reach the contract's check instead of failing here)."""
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    separator = t.separator or SUFFIXES[path.suffix.lower()]
    if separator is not None:
        return read_csv_text(path, encoding, separator)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file: {exc}") from None
    binary = {
        i: pa.binary() if pa.types.is_string(f.type) else pa.large_binary()
        for i, f in enumerate(table.schema)
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    }
    for i, to in binary.items():
        table = table.set_column(i, table.schema.field(i).name, table.column(i).cast(to))
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def _text(s: pl.Series) -> pl.Series:
    """A source column as text (None where it is null or not UTF-8)."""
    if s.dtype == pl.String:
        return s
    if s.dtype == pl.Binary:
        return s.cast(pl.String, strict=False)
    if isinstance(s.dtype, pl.List):
        return s.cast(pl.List(pl.String), strict=False).list.join("|")
    return s.cast(pl.String, strict=False)


# --------------------------------------------------------------------------- parsing cells


def _integer(s: pl.Series) -> pl.Series:
    if s.dtype.is_integer():
        return s.cast(pl.Int64)
    if s.dtype.is_float():
        return pl.select(pl.when(s == s.floor()).then(s).cast(pl.Int64, strict=False)).to_series()
    return _text(s).str.strip_chars().cast(pl.Int64, strict=False)


def _float(s: pl.Series) -> pl.Series:
    if s.dtype.is_numeric():
        return s.cast(pl.Float64)
    return _text(s).str.strip_chars().cast(pl.Float64, strict=False)


def _boolean(s: pl.Series, t: TableMapping) -> pl.Series:
    if s.dtype == pl.Boolean:
        return s
    v = _text(s).str.strip_chars().str.to_lowercase()
    trues, falses = [x.lower() for x in t.true_values], [x.lower() for x in t.false_values]
    return pl.select(
        pl.when(v.is_in(trues)).then(True).when(v.is_in(falses)).then(False)
    ).to_series()


def _utc(s: pl.Series, zone: str) -> pl.Series:
    """Datetimes as UTC milliseconds; naive ones are in `zone` (a nonexistent local time is
    null, an ambiguous one the earlier)."""
    dtype = s.dtype
    if dtype == pl.Date:
        s, dtype = s.cast(pl.Datetime("ms")), pl.Datetime("ms")
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        s = s.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    return s.dt.convert_time_zone("UTC").cast(pl.Datetime("ms", "UTC"))


def _timestamp(s: pl.Series, t: TableMapping) -> pl.Series:
    if s.dtype in (pl.Date,) or isinstance(s.dtype, pl.Datetime):
        return _utc(s, t.timezone)
    if t.ts_format in ("unix_s", "unix_ms"):
        scale = 1000.0 if t.ts_format == "unix_s" else 1.0
        ms = (_float(s) * scale).round(0).cast(pl.Int64, strict=False)
        return pl.from_epoch(ms, time_unit="ms").dt.replace_time_zone("UTC")
    text = _text(s).str.strip_chars()
    if t.ts_format != "iso":
        parsed = text.str.to_datetime(t.ts_format, strict=False, time_unit="ms")
        return _utc(parsed, t.timezone)
    text = text.str.replace(r"[zZ]$", "+00:00")
    aware = [text.str.to_datetime(f, strict=False, time_unit="ms") for f in _ISO_AWARE]
    naive = [text.str.to_datetime(f, strict=False, time_unit="ms") for f in _ISO_NAIVE]
    date = text.str.to_date(_ISO_DATE, strict=False)
    found = [_utc(x, t.timezone) for x in (*aware, *naive, date)]
    return pl.select(pl.coalesce(found)).to_series()


def _tags(s: pl.Series, t: TableMapping) -> pl.Series:
    if isinstance(s.dtype, pl.List):
        return s.cast(pl.List(pl.String), strict=False)
    return (
        _text(s)
        .str.split(t.list_separator)
        .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
    )


def _parse(s: pl.Series, field: pa.Field, t: TableMapping) -> tuple[pl.Series, str]:
    """(the column as its contract value, the phrase for a cell that does not parse)."""
    kind = field.type
    if field.name in ID_COLUMNS:  # `write` turns source ids into int64
        if s.dtype.is_float():
            return _integer(s).cast(pl.String), "is not an id"
        return _text(s), "is not an id"
    if pa.types.is_timestamp(kind):
        what = "a strftime" if t.ts_format not in TS_FORMATS else "an"
        return _timestamp(s, t), f"is not {what} {t.ts_format} timestamp"
    if pa.types.is_boolean(kind):
        return _boolean(s, t), "is not a known boolean (true_values, false_values)"
    if pa.types.is_integer(kind):
        return _integer(s), "is not an integer"
    if pa.types.is_floating(kind):
        return _float(s), "is not a number"
    if pa.types.is_list(kind):
        return _tags(s, t), "is not a list of text"
    if s.dtype == pl.Binary:  # text: the contract's check reports bytes that are not UTF-8
        return s, "is not text"
    return _text(s), "is not text"


def _constant(name: str, table: str, value: object, t: TableMapping) -> pl.Series:
    field = SCHEMAS[table].field(name)
    s = pl.Series(name, [value])
    parsed, phrase = _parse(s, field, t)
    if parsed.null_count():
        raise IngestError(f"tables.{table}.constants.{name}: {value!r} {phrase}")
    return parsed


def _table(
    name: str, df: pl.DataFrame, t: TableMapping, path: Path, src: Path, mapping_path: Path
) -> tuple[pl.DataFrame, list[tuple[str, str, str, str]]]:
    """One contract table from its source frame, and the rows that did not parse."""
    missing = [(k, v) for k, v in t.columns.items() if v not in df.columns]
    if missing:
        key, column = missing[0]
        raise IngestError(
            f"{path}: no column {column!r} (mapping {mapping_path}: tables.{name}.columns.{key};"
            f" found: {', '.join(df.columns) or 'none'})"
        )
    out: dict[str, pl.Series] = {}
    bad: list[pl.Series] = []
    for field in SCHEMAS[name]:
        if field.name in t.columns:
            source = t.columns[field.name]
            parsed, phrase = _parse(df[source], field, t)
            failed = parsed.is_null() & df[source].is_not_null()
            reason = f"{field.name} ({source}) {phrase}"
            bad.append(pl.select(pl.when(failed).then(pl.lit(reason))).to_series())
            out[field.name] = parsed.alias(field.name)
        elif field.name in t.constants:
            value = _constant(field.name, name, t.constants[field.name], t)
            out[field.name] = value.new_from_index(0, df.height).alias(field.name)
        elif field.name not in _CONTRACT_DEFAULTED.get(name, ()):
            out[field.name] = pl.from_arrow(pa.nulls(df.height, field.type)).alias(field.name)
    table = pl.DataFrame(list(out.values())) if out else pl.DataFrame()
    reasons = (
        pl.select(pl.concat_str(bad, separator="; ", ignore_nulls=True)).to_series()
        if bad
        else pl.Series([None] * df.height, dtype=pl.String)
    )
    is_bad = reasons.is_not_null() & (reasons != "")
    rows: list[tuple[str, str, str, str]] = []
    where = src.name if path == src else str(path.relative_to(src))
    places = pl.select(  # file:row, the data row's number: valid, quarantined and unreadable
        pl.format(f"{where}:{{}}", pl.int_range(1, df.height + 1, dtype=pl.Int64))
    ).to_series()
    table = table.with_columns(places.alias(WHERE))
    if is_bad.any():
        raw = df.filter(is_bad).select(pl.all().map_batches(_text))
        for place, reason, cells in zip(
            places.filter(is_bad).to_list(),
            reasons.filter(is_bad).to_list(),
            raw.iter_rows(named=True),
            strict=True,
        ):
            rows.append((name, place, reason, json.dumps(cells, ensure_ascii=False)))
    return table.filter(~is_bad), rows


def read(src: Path, options: IngestOptions) -> Imported:
    """The tables a mapping (options.mapping) names, read from SRC (a folder, or the one file
    when the mapping names one table)."""
    if options.mapping is None:
        raise IngestError("format mapped needs --mapping FILE (docs/ingest.md describes it)")
    mapping_path = Path(options.mapping)
    mapping = load_mapping(mapping_path)
    src = Path(src)
    if src.is_file() and len(mapping.tables) != 1:
        raise IngestError(
            f"{src} is a file but {mapping_path} maps {len(mapping.tables)} tables"
            f" ({', '.join(mapping.tables)}): give their folder as SRC"
        )
    tables: dict[str, pl.DataFrame] = {}
    unreadable: list[tuple[str, str, str, str]] = []
    notes: dict = {"mapping": str(mapping_path), "files": {}, "unmapped_columns": {}}
    for name, t in mapping.tables.items():
        if src.is_file():
            path = src
            if Path(src).suffix.lower() not in SUFFIXES:
                raise IngestError(f"{src}: not a {', '.join(SUFFIXES)} file")
        elif t.file is None:
            raise IngestError(f"{mapping_path}: tables.{name}.file: needed when SRC is a folder")
        else:
            path = src / t.file
            if not path.is_file():
                raise IngestError(
                    f"{path}: no such file (mapping {mapping_path}: tables.{name}.file)"
                )
        df = _read_source(path, t, options.encoding)
        tables[name], rows = _table(name, df, t, path, src, mapping_path)
        unreadable += rows
        notes["files"][name] = path.name if path == src else str(path.relative_to(src))
        unused = sorted(set(df.columns) - set(t.columns.values()))
        if unused:
            notes["unmapped_columns"][name] = unused
    return Imported(
        format=FORMAT,
        source=str(src),
        tables=tables,
        unreadable=unreadable_rows(unreadable),
        notes=notes,
        encoding=options.encoding,
    )
