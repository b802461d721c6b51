"""Where an A/B test's logs live and what their tables hold: one home for the layout.

A log prefix LOGS (a folder, or any `pyarrow.fs` URI such as ``s3://bucket/prefix``) holds,
each partitioned by the day the rows were written (``day=YYYY-MM-DD``, UTC):

- ``LOGS/search_log/day=D/*.parquet``: the app's interaction log, the ``search_log`` contract
  (`crops.schema.SEARCH_LOG`) plus an ``arm`` column (``control`` | ``treatment``) saying
  which arm served the request. The ``arm`` column may be left out when an assignment table
  is given.
- ``LOGS/assignment/*.parquet`` (optional): ``user_id -> arm`` (`ASSIGNMENT`), for apps that
  log the assignment once instead of per row.
- ``LOGS/request_log/day=D/*.parquet``: the endpoints' request logs, the ``request_log``
  contract (`crops.schema.REQUEST_LOG`); ``crops serve --request-log LOGS/request_log`` writes
  exactly this. Its ``request_id`` is the caller's ``x-request-id``: an app that sends its
  search_log request id (as a decimal string) links the two logs, which lets the analysis
  find each arm's model hash and measure the clock skew between them.

Partitions are by arrival, not event time: an event's own ``ts`` decides which look counts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from crops.schema import SEARCH_LOG

ARMS: tuple[str, str] = ("control", "treatment")
ARM = "arm"
SEARCH = "search_log"
REQUESTS = "request_log"
ASSIGNMENT = "assignment"
KINDS: tuple[str, ...] = (SEARCH, REQUESTS, ASSIGNMENT)

#: The search log as the A/B job reads it: the contract plus the serving arm.
SEARCH_WITH_ARM = SEARCH_LOG.append(pa.field(ARM, pa.string()))

#: The optional assignment table.
ASSIGNMENT_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False), pa.field(ARM, pa.string(), nullable=False)]
)

DAY = timedelta(days=1)


class LogsError(ValueError):
    """The log prefix is missing, empty or unreadable; the message names it."""


def partition(kind: str, day: date) -> str:
    """The relative folder of `kind`'s rows written on `day`: ``search_log/day=2026-01-05``."""
    if kind not in (SEARCH, REQUESTS):
        raise ValueError(f"{kind!r} is not partitioned by day")
    return f"{kind}/day={day.isoformat()}"


def day_start(day: date) -> datetime:
    """Midnight UTC starting `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def utc_day(ts: datetime) -> date:
    """The UTC calendar day of an aware timestamp."""
    return ts.astimezone(UTC).date()


@dataclass(frozen=True)
class LogFile:
    """One parquet file under the prefix: its kind, path relative to the prefix, size, mtime."""

    kind: str
    path: str  # relative to the prefix, "/"-separated
    size: int
    mtime_ns: int = 0  # with the size, what tells a rewritten file (`crops.abtest.digest`)


@dataclass(frozen=True)
class LogPrefix:
    """A resolved prefix: its filesystem, root path and the files found under it by kind."""

    uri: str
    fs: pafs.FileSystem
    root: str
    files: dict[str, list[LogFile]]

    def full(self, f: LogFile) -> str:
        return f"{self.root}/{f.path}"


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) of a folder or filesystem URI."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).absolute())
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogsError(f"--logs {text}: cannot open ({exc})") from exc
    return fs, path.rstrip("/")


def list_logs(uri: str | os.PathLike[str]) -> LogPrefix:
    """Every parquet file of the layout under `uri`; a missing or empty prefix is a LogsError.

    Files outside the layout (other folders, non-parquet names, hidden or temporary files such
    as ``.x.tmp``) are ignored; the sorted listing makes reads deterministic.
    """
    text = os.fspath(uri)
    fs, root = resolve(text)
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        raise LogsError(f"--logs {text}: cannot read ({exc})") from exc
    if info.type == pafs.FileType.NotFound:
        raise LogsError(f"--logs {text}: no such folder or prefix")
    if info.type != pafs.FileType.Directory:
        raise LogsError(f"--logs {text}: not a folder or prefix")
    files: dict[str, list[LogFile]] = {k: [] for k in KINDS}
    for kind in KINDS:
        sel = pafs.FileSelector(f"{root}/{kind}", recursive=True, allow_not_found=True)
        for fi in fs.get_file_info(sel):
            name = fi.base_name
            if fi.type != pafs.FileType.File or not name.endswith(".parquet"):
                continue
            if name.startswith((".", "_")):
                continue
            rel = fi.path[len(root) + 1 :]
            files[kind].append(LogFile(kind, rel, int(fi.size or 0), int(fi.mtime_ns or 0)))
        files[kind].sort(key=lambda f: f.path)
    if not files[SEARCH] and not files[REQUESTS]:
        raise LogsError(
            f"--logs {text}: empty, no {SEARCH}/day=*/*.parquet or {REQUESTS}/day=*/*.parquet "
            "files (see `crops.abtest.layout` for the layout)"
        )
    return LogPrefix(text, fs, root, files)


__all__ = [
    "ARM",
    "ARMS",
    "ASSIGNMENT",
    "ASSIGNMENT_SCHEMA",
    "DAY",
    "REQUESTS",
    "SEARCH",
    "SEARCH_WITH_ARM",
    "LogFile",
    "LogPrefix",
    "LogsError",
    "day_start",
    "list_logs",
    "partition",
    "resolve",
    "utc_day",
]
