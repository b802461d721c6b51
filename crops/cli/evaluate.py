"""`crops evaluate` and `crops experiment`: offline retrieval metrics, and the paper's table
trained and scored on a simulated world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crops.console import console, defaults
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table
from crops.evaluate.experiment import ExperimentConfig
from crops.model.convergence import stop_options


def evaluate(
    world: Annotated[Path | None, typer.Option(help="a simulated world: CT, QR, graded")] = None,
    trec_dir: Annotated[
        Path | None, typer.Option(help="a collection: TSV docs, TSV queries, TREC qrels")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="MODEL_DIR from `crops train`, or an encoder name evaluated zero-shot,"
            " untrained (hf:<name-or-path>, e.g. hf:minilm)"
        ),
    ] = None,
    method: Annotated[str | None, typer.Option(help="a baseline instead of a model: bm25")] = None,
    index: Annotated[
        Path | None, typer.Option(help="INDEX_DIR from `crops index` (world only; else exact)")
    ] = None,
    out: Annotated[Path, typer.Option(help="metrics file to write")] = Path("metrics.json"),
    k: Annotated[int, typer.Option(help="hits retrieved per query", min=1, max=10_000)] = 100,
    docs: Annotated[
        Path | None, typer.Option(help="docs TSV (default: found in --trec-dir)")
    ] = None,
    queries: Annotated[Path | None, typer.Option(help="queries TSV (default: found)")] = None,
    qrels: Annotated[Path | None, typer.Option(help="TREC qrels (default: found)")] = None,
    measure: Annotated[
        list[str] | None, typer.Option(help="ir-measures names for --trec-dir (R@100, nDCG@10)")
    ] = None,
) -> None:
    """Recall@100 on CT and QR and NDCG@4 on the graded set (or any TREC collection)."""
    from crops.evaluate.collection import (
        DEFAULT_TREC_MEASURES,
        CollectionError,
        trec_collection,
        world_collection,
    )
    from crops.evaluate.offline import evaluate as run
    from crops.evaluate.offline import headline, searcher_for
    from crops.schema import SchemaError

    if (world is None) == (trec_dir is None):
        _fail("give exactly one of --world or --trec-dir")
    if (model is None) == (method is None):
        _fail("give exactly one of --model or --method")
    if method is not None and method != "bm25":
        _fail(f"--method {method!r}: the built-in baseline is bm25 (train the others)")
    if index is not None and (model is None or world is None):
        _fail("--index goes with --model and --world (its ids are video ids)")
    if world is not None and (docs or queries or qrels or measure):
        _fail("--docs, --queries, --qrels and --measure go with --trec-dir")
    measures = tuple(measure or DEFAULT_TREC_MEASURES)
    import ir_measures

    for m in measures:
        try:
            cutoff = ir_measures.parse_measure(m).params.get("cutoff")
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            _fail(f"--measure {m!r} is not an ir-measures measure ({exc})")
        if trec_dir is not None and cutoff and cutoff > k:
            k = int(cutoff)  # R@1000 needs 1,000 hits, whatever --k says
    try:
        with _progress_bar() as progress:
            if world is not None:
                collection = world_collection(world)
            else:
                collection = trec_collection(
                    trec_dir, docs=docs, queries=queries, qrels=qrels, measures=measures
                )
            searcher = searcher_for(
                collection, model=model, method=method, index=index, progress=progress
            )
            result = run(collection, searcher, k=k, progress=progress)
    except (CollectionError, SchemaError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(_summary_table(headline(result), f"{result['retriever']} on {collection.source}"))
    console.print(f"metrics written to {out}")


#: `crops experiment`'s defaults are ExperimentConfig's (and its recipe's): their one home
X = defaults(ExperimentConfig)


def experiment(
    world: Annotated[Path, typer.Option(help="a simulated world (`crops simulate`)")],
    out: Annotated[Path, typer.Option(help="folder for results.md, results.png, runs/")],
    mined: Annotated[
        Path | None,
        typer.Option(help="a `crops mine` folder (default: mine into OUT/mined, local LLM)"),
    ] = None,
    oracle_mined: Annotated[
        Path | None,
        typer.Option(
            help="a folder mined with --llm-backend knowledge: adds the oracle-synthesis row,"
            " the upper bound of the LLM step (a diagnostic)"
        ),
    ] = None,
    synth_budget_s: Annotated[
        float, typer.Option(help="seconds of local-LLM synthesis when mining into OUT")
    ] = X.synth_budget_s,
    method: Annotated[
        list[str] | None, typer.Option(help="only these rows (repeat); default all")
    ] = None,
    encoder: Annotated[str, typer.Option(help="hash | hf:<name-or-path>")] = X.encoder,
    max_steps: Annotated[
        int | None, typer.Option(help="cap on each method's steps (default: the stop rule's)")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="evaluations without gain before a method stops; 0: --max-steps each"),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="steps between validations")] = None,
    level_filter: Annotated[
        float,
        typer.Option(help="'CroPS + level filter' row's threshold (the relevance threshold)"),
    ] = X.level_filter,
    queries_per_batch: Annotated[int, typer.Option(help="query groups per batch")] = (
        X.queries_per_batch
    ),
    group_size: Annotated[int, typer.Option(help="samples per query group")] = X.group_size,
    workers: Annotated[int, typer.Option(help="Ray Train workers a run")] = X.workers,
    seed: Annotated[int, typer.Option(help="random seed")] = X.seed,
    force: Annotated[bool, typer.Option(help="retrain rows that already have results")] = X.force,
) -> None:
    """Train and evaluate the paper's table (BM25, NCE, DPR, ANCE, FS-LR, the CroPS ladder)."""
    from crops.evaluate.collection import CollectionError
    from crops.evaluate.experiment import COLUMNS, method_by_name, run_experiment
    from crops.schema import SchemaError

    if not (world / "world.json").is_file():
        _fail(f"--world {world} is not a simulated world (no world.json)")
    for opt, folder in (("--mined", mined), ("--oracle-mined", oracle_mined)):
        if folder is not None and not (folder / "samples.parquet").is_file():
            _fail(f"{opt} {folder} has no samples.parquet: run `crops mine` first")
    names = method or None
    try:
        for name in names or []:
            method_by_name(name)
    except ValueError as exc:
        _fail(str(exc))
    values = {"methods": names} if names else {}
    cfg = _options(
        ExperimentConfig,
        world=str(world),
        out=str(out),
        mined=str(mined) if mined else None,
        oracle_mined=str(oracle_mined) if oracle_mined else None,
        synth_budget_s=synth_budget_s,
        encoder=encoder,
        stop=stop_options(max_steps, patience, eval_every),
        level_filter=level_filter,
        queries_per_batch=queries_per_batch,
        group_size=group_size,
        workers=workers,
        seed=seed,
        force=force,
        **values,
    )
    try:
        with _progress_bar() as progress:
            report = run_experiment(cfg, progress)
    except (CollectionError, SchemaError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    table = Table(title="offline retrieval (%)", header_style="bold")
    table.add_column("method")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    for name, r in report["results"].items():
        table.add_row(name, *(f"{100 * r['metrics'][key]:.1f}" for key, _ in COLUMNS))
    console.print(table)
    console.print(f"results written to {out / 'results.md'} and {out / 'results.png'}")
