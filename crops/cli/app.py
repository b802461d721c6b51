"""The `crops` Typer application the command modules register on (`crops.cli`)."""

import typer

app = typer.Typer(
    name="crops",
    help="Train and ship CroPS dense retrievers for short-video search.",
    no_args_is_help=True,
    add_completion=False,
)
