"""`crops ...`: the command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="crops",
    help="Train and ship CroPS dense retrievers for short-video search.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


class ScaleName(StrEnum):
    tiny = "tiny"
    default = "default"
    large = "large"


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="directory to write the world into")],
    scale: Annotated[ScaleName, typer.Option(help="world size")] = ScaleName.default,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 1,
) -> None:
    """Simulate a short-video platform with a filter bubble: logs, test sets, truth, summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate as run

    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a directory")
    cfg = WorldConfig.for_scale(scale.value, seed=seed)
    tasks: dict[str, int] = {}
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:

        def progress(task: str, advance: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], advance=advance, total=total)

        meta = run(cfg, out, progress)
    console.print(f"[bold]world written to {out}[/] (scale {scale.value}, seed {seed})")
    console.print(_summary_table(meta["counts"], "counts"))
    console.print(_summary_table(meta["summary"], "filter bubble (production system)"))


@app.command()
def validate(
    directory: Annotated[Path, typer.Argument(help="a directory of contract tables")],
    max_quarantine_share: Annotated[
        float, typer.Option(help="exit 1 when more than this share of a table's rows is bad")
    ] = 0.01,
) -> None:
    """Check tables against the contracts; quarantine bad rows to DIR/_quarantine/.

    Exit status: 0 valid, 1 too many rows quarantined, 2 a file-level error.
    """
    from crops.schema import SchemaError, validate_dir

    try:
        reports = validate_dir(directory)
    except SchemaError as exc:
        _fail(str(exc))
        return
    table = Table(title=f"validation of {directory}", header_style="bold")
    for col in ("table", "rows", "valid", "quarantined", "reasons"):
        table.add_column(
            col, justify="right" if col in ("rows", "valid", "quarantined") else "left"
        )
    worst = 0.0
    for r in reports:
        d = r.as_dict()
        reasons = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items()) or "-"
        table.add_row(r.table, str(d["rows"]), str(d["valid"]), str(d["quarantined"]), reasons)
        worst = max(worst, r.quarantined / r.rows if r.rows else 0.0)
    console.print(table)
    if any(r.quarantined for r in reports):
        console.print(f"quarantined rows written to {directory / '_quarantine'}")
    world = directory / "world.json"
    if world.exists():
        summary = json.loads(world.read_text()).get("summary", {})
        console.print(_summary_table(summary, "world summary"))
    if worst > max_quarantine_share:
        _fail(
            f"{worst:.2%} of a table's rows quarantined (limit {max_quarantine_share:.2%})", code=1
        )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
