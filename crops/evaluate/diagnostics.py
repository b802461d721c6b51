"""Diagnostics of a `crops experiment` run against the simulator's truth: measurement only.

No training input reads the truth; these figures explain a table after the fact (the
measures are in `crops.evaluate.truth`, the curves in `crops.evaluate.curves`; this module
reads an experiment folder, runs them and renders diagnostics.md):

- level noise: per sample source (HLA label), the share of samples whose video is grade 0, 1,
  2 or 3 for the query;
- the relevance filter on the level samples (labels 1-3): the AUC of its score for grade >= 1,
  and at a threshold the share of level samples it would drop and of grade-0 ones it catches;
- top-k composition: the share of each method's top 100 on CT queries that is grade 0 .. 3,
  and grade-3 recall@100 (of the query's grade-3 videos, the share retrieved);
- training curves: the validation curve and stop each model folder's training.json records;
- the truth-cleaned ablation: a method retrained by `crops experiment`'s own code on its
  samples without the grade-0 level samples.

A grade is the simulator's true relevance of a video to a query string, the best over the
query's senses (`World.query_grades`, the truth the graded test set is built from): 3 same
facet and good quality, 2 same topic, 1 same domain, 0 otherwise. The world is rebuilt from its
world.json (fingerprint-checked against what `crops simulate` wrote). A video the catalogue
does not hold (an LLM-synthesised one) or a query string the world never produces has no
grade (-1): such samples are counted as ungraded, never as grade 0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crops.evaluate.curves import plot_curves, read_curve, training_curves
from crops.evaluate.truth import (
    GRADES,
    SOURCE_ORDER,
    Scorer,
    Truth,
    auc,
    clean_samples,
    composition,
    filter_check,
    level_noise,
    qrels_queries,
    sample_levels,
)
from crops.schema import LEVEL_SOURCES

if TYPE_CHECKING:
    import polars as pl

    from crops.evaluate.collection import Collection
    from crops.evaluate.offline import Searcher

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- experiment folder


def experiment_methods(experiment: str | Path) -> dict[str, dict]:
    """Method name -> its result (results.json, else each runs/<slug>/result.json), with
    `model_dir` added for dense methods whose model folder exists."""
    from crops.evaluate.experiment import method_by_name

    root = Path(experiment)
    report = root / "results.json"
    if report.is_file():
        results = json.loads(report.read_text())["results"]
    else:
        results = {}
        for p in sorted(root.glob("runs/*/result.json")):
            r = json.loads(p.read_text())
            results[r["method"]] = r
    if not results:
        raise FileNotFoundError(f"{root}: no results.json nor runs/*/result.json")
    out: dict[str, dict] = {}
    for name, r in results.items():
        method = method_by_name(name)
        model = root / "runs" / method.slug / "model"
        out[name] = {
            **r,
            "slug": method.slug,
            "dense": method.dense,
            "model_dir": str(model) if method.dense and model.is_dir() else None,
        }
    return out


def searcher_for_method(collection: Collection, info: dict) -> Searcher | None:
    from crops.evaluate.offline import BM25Searcher, DenseSearcher

    if not info["dense"]:
        return BM25Searcher(collection.doc_ids, collection.doc_texts)
    if info["model_dir"] is None:
        return None
    from crops.model.encoders import DualEncoder

    return DenseSearcher.exact(
        DualEncoder.load(info["model_dir"]), collection.doc_ids, collection.doc_texts, info["slug"]
    )


# --------------------------------------------------------------------------- cleaned ablation


def experiment_config(experiment: str | Path, **overrides) -> tuple[object, list[str]]:
    """The ExperimentConfig a finished experiment ran with (its results.json), with overrides;
    also the recorded keys this version's config no longer has (dropped, named)."""
    from crops.evaluate.experiment import ExperimentConfig

    report = json.loads((Path(experiment) / "results.json").read_text())
    recorded = dict(report["config"])
    known = set(ExperimentConfig.model_fields)
    dropped = sorted(k for k in recorded if k not in known)
    cfg = {k: v for k, v in recorded.items() if k in known}
    cfg.update(overrides)
    return ExperimentConfig.model_validate(cfg), dropped


