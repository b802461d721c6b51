"""`crops simulate` and `crops validate`: the embedded default world, and the contracts' check
of any folder of tables."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crops.console import console
from crops.console import fail as _fail
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table
from crops.schema import MAX_QUARANTINE_SHARE


class ScaleName(StrEnum):
    tiny = "tiny"
    default = "default"
    large = "large"


def simulate(
    out: Annotated[Path, typer.Option(help="directory to write the world into")],
    scale: Annotated[ScaleName, typer.Option(help="world size")] = ScaleName.default,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 1,
) -> None:
    """Simulate a short-video platform with a filter bubble: logs, test sets, truth, summary."""
    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate as run

    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a directory")
    cfg = WorldConfig.for_scale(scale.value, seed=seed)
    with _progress_bar() as progress:
        meta = run(cfg, out, progress)
    console.print(f"[bold]world written to {out}[/] (scale {scale.value}, seed {seed})")
    console.print(_summary_table(meta["counts"], "counts"))
    console.print(_summary_table(meta["summary"], "filter bubble (production system)"))


def report_table(reports: list[dict], title: str) -> Table:
    """Rows, valid, quarantined and reasons per table (TableReport.as_dict()s): the one view
    of a validation, for `crops validate` and `crops ingest`."""
    table = Table(title=title, header_style="bold")
    for col in ("table", "rows", "valid", "quarantined", "reasons"):
        table.add_column(
            col, justify="right" if col in ("rows", "valid", "quarantined") else "left"
        )
    for d in reports:
        reasons = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items()) or "-"
        table.add_row(d["table"], str(d["rows"]), str(d["valid"]), str(d["quarantined"]), reasons)
    return table


def validate(
    directory: Annotated[Path, typer.Argument(help="a directory of contract tables")],
    max_quarantine_share: Annotated[
        float, typer.Option(help="exit 1 when more than this share of a table's rows is bad")
    ] = MAX_QUARANTINE_SHARE,
    out: Annotated[
        Path | None,
        typer.Option(
            help="folder for the quarantined rows and report.json (default DIR/_quarantine);"
            " DIR itself is then never written, so read-only data validates in place"
        ),
    ] = None,
) -> None:
    """Check tables against the contracts; quarantine bad rows (to DIR/_quarantine/ or --out).

    Exit status: 0 valid, 1 too many rows quarantined, 2 a file-level error.
    """
    from crops.schema import SchemaError, validate_dir, worst_share

    try:
        reports = validate_dir(directory, out)
    except SchemaError as exc:
        _fail(str(exc))
        return
    worst = worst_share(reports)
    console.print(report_table([r.as_dict() for r in reports], f"validation of {directory}"))
    if any(r.quarantined for r in reports):
        console.print(f"quarantined rows written to {out or directory / '_quarantine'}")
    world = directory / "world.json"
    if world.exists():
        summary = json.loads(world.read_text()).get("summary", {})
        console.print(_summary_table(summary, "world summary"))
    if worst > max_quarantine_share:
        _fail(
            f"{worst:.2%} of a table's rows quarantined (limit {max_quarantine_share:.2%})", code=1
        )
