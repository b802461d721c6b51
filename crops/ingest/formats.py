"""The importers `crops ingest` knows, and the options they share: one table, read by the CLI
(its FORMAT choices and help) and by :func:`run`.

Each format is a module with ``read(src: Path, options: IngestOptions) -> Imported``; it is
imported only when used, so `crops ingest --help` loads none of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from crops.ingest.split import HOLDOUT_SHARE
from crops.ingest.tables import Imported, check_out, write
from crops.ingest.text import IngestError

#: format name -> (module, one line of help)
FORMATS: dict[str, tuple[str, str]] = {
    "trec-session": (
        "crops.ingest.trec_session",
        "TREC Session Track XML: sessions, interactions, ranked results, clicks with dwell times",
    ),
    "kuaisar": (
        "crops.ingest.kuaisar",
        "KuaiSAR's folder of search and recommendation CSVs (its published schema)",
    ),
    "query-title": (
        "crops.ingest.query_title",
        "graded query-title pairs, JSON lines or TSV (e.g. QBQTC): a --trec-dir collection"
        " and judged training samples",
    ),
    "mapped": (
        "crops.ingest.mapped",
        "a platform's own CSV or Parquet tables, through a YAML column mapping (--mapping)",
    ),
}


class IngestOptions(BaseModel):
    """Settings every importer may read; each uses the ones that apply to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: str | None = Field(
        None, description="the source's text encoding (default UTF-8; e.g. gbk to convert)"
    )
    mapping: Path | None = Field(None, description="the YAML column mapping (format mapped)")
    holdout: float = Field(
        HOLDOUT_SHARE,
        ge=0.0,
        lt=1.0,
        description="query-title: share of queries held out for evaluation (by query, keyed)",
    )
    grades: str | None = Field(
        None,
        pattern=r"^0-[1-9][0-9]*$",
        description="query-title: the grade scale 0-N (default: 0 to the largest grade read)",
    )


def reader(fmt: str):
    """The `read` function of format `fmt`; an unknown name is an IngestError listing them."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[fmt][0]).read


def run(fmt: str, src: Path, out: Path, options: IngestOptions, *, force: bool = False) -> dict:
    """Import SRC in format FMT into OUT; the manifest (OUT/ingest.json)."""
    read = reader(fmt)
    src = Path(src)
    if not src.exists():
        raise IngestError(f"{src}: no such file or folder")
    check_out(out, force=force)
    imported: Imported = read(src, options)
    return write(imported, out, force=force)
