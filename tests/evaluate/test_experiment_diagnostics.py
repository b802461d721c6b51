"""bench/experiment_diagnostics.py and crops.evaluate.diagnostics on the tiny world: grades
against `World.query_grades`, shares that sum to 1, an AUC computed from the scores given, the
top-100 composition of real searchers, the training curve a training.json records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crops.evaluate import diagnostics as dg
from crops.evaluate.experiment import ExperimentConfig
from crops.mining.config import MineConfig
from crops.model.recipe import SEARCH_LOG
from crops.schema import HLA_LABELS

_PATH = Path(__file__).resolve().parents[2] / "bench" / "experiment_diagnostics.py"
_spec = importlib.util.spec_from_file_location("experiment_diagnostics", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def truth(tiny_world) -> dg.Truth:
    return dg.Truth(tiny_world)


@pytest.fixture(scope="module")
def graded(mined_fast, truth):
    mined, _ = mined_fast
    samples = pl.read_parquet(mined / "samples.parquet")
    return samples, truth.grade_samples(samples)


def test_grades_are_the_worlds_query_grades(graded, tiny_world, truth):
    samples, grades = graded
    assert len(grades) == samples.height
    rng = np.random.default_rng(0)
    for i in rng.choice(samples.height, size=300, replace=False):
        q, v, src = samples["query"][int(i)], samples["video_id"][int(i)], samples["source"][int(i)]
        if src == "llm":  # synthetic videos are not in the catalogue: ungraded
            assert grades[i] == -1
        else:
            assert grades[i] == tiny_world.query_grades(q, np.array([v]))[0]
    assert truth.grades("no such query string", np.array([1, 2])).tolist() == [-1, -1]
    assert truth.rows(np.array([-5])).tolist() == [-1]


def test_level_noise_shares_sum_to_one_and_count_every_sample(graded):
    samples, grades = graded
    noise = dg.level_noise(samples, grades)
    counts = samples.group_by("source").len()
    assert set(noise["sources"]) == set(counts["source"].to_list())
    for src, n in counts.iter_rows():
        row = noise["sources"][src]
        assert row["samples"] == n and row["graded"] + row["ungraded"] == n
        if row["graded"]:
            assert sum(row["share"].values()) == pytest.approx(1.0)
            assert row["share_grade3"] == pytest.approx(row["share"]["3"])
    assert list(noise["sources"])[:3] == sorted(dg.LEVEL_SOURCES, key=HLA_LABELS.get)
    levels = noise["levels_1_3"]
    assert levels["samples"] == sum(noise["sources"][s]["samples"] for s in dg.LEVEL_SOURCES)
    # clicks are far cleaner than the prefiltered level in the simulated cascade
    assert noise["sources"]["click"]["share"]["0"] < noise["sources"]["prefiltered"]["share"]["0"]
    assert noise["sources"]["llm"]["ungraded"] == noise["sources"]["llm"]["samples"]


def test_auc_is_the_mann_whitney_statistic():
    assert dg.auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert dg.auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert dg.auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # ties count half
    # 3 positives x 2 negatives: pairs won 1 + 2 + 2 = 5 of 6
    assert dg.auc(np.array([0.3, 0.6, 0.9, 0.4, 0.1]), np.array([1, 1, 1, 0, 0])) == (
        pytest.approx(5 / 6)
    )
    assert dg.auc(np.array([0.3]), np.array([1])) is None
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    s, y = rng.random(500).round(2), rng.random(500) < 0.3
    assert dg.auc(s, y) == pytest.approx(sk.roc_auc_score(y, s))


class _TruthScorer:
    """Scores that follow the truth with noise: the check's AUC must come from these."""

    def __init__(self, tiny_world, ids: dict[str, int]) -> None:
        self.world, self.ids, self.calls = tiny_world, ids, 0

    def score(self, queries, texts):
        self.calls += 1
        rng = np.random.default_rng(len(queries))
        pairs = zip(queries, texts, strict=True)
        g = np.array([self.world.query_grades(q, np.array([self.ids[t]]))[0] for q, t in pairs])
        return 0.5 + 0.1 * (g >= 1) + rng.normal(0, 0.05, len(g))


