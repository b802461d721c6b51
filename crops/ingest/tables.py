"""What an importer hands over (:class:`Imported`) and how it lands on disk (:func:`write`).

Importers only parse their format. Everything after is here, the same for every format: source
ids become int64 (with ``ids.parquet``), the tables are conformed and row-checked exactly as
`crops validate` does (``crops.schema.check_tables``), valid rows go to ``<table>.parquet``,
bad rows with their reason (and source place, where the importer gives one) to
``_quarantine/``, rows the importer could not parse at all to ``_quarantine/unreadable.parquet``,
rows outside the contracts by design to ``_quarantine/excluded.parquet``, a graded collection
to ``collection/`` (a ``--trec-dir``), and ``ingest.json`` describes the import. Nothing read is
lost: every source row is in a table, in the quarantine, in the unreadable or in the excluded
rows, and the counts say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from crops.ingest.ids import ID_COLUMNS, IdTable
from crops.ingest.text import IngestError
from crops.schema import SCHEMAS, TableReport, check_tables, worst_share, write_quarantine

#: The rows an importer could not turn into any table row: where, why, and the raw text.
UNREADABLE_SCHEMA = {"table": pl.String, "where": pl.String, "reason": pl.String, "raw": pl.String}
COLLECTION_DIR = "collection"
MANIFEST = "ingest.json"
IDS = "ids.parquet"
UNREADABLE = "unreadable.parquet"
EXCLUDED = "excluded.parquet"
#: An imported table's optional column naming each row's place in the source (file:line or an
#: element path): not written with the valid rows, given to quarantined ones as `where`.
WHERE = "_where"
#: The contract tables an import may hold (videos required).
INGESTED = ("videos", "search_log", "rec_log", "samples")


def unreadable_rows(rows: list[tuple[str, str, str, str]] | None = None) -> pl.DataFrame:
    """(table, where, reason, raw) tuples as the unreadable-rows frame."""
    return pl.DataFrame(rows or [], schema=UNREADABLE_SCHEMA, orient="row")


@dataclass
class Collection:
    """A graded collection to write as a `--trec-dir` (docs.tsv, queries.tsv, judged.qrels: the
    names `crops.evaluate.collection.trec_collection` finds).

    Document and query ids are the source's; doc ids are mapped like video ids on writing, so
    the collection's docs are the videos table's rows.
    """

    docs: dict[str, str]
    queries: dict[str, str]
    qrels: list[tuple[str, str, int]]  # (query id, doc id, grade)


@dataclass
class Imported:
    """An importer's result: contract tables with the source's ids, plus what it could not read."""

    format: str
    source: str
    tables: dict[str, pl.DataFrame]
    unreadable: pl.DataFrame = field(default_factory=unreadable_rows)
    #: rows that read but lie outside the contracts by design (KuaiSAR's non-video results):
    #: kept and counted like unreadable rows, not counted as bad input
    excluded: pl.DataFrame = field(default_factory=unreadable_rows)
    collection: Collection | None = None
    notes: dict = field(default_factory=dict)
    encoding: str | None = None


def _tsv_cell(text: str) -> str:
    return " ".join(text.split())  # a tab or newline inside text would break the TSV


def _write_collection(c: Collection, doc_map: dict[str, int], out: Path) -> dict:
    folder = out / COLLECTION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{doc_map[d]}\t{_tsv_cell(t)}" for d, t in c.docs.items()]
    (folder / "docs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [f"{_tsv_cell(q)}\t{_tsv_cell(t)}" for q, t in c.queries.items()]
    (folder / "queries.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [f"{_tsv_cell(q)} 0 {doc_map[d]} {g}" for q, d, g in c.qrels]
    (folder / "judged.qrels").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"docs": len(c.docs), "queries": len(c.queries), "judgements": len(c.qrels)}


def _counted(rows: pl.DataFrame) -> dict:
    """{"rows": n, "reasons": {reason: n}} of an unreadable-rows frame."""
    reasons = rows.group_by("reason").len().sort("reason").iter_rows() if rows.height else []
    return {"rows": rows.height, "reasons": dict(reasons)}


def check_out(out: Path, *, force: bool = False) -> None:
    """OUT must be an empty or absent folder (or `force`): an import never mixes with an older
    one. Checked before reading the source too, so a long read does not end in this error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise IngestError(f"--out {out} is not empty: give an empty folder (or --force)")


def write(imported: Imported, out: Path, *, force: bool = False) -> dict:
    """Map ids, check and write an import into OUT; returns the manifest (also OUT/ingest.json).

    Everything that can fail (an unknown table, an id collision, a table the contract refuses)
    fails before OUT is written.
    """
    out = Path(out)
    check_out(out, force=force)
    if "videos" not in imported.tables:
        raise IngestError(f"the {imported.format} importer produced no videos table")
    unknown = sorted(set(imported.tables) - set(INGESTED))
    if unknown:
        raise IngestError(f"the {imported.format} importer produced unknown tables {unknown}")
    ids = IdTable()
    arrow: dict[str, tuple[pa.Table, str]] = {}
    wheres: dict[str, pl.Series] = {}
    for name, df in imported.tables.items():
        if WHERE in df.columns:
            wheres[name], df = df[WHERE], df.drop(WHERE)
        mapped = df.with_columns(
            ids.map(kind, df[col]) for col, kind in ID_COLUMNS.items() if col in df.columns
        )
        arrow[name] = (mapped.to_arrow(), f"{imported.source} ({name})")
    doc_map: dict[str, int] = {}
    if imported.collection is not None:
        doc_src = list(imported.collection.docs)
        doc_ids = ids.map("video", pl.Series("video_id", doc_src, pl.String)).to_list()
        doc_map = dict(zip(doc_src, doc_ids, strict=True))
    id_frame = ids.frame()  # an IdCollision here, before anything is written
    checked = check_tables(arrow)

    out.mkdir(parents=True, exist_ok=True)
    reports: list[TableReport] = []
    qdir = out / "_quarantine"
    for valid, quarantine, report in checked:
        # through the contract's Arrow schema, so the file's types are the contract's exactly
        pq.write_table(
            valid.to_arrow().cast(SCHEMAS[report.table]), out / f"{report.table}.parquet"
        )
        if report.table in wheres:  # `row` indexes the imported table: its source place
            where = wheres[report.table].gather(quarantine["row"])
            quarantine = quarantine.with_columns(where=where)
        write_quarantine(quarantine, out, report.table, into=qdir)
        reports.append(report)
    imported.unreadable.write_parquet(qdir / UNREADABLE)
    imported.excluded.write_parquet(qdir / EXCLUDED)
    manifest = {
        "format": imported.format,
        "source": imported.source,
        "encoding": imported.encoding or "utf-8",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tables": {r.table: r.as_dict() for r in reports},
        "unreadable": _counted(imported.unreadable),
        "excluded": _counted(imported.excluded),
        "worst_share": worst_share(reports, unreadable=imported.unreadable.height),
        "notes": imported.notes,
    }
    if imported.collection is not None:
        manifest["collection"] = {
            "path": COLLECTION_DIR,
            **_write_collection(imported.collection, doc_map, out),
        }
    id_frame.write_parquet(out / IDS)
    manifest["ids"] = dict(id_frame.group_by("kind").len().sort("kind").iter_rows())
    (qdir / "report.json").write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
