"""Offline evaluation: collections, ir-measures scoring, the CLI, and the experiment's table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from fakes.fake_oracle_server import oracle

from crops.evaluate.collection import CollectionError, trec_collection, world_collection
from crops.evaluate.experiment import PAPER, goals, render_markdown
from crops.evaluate.offline import BM25Searcher, DenseSearcher, evaluate, headline
from crops.index.store import model_hash, write_index
from crops.model.convergence import StopRule
from crops.model.encoders import build_dual_encoder

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CROPS_SHARED", REPO.parent / "shared"))
NFCORPUS = SHARED / "data" / "nfcorpus-dev"


class FnSearcher:
    """A searcher from a function of (queries, k) -> [[doc id, ...]], scored by rank."""

    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name

    def search(self, queries, k):
        return [[(str(d), 1.0 / (r + 1)) for r, d in enumerate(row)] for row in self.fn(queries, k)]


def by_hand_recall(collection, searcher, name: str, k: int = 100) -> float:
    """Recall@k computed without ir-measures: mean over judged queries of found / relevant."""
    qrels = next(q for q in collection.qrels if q.name == name)
    values = []
    for qid, docs in qrels.judgements.items():
        relevant = {d for d, g in docs.items() if g > 0}
        hits = {d for d, _ in searcher.search([collection.queries[qid]], k)[0]}
        values.append(len(hits & relevant) / len(relevant))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def tiny_collection(tiny_dir):
    return world_collection(tiny_dir)


def test_world_collection_reads_every_judgement(tiny_dir, tiny_collection):
    for qrels in tiny_collection.qrels:
        lines = (tiny_dir / "tests" / f"{qrels.name}.qrels").read_text().splitlines()
        assert len(qrels) == len(lines) > 0
        assert qrels.unknown_docs == 0
    assert len(tiny_collection.doc_ids) == len(set(tiny_collection.doc_ids))
    assert set(tiny_collection.judged_queries()) <= set(tiny_collection.queries)


def test_bm25_recall_matches_a_count_by_hand(tiny_collection):
    bm25 = BM25Searcher(tiny_collection.doc_ids, tiny_collection.doc_texts)
    result = evaluate(tiny_collection, bm25)
    for name in ("ct", "qr"):
        assert result["metrics"][name]["R@100"] == pytest.approx(
            by_hand_recall(tiny_collection, bm25, name), abs=1e-9
        )
    assert set(headline(result)) == {"ct/R@100", "qr/R@100", "graded/nDCG@4"}
    assert result["queries_run"] == len(tiny_collection.judged_queries())


def test_the_oracle_beats_bm25_which_beats_random(tiny_world, tiny_collection):
    def random_ids(queries, k):
        rng = np.random.default_rng(0)
        return [rng.choice(tiny_world.videos.video_id, size=k, replace=False) for _ in queries]

    scores = {
        name: headline(evaluate(tiny_collection, s))
        for name, s in (
            ("oracle", FnSearcher(oracle(tiny_world), "oracle")),
            ("bm25", BM25Searcher(tiny_collection.doc_ids, tiny_collection.doc_texts)),
            ("random", FnSearcher(random_ids, "random")),
        )
    }
    nd = "graded/nDCG@4"
    assert scores["oracle"][nd] > scores["bm25"][nd] > scores["random"][nd]
    assert scores["oracle"][nd] > 0.95  # ranks by the very grades the set is judged with
    assert scores["bm25"]["ct/R@100"] > scores["random"]["ct/R@100"]


def test_a_query_with_no_hits_counts_as_a_miss(tiny_collection):
    result = evaluate(tiny_collection, FnSearcher(lambda qs, k: [[] for _ in qs], "nothing"))
    assert result["queries_with_no_hits"] == result["queries_run"]
    assert all(v == 0 for v in headline(result).values())


def test_exact_dense_search_equals_the_built_index(tmp_path, tiny_collection):
    model = build_dual_encoder("hash", seed=3)
    model.save(tmp_path / "model")
    exact = evaluate(
        tiny_collection,
        DenseSearcher.exact(model, tiny_collection.doc_ids, tiny_collection.doc_texts),
    )
    vectors = model.embed(tiny_collection.doc_texts, side="doc")
    index = faiss.IndexFlatIP(model.dim)
    index.add(vectors)
    ids = np.array([int(d) for d in tiny_collection.doc_ids])
    write_index(tmp_path / "index", index, ids, {"model_hash": model_hash(tmp_path / "model")})
    from crops.evaluate.offline import searcher_for

    built = evaluate(
        tiny_collection,
        searcher_for(tiny_collection, model=tmp_path / "model", index=tmp_path / "index"),
    )
    assert headline(built) == pytest.approx(headline(exact))


def test_nfcorpus_dev_split_with_bm25():
    assert NFCORPUS.is_dir(), f"NFCorpus dev split not found at {NFCORPUS} (set CROPS_SHARED)"
    c = trec_collection(NFCORPUS)
    lines = (NFCORPUS / "dev.docs").read_text(encoding="utf-8").split("\n")
    assert len(c.doc_ids) == sum(1 for line in lines if line.strip()) > 3000
    assert len(c.queries) == 325
    bm25 = BM25Searcher(c.doc_ids, c.doc_texts)
    result = evaluate(c, bm25)
    (name,) = result["metrics"]
    assert result["sets"][name]["queries"] == 325
    assert result["metrics"][name]["R@100"] == pytest.approx(by_hand_recall(c, bm25, name))
    # a lexical ranker is far above chance on a lexical collection (chance nDCG@10 ~ 0.01)
    assert result["metrics"][name]["nDCG@10"] > 0.2


def _copy_nfcorpus(tmp_path: Path) -> Path:
    target = tmp_path / "nf"
    shutil.copytree(NFCORPUS, target)
    for p in target.iterdir():
        p.chmod(0o644)
    return target


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        ("dev.docs", "MED-1 no tab here", "expected 'id<TAB>text'"),
        ("dev.titles.queries", "PLAIN-1\tagain", "appears twice"),
        ("dev.3-2-1.qrel", "PLAIN-1 0 MED-1", "4 fields"),
        ("dev.3-2-1.qrel", "PLAIN-1 0 MED-1 high", "not an integer"),
    ],
)
def test_malformed_trec_files_name_file_and_line(tmp_path, file, line, message):
    folder = _copy_nfcorpus(tmp_path)
    path = folder / file
    text = path.read_text(encoding="utf-8").rstrip("\n") + "\n"
    n = text.count("\n") + 1
    path.write_text(text + line + "\n", encoding="utf-8")
    with pytest.raises(CollectionError, match=message) as exc:
        trec_collection(folder)
    assert f"{file}:{n}" in str(exc.value)


def test_trec_folder_problems(tmp_path):
    with pytest.raises(CollectionError, match="is not a folder"):
        trec_collection(tmp_path / "absent")
    folder = _copy_nfcorpus(tmp_path)
    shutil.copy(folder / "dev.3-2-1.qrel", folder / "other.qrel")
    with pytest.raises(CollectionError, match="exactly one qrels file"):
        trec_collection(folder)
    c = trec_collection(folder, qrels=folder / "other.qrel")
    assert c.qrels[0].name == "other"
    with pytest.raises(CollectionError, match="not a simulated world"):
        world_collection(folder)


def test_cli_evaluate_world_and_trec(run, tmp_path, tiny_dir):
    code, out, err = run(
        "evaluate", "--world", tiny_dir, "--method", "bm25", "--out", tmp_path / "m.json"
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(headline(saved)) == {"ct/R@100", "qr/R@100", "graded/nDCG@4"}
    assert "ct/R@100" in out
    code, out, err = run(
        "evaluate",
        "--trec-dir",
        NFCORPUS,
        "--method",
        "bm25",
        "--out",
        tmp_path / "n.json",
        "--measure",
        "nDCG@10",
        "--measure",
        "R@1000",
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "n.json").read_text())
    assert saved["k"] == 1000  # R@1000 needs 1,000 hits
    assert set(next(iter(saved["metrics"].values()))) == {"nDCG@10", "R@1000"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "bm25"], "exactly one of --world or --trec-dir"),
        (["--world", "W", "--trec-dir", "T", "--method", "bm25"], "exactly one of --world"),
        (["--world", "W"], "exactly one of --model or --method"),
        (["--world", "W", "--method", "tfidf"], "built-in baseline is bm25"),
        (["--world", "W", "--method", "bm25", "--index", "I"], "--index goes with --model"),
        (["--trec-dir", "T", "--method", "bm25", "--measure", "bogus@"], "not an ir-measures"),
        (["--world", "W", "--method", "bm25", "--measure", "P@5"], "go with --trec-dir"),
    ],
)
def test_cli_evaluate_bad_options(run, tiny_dir, args, message):
    args = [str(NFCORPUS) if a == "T" else str(tiny_dir) if a == "W" else a for a in args]
    code, _, err = run("evaluate", *args)
    assert code == 2
    assert message in err


def test_cli_evaluate_bad_inputs(run, tmp_path):
    code, _, err = run("evaluate", "--world", tmp_path, "--method", "bm25")
    assert code == 2 and "not a simulated world" in err
    code, _, err = run("evaluate", "--trec-dir", NFCORPUS, "--model", tmp_path / "nope")
    assert code == 2 and "not a CroPS model folder" in err


def _fake_results(**ct_qr_nd):
    return {
        name: {"description": name, "metrics": {"ct/R@100": a, "qr/R@100": b, "graded/nDCG@4": c}}
        for name, (a, b, c) in ct_qr_nd.items()
    }


def test_goals_compare_against_the_best_baseline():
    results = _fake_results(
        BM25=(0.40, 0.20, 0.70),
        NCE=(0.50, 0.30, 0.66),
        **{"FS-LR": (0.60, 0.33, 0.65), "+reformulation": (0.62, 0.36, 0.65)},
        CroPS=(0.70, 0.40, 0.695),
    )
    g = goals(results)
    ct = g["CT R@100 vs best baseline"]
    assert ct["best_baseline"] == "FS-LR"
    assert ct["relative_gain"] == pytest.approx(0.70 / 0.60 - 1, abs=1e-4) and ct["met"]
    qr = g["QR R@100 vs best baseline"]
    assert qr["relative_gain"] == pytest.approx(0.40 / 0.33 - 1, abs=1e-4) and qr["met"]
    nd = g["NDCG@4 vs best baseline"]
    assert nd["best_baseline"] == "BM25" and nd["difference_points"] == pytest.approx(-0.5)
    assert nd["met"]
    assert g["ladder"]["met"]
    worse = _fake_results(**{"FS-LR": (0.60, 0.33, 0.65)}, CroPS=(0.65, 0.32, 0.60))
    g = goals(worse)
    assert not g["CT R@100 vs best baseline"]["met"]
    assert not g["QR R@100 vs best baseline"]["met"]
    assert not g["NDCG@4 vs best baseline"]["met"]
    assert not g["ladder"]["met"]


def test_results_markdown_puts_the_paper_beside_ours():
    results = _fake_results(BM25=(0.4, 0.2, 0.7), CroPS=(0.7, 0.4, 0.69))
    md = render_markdown(
        {
            "world": "w",
            "mined": "m",
            "config": {
                "encoder": "hash",
                "stop": StopRule().model_dump(),
                "queries_per_batch": 4,
                "group_size": 4,
            },
            "results": results,
            "goals": goals(results),
        }
    )
    row = next(line for line in md.splitlines() if line.startswith("| CroPS |"))
    assert "| 70.0 | 40.0 | 69.0 |" in row
    assert f"| {PAPER['CroPS'][0]:.1f} | {PAPER['CroPS'][1]:.1f} |" in row
    assert "results.png" in md


@pytest.mark.slow
def test_experiment_writes_table_and_chart(run, tmp_path, mined_fast):
    mined, world = mined_fast
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--world",
        world,
        "--mined",
        mined,
        "--out",
        out,
        "--max-steps",
        "6",
        "--queries-per-batch",
        "8",
        "--group-size",
        "4",
    ]
    code, stdout, err = run(*args, "--method", "BM25", "--method", "NCE", "--method", "CroPS")
    assert code == 0, err
    md = (out / "results.md").read_text()
    for name in ("BM25", "NCE", "CroPS"):
        assert f"| {name} |" in md
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = json.loads((out / "results.json").read_text())
    assert report["results"]["CroPS"]["steps"] == 6
    assert "llm" in report["results"]["CroPS"]["sources"]
    # rows with results are reused, not retrained; other settings retrain
    before = (out / "runs" / "nce" / "result.json").stat().st_mtime_ns
    code, _, err = run(*args, "--method", "NCE")
    assert code == 0, err
    assert (out / "runs" / "nce" / "result.json").stat().st_mtime_ns == before
    more = [a if a != "6" else "8" for a in args]
    code, _, err = run(*more, "--method", "NCE")
    assert code == 0, err
    assert json.loads((out / "runs" / "nce" / "result.json").read_text())["steps"] == 8
    # the oracle row (knowledge synthesis, a diagnostic) trains on its own mined folder and the
    # goals put the LLM step beside the oracle's
    oracle = [*args, "--oracle-mined", mined, "--method", "+recommendation", "--method", "CroPS"]
    code, _, err = run(*oracle, "--method", "CroPS, oracle synthesis")
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    assert report["results"]["CroPS, oracle synthesis"]["steps"] == 6
    assert set(report["goals"]["LLM step vs oracle"]) == {"ct/R@100", "qr/R@100"}
    assert "not an LLM" in report["synthesis"]["oracle"]["backend"]


def test_cli_experiment_bad_options(run, tmp_path, tiny_dir):
    code, _, err = run("experiment", "--world", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "not a simulated world" in err
    code, _, err = run(
        "experiment", "--world", tiny_dir, "--out", tmp_path / "o", "--method", "SPLADE"
    )
    assert code == 2 and "unknown method 'SPLADE'" in err
    code, _, err = run(
        "experiment", "--world", tiny_dir, "--out", tmp_path / "o", "--mined", tmp_path
    )
    assert code == 2 and "no samples.parquet" in err
    code, _, err = run(
        "experiment", "--world", tiny_dir, "--out", tmp_path / "o", "--oracle-mined", tmp_path
    )
    assert code == 2 and "--oracle-mined" in err and "no samples.parquet" in err
    code, _, err = run(
        "experiment",
        "--world",
        tiny_dir,
        "--out",
        tmp_path / "o",
        "--method",
        "CroPS, oracle synthesis",
    )
    assert code == 2 and "needs oracle_mined" in err