def test_filter_check_scores_a_seeded_sample_of_level_samples(graded, tiny_world, tiny_dir):
    from crops.evaluate.collection import world_collection

    samples, grades = graded
    collection = world_collection(tiny_dir)
    texts = {int(d): t for d, t in zip(collection.doc_ids, collection.doc_texts, strict=True)}
    scorer = _TruthScorer(tiny_world, {t: d for d, t in texts.items()})
    check = dg.filter_check(samples, grades, texts, scorer, n=400, seed=3, threshold=0.55)
    again = dg.sample_levels(samples, grades, 400, 3)
    assert len(again) == 400 and (again == dg.sample_levels(samples, grades, 400, 3)).all()
    assert set(samples["source"].gather(again).to_list()) <= set(dg.LEVEL_SOURCES)
    assert check["samples"] == 400 and scorer.calls == 1
    assert 0.8 < check["auc_grade_ge1"] <= 1.0  # noisy truth separates well, not perfectly
    assert 0 <= check["dropped"] <= 1 and 0.7 < check["grade0_caught"] <= 1
    assert sum(r["samples"] for r in check["by_source"].values()) == 400
    assert check["grade0"] == int((grades[again] == 0).sum())


def test_clean_samples_drops_grade0_level_samples_only(graded):
    samples, grades = graded
    kept, removed = dg.clean_samples(samples, grades)
    level = samples["source"].is_in(list(dg.LEVEL_SOURCES)).to_numpy()
    assert removed == int((level & (grades == 0)).sum()) > 0
    assert kept.height == samples.height - removed
    assert kept.filter(pl.col("source") == "click").height == (
        samples.filter(pl.col("source") == "click").height
    )


def test_read_curve_finds_the_key_it_reads():
    curve = [{"step": 100, "recall": 0.2}, {"step": 200, "recall": 0.3}]
    assert dg.read_curve({"validation": {"curve": curve}}) == ("validation.curve", curve)
    assert dg.read_curve({"metrics": {"global_step": 6}}) == (None, [])


def _fake_experiment(root: Path, world: Path, mined: Path) -> Path:
    """An experiment OUT as `crops experiment` leaves it, with untrained hash models (no
    training: these tests measure the diagnostics, not the models)."""
    from crops.model.encoders import build_dual_encoder

    exp = root / "exp"
    cfg = ExperimentConfig(
        world=str(world), out=str(exp), mined=str(mined), methods=["BM25", "NCE", "CroPS"]
    )
    results = {}
    for name, slug, seed in (("BM25", "bm25", None), ("NCE", "nce", 0), ("CroPS", "crops", 1)):
        results[name] = {"method": name, "metrics": {"ct/R@100": 0.5}, "steps": 40}
        if seed is None:
            continue
        model = exp / "runs" / slug / "model"
        build_dual_encoder("hash", seed=seed).save(model)
        curve = [{"step": s, "recall": 0.1 + 0.01 * s / 10 + seed * 0.02} for s in (10, 20, 30, 40)]
        training = {"steps": 40, "validation": {"curve": curve, "best_step": 40}}
        if name == "NCE":
            training = {"metrics": {"global_step": 40}}  # an older training.json: no curve
        (model / "training.json").write_text(json.dumps(training))
    report = {"world": str(world), "mined": str(mined), "config": cfg.model_dump()}
    (exp / "results.json").write_text(json.dumps({**report, "results": results}))
    return exp


