"""`crops serve` and `crops logsink`: the KServe retrieval endpoint, and the sink that lands
KServe's payload logs as request-log Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crops.console import console, given
from crops.console import fail as _fail
from crops.console import options as _options


def serve(
    model: Annotated[Path, typer.Option(help="MODEL_DIR from `crops train`")],
    index: Annotated[Path, typer.Option(help="INDEX_DIR built from that model (`crops index`)")],
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8080,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: all)")] = "127.0.0.1",
    name: Annotated[str, typer.Option(help="model name in the URL: /v1/models/NAME:predict")] = (
        "crops"
    ),
    max_top_k: Annotated[
        int | None,
        typer.Option(help="refuse larger top_k (HTTP 400); default: Limits'"),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(help="refuse more queries per request; default: Limits'"),
    ] = None,
    workers: Annotated[int, typer.Option(help="server processes sharing the port")] = 1,
    threads: Annotated[int, typer.Option(help="torch and FAISS threads per process")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    request_log: Annotated[
        Path | None,
        typer.Option(help="append one Parquet row per query to DIR/day=YYYY-MM-DD/ (off: none)"),
    ] = None,
    request_log_queue: Annotated[
        int, typer.Option(help="requests waiting for the log writer; beyond: dropped, counted")
    ] = 10_000,
) -> None:
    """Serve the retriever over KServe's v1 and v2 (open inference) REST protocols."""
    from crops.serve.request_parsing import Limits

    # options left out keep Limits' defaults (their one home; importing it loads kserve)
    limits = _options(Limits, **given(max_top_k=max_top_k, max_batch=max_batch))
    if not 0 <= port <= 65535:
        _fail(f"--port {port}: must be between 0 and 65535")
    if workers < 1 or threads < 1:
        _fail("--workers and --threads must be at least 1")
    if request_log_queue < 1:
        _fail("--request-log-queue must be at least 1")
    if request_log is not None and request_log.exists() and not request_log.is_dir():
        _fail(f"--request-log {request_log}: not a directory")
    for path, what in ((model, "--model"), (index, "--index")):
        if not path.is_dir():
            _fail(f"{what} {path}: not a directory")
    from crops.serve.server import ServeError, ServeSpec
    from crops.serve.server import serve as run

    spec = ServeSpec(
        model_dir=model,
        index_dir=index,
        host=host,
        port=port,
        name=name,
        limits=limits,
        threads=threads,
        access_log=access_log,
        request_log=request_log,
        request_log_queue=request_log_queue,
    )

    def ready(url: str) -> None:
        console.print(
            f"[bold]serving {name} at {url}[/]: POST {url}/v1/models/{name}:predict"
            f" (v1), {url}/v2/models/{name}/infer (v2); Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )

    try:
        run(spec, workers=workers, on_ready=ready)
    except ServeError as exc:
        _fail(str(exc))


def logsink(
    out: Annotated[
        Path, typer.Option(help="request_log folder to write (LOGS/request_log): day=D/*.parquet")
    ],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: all)")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8080,
    pair_timeout_s: Annotated[
        float, typer.Option(help="a request without its response after this is logged as 504")
    ] = 30.0,
    model_hash: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=HASH (repeat): the model hash of a predictor; KEY is its ce-component, "
            "ce-endpoint, component/endpoint or a pod-name prefix (ce-source)"
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="refuse larger events (HTTP 413)")] = 1 << 20,
) -> None:
    """Land KServe's payload logs (CloudEvents, `logger.url`) as request_log Parquet files."""
    import logging

    from crops.serve.logsink import parse_model_hashes, serve_logsink
    from crops.serve.server import ServeError

    if not 0 <= port <= 65535:
        _fail(f"--port {port}: must be between 0 and 65535")
    if not pair_timeout_s > 0:
        _fail(f"--pair-timeout-s {pair_timeout_s}: must be positive")
    if max_body_bytes < 1:
        _fail(f"--max-body-bytes {max_body_bytes}: must be at least 1")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: not a directory")
    try:
        hashes = parse_model_hashes(model_hash or [])
    except ValueError as exc:
        _fail(str(exc))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def ready(url: str) -> None:
        console.print(
            f"[bold]logsink at {url}[/]: POST CloudEvents to {url}/ (KServe logger.url);"
            f" writing {out}/day=YYYY-MM-DD/; Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )

    try:
        serve_logsink(
            out,
            host,
            port,
            pair_timeout_s=pair_timeout_s,
            model_hashes=hashes,
            max_body_bytes=max_body_bytes,
            on_ready=ready,
        )
    except ServeError as exc:
        _fail(str(exc))
