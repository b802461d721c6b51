"""`crops ingest FORMAT SRC --out DIR`: a platform's real logs or a graded collection into the
contract tables, validated and quarantined as `crops validate` does."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crops.cli.world import report_table
from crops.console import console, defaults
from crops.console import fail as _fail
from crops.console import options as _options
from crops.ingest.formats import FORMATS, IngestOptions
from crops.schema import MAX_QUARANTINE_SHARE

#: the options' help and defaults are IngestOptions' (their one home)
HELP = {name: f.description for name, f in IngestOptions.model_fields.items()}
D = defaults(IngestOptions)
FORMAT_HELP = "; ".join(f"{name}: {text}" for name, (_, text) in FORMATS.items())


def ingest(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=FORMAT_HELP)],
    src: Annotated[Path, typer.Argument(help="the source file or folder")],
    out: Annotated[Path, typer.Option(help="an empty folder for the contract tables")],
    encoding: Annotated[str | None, typer.Option(help=HELP["encoding"])] = D.encoding,
    mapping: Annotated[Path | None, typer.Option(help=HELP["mapping"])] = D.mapping,
    holdout: Annotated[float, typer.Option(help=HELP["holdout"])] = D.holdout,
    grades: Annotated[str | None, typer.Option(help=HELP["grades"])] = D.grades,
    force: Annotated[bool, typer.Option(help="write into a folder that is not empty")] = False,
    max_quarantine_share: Annotated[
        float,
        typer.Option(
            help="exit 1 when more than this share of a table's rows is quarantined, or of all"
            " rows read is unreadable (excluded rows aside)"
        ),
    ] = MAX_QUARANTINE_SHARE,
) -> None:
    """Import real logs or a graded collection (FORMAT) as contract tables in OUT.

    Writes OUT/<table>.parquet, OUT/ids.parquet (source id -> int64), OUT/_quarantine/ (bad
    rows with reasons, unreadable source rows, rows outside the contracts by design),
    OUT/collection/ for graded collections and
    OUT/ingest.json. Exit status: 0 imported, 1 too many rows quarantined, 2 an error.
    """
    from crops.ingest.formats import run
    from crops.ingest.ids import IdCollision
    from crops.ingest.text import IngestError
    from crops.schema import SchemaError

    options = _options(
        IngestOptions, encoding=encoding, mapping=mapping, holdout=holdout, grades=grades
    )
    try:
        manifest = run(fmt, src, out, options, force=force)
    except (IngestError, SchemaError, IdCollision) as exc:
        _fail(str(exc))
        return
    reports = list(manifest["tables"].values())
    console.print(report_table(reports, f"{fmt} import of {src} into {out}"))
    for kind, what in (
        ("unreadable", "unreadable source rows"),
        ("excluded", "excluded source rows (outside the contracts, not counted as bad)"),
    ):
        counted = manifest[kind]
        if counted["rows"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in counted["reasons"].items())
            console.print(f"{what}: {counted['rows']} ({reasons})")
    if "collection" in manifest:
        c = manifest["collection"]
        console.print(
            f"collection: {c['docs']:,} docs, {c['queries']:,} queries, {c['judgements']:,}"
            f" judgements in {out / c['path']} (crops evaluate --trec-dir)"
        )
    console.print(f"ids mapped: {manifest['ids']}; quarantine in {out / '_quarantine'}")
    worst = manifest["worst_share"]
    if worst > max_quarantine_share:
        console.print(
            f"[bold red]{worst:.1%} of a table's rows were quarantined or unreadable[/]"
            f" (over --max-quarantine-share {max_quarantine_share:.1%})"
        )
        raise typer.Exit(1)
