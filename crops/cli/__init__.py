"""`crops ...`: the command line (typer + rich), one module per command group.

Each module is thin over the library: it parses options into the library's pydantic configs
(whose defaults are the options' defaults), calls one library function and renders the result.

| module | commands |
|---|---|
| `world` | `crops simulate`, `crops validate` |
| `ingest` | `crops ingest` |
| `mine` | `crops mine` |
| `train` | `crops train` |
| `index` | `crops index` |
| `serve` | `crops serve`, `crops logsink` |
| `evaluate` | `crops evaluate`, `crops experiment` |
| `pipeline` | `crops pipeline compile`, `run`, `submit` |
| `abtest` | `crops abtest`, `analyze`, `status` |
"""

from __future__ import annotations

import sys

from crops.cli import evaluate, index, ingest, mine, serve, train, world
from crops.cli.abtest import abtest_app
from crops.cli.app import app
from crops.cli.pipeline import pipeline_app

# in the order a run goes through them (`crops --help` lists them so)
for _command in (
    world.simulate,
    world.validate,
    ingest.ingest,
    mine.mine,
    train.train,
    evaluate.evaluate,
    evaluate.experiment,
    serve.serve,
    serve.logsink,
):
    app.command()(_command)
app.command("index")(index.index_command)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(abtest_app, name="abtest")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