def cleaned_ablation(
    experiment: str | Path,
    mined: str | Path,
    samples: pl.DataFrame,
    grades: np.ndarray,
    methods: Sequence[str],
    out: str | Path,
    progress: Progress | None = None,
) -> dict:
    """Retrain `methods` with `crops experiment`'s own code and settings on the mined samples
    without grade-0 level samples; their rows beside the experiment's."""
    from crops.evaluate.experiment import method_by_name, run_experiment

    out = Path(out)
    cleaned_mined = out / "mined"
    cleaned_mined.mkdir(parents=True, exist_ok=True)
    kept, removed = clean_samples(samples, grades)
    target = cleaned_mined / "samples.parquet"
    if not target.is_file() or _frame_differs(target, kept):
        kept.write_parquet(target, compression="zstd")
    synth = Path(mined) / "synth_videos.parquet"
    if synth.is_file() and not (cleaned_mined / synth.name).is_file():
        shutil.copy2(synth, cleaned_mined / synth.name)
    names = [method_by_name(m).name for m in methods]
    cfg, dropped = experiment_config(
        experiment, out=str(out), mined=str(cleaned_mined), methods=names, force=False
    )
    report = run_experiment(cfg, progress)
    original = experiment_methods(experiment)
    levels = np.isin(samples["source"].to_numpy().astype(object), LEVEL_SOURCES)
    rows = {}
    for name in names:
        method = method_by_name(name)
        in_method = np.isin(samples["source"].to_numpy().astype(object), method.sources)
        rows[name] = {
            "original": original.get(name, {}).get("metrics"),
            "cleaned": report["results"][name]["metrics"],
            "samples": report["results"][name].get("samples"),
            "removed": int((in_method & levels & (grades == 0)).sum()),
            "level_samples": int((in_method & levels).sum()),
            "steps": report["results"][name].get("steps"),
        }
    return {
        "out": str(out),
        "removed_total": removed,
        "config_keys_dropped": dropped,
        "methods": rows,
    }


def _frame_differs(path: Path, frame: pl.DataFrame) -> bool:
    import polars as pl

    try:
        return not pl.read_parquet(path).equals(frame)
    except Exception:  # noqa: BLE001 - an unreadable file is rewritten
        return True


# --------------------------------------------------------------------------- the whole report


