"""The whole chain from the command line on a tiny world: simulate, mine, train, index, serve,
evaluate. Each step is the installed `crops` console script in its own process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crops.serve.process import ServerProcess
from crops.world.online import HttpRetriever


def crops(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("crops") or str(Path(sys.executable).with_name("crops"))
    done = subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"crops {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_simulate_mine_train_index_serve_evaluate(tmp_path):
    world, mined, model, index = (tmp_path / n for n in ("world", "mined", "model", "index"))
    crops("simulate", "--scale", "tiny", "--seed", "3", "--out", world)
    # synthesis by the real local LLM (llama.cpp, SmolLM2-135M), a few queries to stay short
    crops(
        "mine",
        "--world",
        world,
        "--out",
        mined,
        "--filter-model",
        "none",
        "--synth-max-queries",
        "4",
        "--synth-per-query",
        "1",
    )
    crops(
        "train",
        "--samples",
        mined / "samples.parquet",
        "--videos",
        world / "videos.parquet",
        "--out",
        model,
        "--max-steps",
        "300",
        "--eval-every",
        "50",
    )
    crops(
        "index",
        "--model",
        model,
        "--videos",
        world / "videos.parquet",
        "--out",
        index,
        "--factory",
        "HNSW32",
    )
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["factory"] == "HNSW32" and manifest["count"] > 0

    exact = tmp_path / "exact.json"
    via_index = tmp_path / "index.json"
    bm25 = tmp_path / "bm25.json"
    crops("evaluate", "--world", world, "--model", model, "--out", exact)
    crops("evaluate", "--world", world, "--model", model, "--index", index, "--out", via_index)
    crops("evaluate", "--world", world, "--method", "bm25", "--out", bm25)
    scores = {p.stem: json.loads(p.read_text())["metrics"] for p in (exact, via_index, bm25)}
    # HNSW is approximate, but on 1,500 videos it finds nearly what exact search finds
    for name in ("ct", "qr"):
        assert scores["index"][name]["R@100"] == pytest.approx(
            scores["exact"][name]["R@100"], abs=0.02
        )
    # a short training (at most 300 steps, the best of six evaluations) beats the lexical
    # baseline on click recall
    assert scores["exact"]["ct"]["R@100"] > scores["bm25"]["ct"]["R@100"]

    exe = shutil.which("crops") or str(Path(sys.executable).with_name("crops"))
    args = ["--model", model, "--index", index, "--port", "0"]
    with ServerProcess(args, tmp_path / "serve.log", timeout_s=120, exe=[exe]) as url:
        queries = (world / "tests" / "queries.tsv").read_text().splitlines()[:5]
        texts = [line.split("\t", 1)[1] for line in queries]
        retriever = HttpRetriever(url)
        answers = retriever(texts, 10)
        assert [len(a) for a in answers] == [10] * len(texts)
        assert retriever.stats.errors == 0, retriever.stats.last_error
        from crops.index.retriever import DenseRetriever

        assert answers == DenseRetriever.load(model, index)(texts, 10)
