"""`crops evaluate --model hf:<name>`: a pretrained encoder evaluated zero-shot, untrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCS = {
    "d1": "fresh strawberries and whipped cream: a summer dessert recipe",
    "d2": "how to repair a flat bicycle tyre at the roadside",
    "d3": "python programming tutorial for complete beginners",
    "d4": "the rise and fall of the roman empire, a history",
    "d5": "training a puppy to sit, stay and come when called",
    "d6": "growing tomatoes on a small city balcony",
}
QUERIES = {  # each shares words with its one relevant doc, and with no other
    "q1": "strawberry dessert recipe",
    "q2": "repair bicycle tyre",
    "q3": "python programming for beginners",
    "q4": "history of the roman empire",
    "q5": "puppy training sit and stay",
    "q6": "tomatoes on a balcony",
}


@pytest.fixture
def small_trec(tmp_path: Path) -> Path:
    folder = tmp_path / "trec"
    folder.mkdir()
    (folder / "docs.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in DOCS.items()))
    (folder / "small.queries").write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()))
    (folder / "small.qrels").write_text(
        "".join(f"q{i}\t0\td{i}\t1\n" for i in range(1, len(QUERIES) + 1))
    )
    return folder


@pytest.mark.slow  # loads MiniLM: about 12 s
def test_hf_encoder_evaluates_zero_shot(run, small_trec, tmp_path):
    out = tmp_path / "metrics.json"
    code, stdout, err = run(
        "evaluate",
        "--trec-dir",
        small_trec,
        "--model",
        "hf:minilm",
        "--measure",
        "RR@10",
        "--out",
        out,
    )
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert saved["retriever"] == "zero-shot hf:minilm (untrained)"
    assert "zero-shot hf:minilm" in stdout
    assert saved["queries_run"] == len(QUERIES)
    # every query ranks its relevant doc first: reciprocal rank 1 for all of them
    assert saved["metrics"]["small"]["RR@10"] == pytest.approx(1.0)


def test_hash_is_refused_zero_shot(run, small_trec):
    code, _, err = run("evaluate", "--trec-dir", small_trec, "--model", "hash")
    assert code == 2
    assert "--model hash" in err and "untrained hash encoder" in err


@pytest.mark.parametrize("kind", ["missing", "plain folder"])
def test_neither_model_folder_nor_encoder_name(run, small_trec, tmp_path, kind):
    target = tmp_path / "not-a-model"
    if kind == "plain folder":
        target.mkdir()
    code, _, err = run("evaluate", "--trec-dir", small_trec, "--model", target)
    assert code == 2
    assert f"--model {target}: not a CroPS model folder" in err
    assert "nor an encoder name" in err
    assert ("hf:PATH" in err) == (kind == "plain folder")
