"""The command line's shared output and option handling (rich consoles, errors, progress).

One home for how every `crops` command reports: results on stdout, errors and progress on
stderr, a bad option as exit code 2 naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` on stderr and exit with `code` (2: bad input)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def options(model, **values):
    """Build a pydantic settings model from CLI options; a bad value exits 2 naming it."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or model.__name__
        fail(f"bad option {where}: {first['msg']}")


def given(**values: Any) -> dict[str, Any]:
    """The options given: one left out (None) is dropped, so the config it fills applies its
    own default (for configs too slow to import at start-up for `defaults`)."""
    return {k: v for k, v in values.items() if v is not None}


def defaults(model) -> SimpleNamespace:
    """A pydantic config's field defaults as attributes (`defaults(TrainConfig).seed`).

    CLI options take their defaults from the configs they fill, so a default has one home and
    `--help` shows the value the config would use."""
    return SimpleNamespace(
        **{
            name: f.get_default(call_default_factory=True)
            for name, f in model.model_fields.items()
            if not f.is_required()
        }
    )


def summary_table(summary: dict, title: str) -> Table:
    """A two-column table (measure, value) of a summary dict."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (when it is a terminal): yields progress(task, done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=not err.is_terminal) as bar:

        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield progress
