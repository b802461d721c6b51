"""Run `RetrievalModel` behind KServe's own REST app on a socket we bind ourselves.

Why not ``kserve.ModelServer(...).start()``: in kserve 0.21 it always listens on 0.0.0.0 (the
host is fixed in ``RESTServer``) and, when the port is taken, uvicorn logs an error and the
process exits without a clear message. So the port is bound here first, on the host asked for
(an address in use becomes `PortInUse`), and held while the model loads; then kserve's app is
built by kserve's ``RESTServer.create_application()`` (the same v1/v2 routes, exception
handlers and middleware as ``ModelServer``) and run by uvicorn with kserve's uvicorn config on
that socket. With ``workers > 1``, spawned processes each load the model and serve the shared
socket (the kernel spreads connections), as kserve's own multi-process server does.
"""

from __future__ import annotations

import errno
import http.client
import logging
import multiprocessing
import signal
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from crops.serve.request_parsing import Limits


class ServeError(RuntimeError):
    """A clear, user-facing reason the server cannot start."""


class PortInUse(ServeError):
    pass


@dataclass(frozen=True)
class ServeSpec:
    """Everything a (worker) process needs to build and serve the model; picklable."""

    model_dir: Path
    index_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    name: str = "crops"
    limits: Limits = Limits()
    threads: int = 1
    access_log: bool = False
    request_log: Path | None = None  # a folder: one Parquet row per query answered
    request_log_queue: int = 10_000  # finished requests waiting for the writer thread
    request_log_flush_rows: int = 1_000
    request_log_flush_s: float = 5.0


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` the way uvicorn would (SO_REUSEADDR), or say why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def set_threads(threads: int) -> None:
    """Pin torch and FAISS (OpenMP) thread pools: one-query requests gain nothing from more
    threads, and idle OpenMP threads spin on cores other requests need."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def load_model(spec: ServeSpec):
    """A loaded `RetrievalModel` (raises FileNotFoundError / ValueError on bad folders)."""
    from crops.serve.predictor import RetrievalModel

    set_threads(spec.threads)
    model = RetrievalModel(spec.model_dir, spec.index_dir, name=spec.name, limits=spec.limits)
    model.load()
    return model


def _quiet_invalid_input(app) -> None:
    """Answer InvalidInput with 400 and one log line: kserve's handler logs a full traceback
    for every bad request, which costs time and buries real errors."""
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput
    from kserve.logging import logger

    async def handler(_request, exc: InvalidInput) -> JSONResponse:
        logger.info("invalid input: %s", exc)
        return JSONResponse(status_code=400, content={"error": str(exc)})

    app.add_exception_handler(InvalidInput, handler)


def run_worker(spec: ServeSpec, sock: socket.socket, model=None) -> None:
    """Serve ``model`` (loaded here when None) on ``sock`` until SIGINT/SIGTERM."""
    import uvicorn
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    if model is None:
        model = load_model(spec)
    server = ModelServer(
        http_port=spec.port, enable_grpc=False, workers=1, enable_latency_logging=False
    )
    server.register_model(model)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # kserve's use
    if not spec.access_log:  # uvicorn logs a request when its access logger has handlers
        access = logging.getLogger("uvicorn.access")
        access.handlers, access.propagate = [], False
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # per-request timings
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, spec.port
    )
    rest.config.host = spec.host  # for uvicorn's log line; the socket is already bound
    rest.create_application()
    _quiet_invalid_input(app)
    log = _add_request_ids(app, spec, model)
    if log is None:
        uvicorn.Server(rest.config).run(sockets=[sock])
        return
    # uvicorn re-raises SIGINT/SIGTERM once it has shut down, which with the default handlers
    # ends the process at once: note the signal instead, write the log, then re-raise it
    caught: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, lambda signum, _frame: caught.append(signum))
    try:
        uvicorn.Server(rest.config).run(sockets=[sock])
    finally:
        log.close()  # uvicorn has finished its requests: write every queued row
        for s, h in previous.items():
            signal.signal(s, h)
    if caught:
        signal.raise_signal(caught[0])


def _add_request_ids(app, spec: ServeSpec, model):
    """Request id and model hash headers on every answer; the request log when asked for.
    The middleware is added last, so it is the outermost: it sees the final status."""
    from crops.serve.reqlog import RequestLog, RequestLogMiddleware

    log = None
    if spec.request_log is not None:
        log = RequestLog(
            spec.request_log,
            model.model_hash,
            max_queue=spec.request_log_queue,
            flush_rows=spec.request_log_flush_rows,
            flush_s=spec.request_log_flush_s,
        )
    app.add_middleware(RequestLogMiddleware, model_hash=model.model_hash, log=log)
    return log


def _worker_main(spec: ServeSpec, sock: socket.socket) -> None:
    from crops.serve import _import_kserve

    _import_kserve()
    run_worker(spec, sock)


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard host is reached on loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def wait_ready(url: str, timeout_s: float = 120.0, stop: threading.Event | None = None) -> bool:
    """Poll ``GET /v2/health/ready`` until it answers 200 (http.client: no proxy settings)."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=1)
        try:
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    return False


def serve(spec: ServeSpec, workers: int = 1, on_ready: Callable[[str], None] | None = None) -> None:
    """Bind, load, serve; ``on_ready(url)`` once the endpoint answers. Blocks until stopped.

    Raises `ServeError` (port in use, bad host, a model or index that does not load) before
    anything listens.
    """
    sock = bind_socket(spec.host, spec.port)
    try:
        spec = replace(spec, port=sock.getsockname()[1])  # port 0: the one the kernel chose
        try:  # in the parent too: bad folders fail here, before anything listens
            model = load_model(spec)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ServeError(f"cannot load the model and index: {exc}") from exc
        url = local_url(spec.host, spec.port)
        stop = threading.Event()
        if on_ready is not None:

            def announce() -> None:
                if wait_ready(url, stop=stop):
                    on_ready(url)

            threading.Thread(target=announce, daemon=True).start()
        try:
            if workers <= 1:
                run_worker(spec, sock, model)
            else:
                del model
                _serve_processes(spec, sock, workers)
        finally:
            stop.set()
    finally:
        sock.close()


def _serve_processes(spec: ServeSpec, sock: socket.socket, workers: int) -> None:
    """Spawn ``workers`` processes on the shared socket; stop them all on SIGINT/SIGTERM or
    when any one exits."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(spec, sock)) for _ in range(workers)]
    for p in procs:
        p.start()
    done = threading.Event()

    def on_signal(signum, _frame) -> None:
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.is_set() and all(p.is_alive() for p in procs):
            done.wait(0.5)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        for s, h in previous.items():
            signal.signal(s, h)