def test_the_bench_command_writes_json_and_markdown(tmp_path, mined_fast, tiny_world, truth):
    mined, world = mined_fast
    exp = _fake_experiment(tmp_path, world, mined)
    out = tmp_path / "diag"
    argv = ["--world", str(world), "--mined", str(mined), "--experiment", str(exp)]
    argv += ["--out", str(out), "--filter-sample", "0"]
    report = bench.main(argv)
    saved = json.loads((out / "diagnostics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    md = (out / "diagnostics.md").read_text()
    assert md.splitlines()[5].startswith("python bench/experiment_diagnostics.py --world ")
    for name in ("BM25", "NCE", "CroPS", "prefiltered", "labels 1-3"):
        assert f"| {name} |" in md
    comp = report["composition"]["methods"]
    assert set(comp) == {"BM25", "NCE", "CroPS"}
    for r in comp.values():
        assert sum(r["share"].values()) == pytest.approx(1.0)
        assert 0 <= r["grade3_recall"] <= 1 and r["queries"] > 0 and r["ungraded"] == 0
    # BM25 reads the text; an untrained hash model barely does: fewer grade-0 videos
    assert comp["BM25"]["share"]["0"] < comp["NCE"]["share"]["0"]
    # the composition is the truth of what the searcher returns, checked on one query
    from crops.evaluate.collection import world_collection
    from crops.evaluate.offline import BM25Searcher

    collection = world_collection(world)
    qid = next(
        q
        for q in dg.qrels_queries(collection, "ct")
        if (truth.catalogue_grades(collection.queries[q]) == 3).any()
    )
    bm25 = BM25Searcher(collection.doc_ids, collection.doc_texts)
    one = dg.composition(truth, collection, bm25, [qid])
    q = collection.queries[qid]
    hits = bm25.search([q], 100)[0]
    g = tiny_world.query_grades(q, np.array([int(d) for d, _ in hits]))
    assert one["share"]["0"] == pytest.approx(float((g == 0).mean()))
    every = tiny_world.query_grades(q, tiny_world.videos.video_id)
    assert one["grade3_recall"] == pytest.approx((g == 3).sum() / (every == 3).sum())
    curves = report["training"]["methods"]
    assert curves["CroPS"]["curve_key"] == "validation.curve"
    assert [p["step"] for p in curves["CroPS"]["curve"]] == [10, 20, 30, 40]
    assert curves["NCE"]["curve_key"] is None and curves["NCE"]["steps"] == 40
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training curves](training_curves.png)" in md


@pytest.mark.slow
def test_relevance_filter_check_with_minilm(tmp_path, mined_fast):
    """The real filter model on 300 level samples: an AUC of real scores, above chance."""
    mined, world = mined_fast
    exp = _fake_experiment(tmp_path, world, mined)
    report = dg.run_diagnostics(
        world, mined, exp, tmp_path / "d", filter_sample=300, seed=1, log=lambda _: None
    )
    rf = report["relevance_filter"]
    assert rf["model"] == "minilm" and rf["samples"] == 300
    assert rf["threshold"] == MineConfig().relevance_threshold  # the mining default
    assert 0.55 < rf["auc_grade_ge1"] <= 1


@pytest.mark.slow
def test_cleaned_ablation_retrains_through_crops_experiment(tmp_path, mined_fast, graded):
    """--cleaned: FS-LR retrained by run_experiment on the cleaned samples, beside its row."""
    mined, world = mined_fast
    samples, grades = graded
    exp = tmp_path / "exp"
    small = {"queries_per_batch": 8, "group_size": 4}
    small["stop"] = {"max_steps": 6, "patience": None, "val_fraction": 0}
    cfg = ExperimentConfig(world=str(world), out=str(exp), mined=str(mined), **small)
    report = {"world": str(world), "mined": str(mined), "config": cfg.model_dump()}
    exp.mkdir()
    results = {"FS-LR": {"method": "FS-LR", "metrics": {"ct/R@100": 0.3, "qr/R@100": 0.2}}}
    (exp / "results.json").write_text(json.dumps({**report, "results": results}))
    out = dg.cleaned_ablation(exp, mined, samples, grades, ["fs-lr"], tmp_path / "c")
    row = out["methods"]["FS-LR"]
    assert row["removed"] == out["removed_total"] > 0  # FS-LR holds every level sample
    assert row["samples"] == int(samples["source"].is_in(list(SEARCH_LOG)).sum()) - (row["removed"])
    assert 0 <= row["cleaned"]["ct/R@100"] <= 1
    assert row["original"]["ct/R@100"] == 0.3
    kept = pl.read_parquet(tmp_path / "c" / "mined" / "samples.parquet")
    assert kept.height == samples.height - row["removed"]
    md = dg.render_markdown(
        {
            "command": "x",
            "level_noise": dg.level_noise(samples, grades),
            "composition": {"qrels": "ct", "methods": {}},
            "training": {"methods": {}, "plot": None},
            "cleaned": out,
        }
    )
    assert "| FS-LR, grade-0 level samples removed |" in md