def run_diagnostics(
    world: str | Path,
    mined: str | Path,
    experiment: str | Path,
    out: str | Path,
    *,
    filter_sample: int = 4000,
    filter_model: str | None = None,
    threshold: float | None = None,
    seed: int = 0,
    k: int = 100,
    qrels: str = "ct",
    cleaned: Sequence[str] = (),
    scorer: Scorer | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> dict:
    """Every diagnostic; DIR/diagnostics.json, DIR/diagnostics.md (and the curves' PNG).

    `filter_sample` 0 skips the relevance filter; `filter_model` and `threshold` default to the
    ones the mined folder's report.json records (else MineConfig's); `scorer` replaces the
    filter model (tests)."""
    import polars as pl

    from crops.evaluate.collection import world_collection

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mined = Path(mined)
    log(f"world {world}: rebuilding the simulator's truth")
    truth = Truth.load(world)
    collection = world_collection(world)
    samples = pl.read_parquet(mined / "samples.parquet")
    log(f"grading {samples.height:,} samples")
    grades = truth.grade_samples(samples)
    report: dict = {
        "command": command,
        "world": str(world),
        "mined": str(mined),
        "experiment": str(experiment),
        "grades": "World.query_grades: best over the query's senses; -1 (ungraded): video not"
        " in the catalogue or query unknown to the world",
        "level_noise": level_noise(samples, grades),
    }

    if filter_sample > 0:
        mine_report = _mine_filter(mined)
        from crops.mining.config import MineConfig

        thr = (
            threshold
            if threshold is not None
            else mine_report.get("threshold", MineConfig().relevance_threshold)
        )
        model = filter_model or mine_report.get("model") or MineConfig().filter_model
        if scorer is None:
            from crops.mining.relevance import RelevanceFilter

            log(f"relevance filter {model}: scoring up to {filter_sample:,} level samples")
            scorer = RelevanceFilter(model)
        texts = dict(zip((int(d) for d in collection.doc_ids), collection.doc_texts, strict=True))
        check = filter_check(
            samples, grades, texts, scorer, n=filter_sample, seed=seed, threshold=float(thr)
        )
        name = getattr(scorer, "model_name", None) or type(scorer).__name__
        report["relevance_filter"] = {"model": name, **check}

    methods = experiment_methods(experiment)
    qids = qrels_queries(collection, qrels)
    comp: dict[str, dict] = {}
    for i, (name, info) in enumerate(methods.items()):
        searcher = searcher_for_method(collection, info)
        if searcher is None:
            comp[name] = {"missing": f"no model folder under {experiment}/runs/{info['slug']}"}
            continue
        log(f"top-{k} composition: {name}")
        comp[name] = composition(truth, collection, searcher, qids, k=k)
        if progress:
            progress("composition", i + 1, len(methods))
    report["composition"] = {"qrels": qrels, "methods": comp}

    curves = training_curves(methods)
    png = out / "training_curves.png"
    report["training"] = {
        "methods": curves,
        "plot": png.name if plot_curves(curves, png) else None,
    }

    if cleaned:
        log(f"truth-cleaned ablation: retraining {', '.join(cleaned)}")
        report["cleaned"] = cleaned_ablation(
            experiment, mined, samples, grades, cleaned, out / "cleaned", progress
        )
        if report["cleaned"]["config_keys_dropped"]:
            log(
                "the experiment recorded settings this version lacks, retrained without them: "
                + ", ".join(report["cleaned"]["config_keys_dropped"])
            )

    (out / "diagnostics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "diagnostics.md").write_text(render_markdown(report))
    return report


def _mine_filter(mined: Path) -> dict:
    path = mined / "report.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("filter", {}) or {}


def _pct(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def render_markdown(report: dict) -> str:
    """A fragment for docs/experiment/results.md: the command first, then one table each."""
    lines = [
        "<!-- generated by bench/experiment_diagnostics.py: do not edit by hand -->",
        "",
        "Made by:",
        "",
        "```bash",
        report.get("command") or "python bench/experiment_diagnostics.py ...",
        "```",
        "",
        "Grades are the simulator's truth (measurement only, never a training input): 3 same"
        " facet (good quality), 2 same topic, 1 same domain, 0 irrelevant; for an ambiguous"
        " query, the best over its senses. Ungraded: a video the catalogue does not hold"
        " (LLM-synthesised).",
        "",
        "### HLA level noise",
        "",
        "| source | label | samples | ungraded | grade 0 % | grade 1 % | grade 2 % | grade 3 % |"
        " grade >= 2 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    noise = report["level_noise"]
    for s, r in {**noise["sources"], "labels 1-3": noise["levels_1_3"]}.items():
        sh = r["share"]
        label = r.get("label", "1-3")
        lines.append(
            f"| {s} | {label} | {r['samples']} | {r['ungraded']} | "
            + " | ".join(_pct(sh[str(g)]) for g in GRADES)
            + f" | {_pct(r['share_grade_ge2'])} |"
        )
    rf = report.get("relevance_filter")
    if rf:
        lines += [
            "",
            "### The relevance filter on level samples (labels 1-3)",
            "",
            f"{rf['samples']} level samples drawn with seed {rf['seed']}, scored by the filter"
            f" `{rf['model']}`; AUC of its score for grade >= 1; at threshold {rf['threshold']}"
            " (mining keeps scores above it), the share of samples it drops and of grade-0"
            " ones it catches.",
            "",
            "| level samples | samples | grade 0 | AUC | dropped % | grade 0 caught % |"
            " grade >= 1 kept % |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in {"all": rf, **rf["by_source"]}.items():
            a = "" if r["auc_grade_ge1"] is None else f"{r['auc_grade_ge1']:.3f}"
            lines.append(
                f"| {name} | {r['samples']} | {r['grade0']} | {a} | {_pct(r['dropped'])} |"
                f" {_pct(r['grade0_caught'])} | {_pct(r['relevant_kept'])} |"
            )
    comp = report["composition"]
    lines += [
        "",
        f"### Top-100 composition on {comp['qrels'].upper()} queries",
        "",
        "Pooled over the queries: the share of the retrieved videos at each grade; grade-3"
        " recall: of each query's grade-3 videos, the share retrieved, averaged over queries.",
        "",
        "| method | queries | grade 0 % | grade 1 % | grade 2 % | grade 3 % | grade-3 recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in comp["methods"].items():
        if "missing" in r:
            lines.append(f"| {name} | {r['missing']} | | | | | |")
            continue
        rec = "" if r["grade3_recall"] is None else f"{r['grade3_recall']:.3f}"
        lines.append(
            f"| {name} | {r['queries']} | "
            + " | ".join(_pct(r["share"][str(g)]) for g in GRADES)
            + f" | {rec} |"
        )
    tr = report["training"]
    if tr["methods"]:
        lines += [
            "",
            "### Training: where each model stopped",
            "",
            "| method | steps | best step | why stopped | curve: step recall % (from) |",
            "|---|---:|---:|---|---|",
        ]
        for name, t in tr["methods"].items():
            pts = ", ".join(
                f"{p['step']} {_pct(p.get('recall'))}" for p in t["curve"] if "step" in p
            )
            src = f" (`{t['curve_key']}`)" if t["curve_key"] else "no curve recorded"
            lines.append(
                f"| {name} | {t.get('steps') or ''} | {t.get('best_step') or ''} |"
                f" {t.get('why_stopped') or ''} | {pts}{src} |"
            )
        if tr["plot"]:
            lines += ["", f"![training curves]({tr['plot']})"]
    cl = report.get("cleaned")
    if cl:
        lines += [
            "",
            "### Truth-cleaned ablation",
            "",
            "Each method retrained by `crops experiment`'s code and settings on its samples"
            " without the level samples (labels 1-3) whose video is grade 0.",
            "",
            "| method | removed / level samples | CT R@100 | QR R@100 | NDCG@4 | steps |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        cols = ("ct/R@100", "qr/R@100", "graded/nDCG@4")
        for name, r in cl["methods"].items():
            if r["original"]:
                o = " | ".join(_pct(r["original"].get(c)) for c in cols)
                lines.append(f"| {name} | | {o} | |")
            c = " | ".join(_pct(r["cleaned"].get(c)) for c in cols)
            lines.append(
                f"| {name}, grade-0 level samples removed | {r['removed']} /"
                f" {r['level_samples']} | {c} | {r.get('steps') or ''} |"
            )
        if cl["config_keys_dropped"]:
            lines += [
                "",
                "Settings the experiment recorded that this version no longer has (retrained"
                f" without them): {', '.join(cl['config_keys_dropped'])}.",
            ]
    lines.append("")
    return "\n".join(lines)


__all__ = [
    "GRADES",
    "LEVEL_SOURCES",
    "SOURCE_ORDER",
    "Scorer",
    "Truth",
    "auc",
    "clean_samples",
    "cleaned_ablation",
    "composition",
    "experiment_methods",
    "filter_check",
    "level_noise",
    "plot_curves",
    "qrels_queries",
    "read_curve",
    "render_markdown",
    "run_diagnostics",
    "sample_levels",
    "training_curves",
]
