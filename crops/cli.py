"""`crops ...`: the command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from crops.abtest.cli import abtest_app
from crops.console import console, err
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table
from crops.model.convergence import stop_options

app = typer.Typer(
    name="crops",
    help="Train and ship CroPS dense retrievers for short-video search.",
    no_args_is_help=True,
    add_completion=False,
)


class ScaleName(StrEnum):
    tiny = "tiny"
    default = "default"
    large = "large"


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="directory to write the world into")],
    scale: Annotated[ScaleName, typer.Option(help="world size")] = ScaleName.default,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 1,
) -> None:
    """Simulate a short-video platform with a filter bubble: logs, test sets, truth, summary."""
    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate as run

    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a directory")
    cfg = WorldConfig.for_scale(scale.value, seed=seed)
    with _progress_bar() as progress:
        meta = run(cfg, out, progress)
    console.print(f"[bold]world written to {out}[/] (scale {scale.value}, seed {seed})")
    console.print(_summary_table(meta["counts"], "counts"))
    console.print(_summary_table(meta["summary"], "filter bubble (production system)"))


@app.command()
def validate(
    directory: Annotated[Path, typer.Argument(help="a directory of contract tables")],
    max_quarantine_share: Annotated[
        float, typer.Option(help="exit 1 when more than this share of a table's rows is bad")
    ] = 0.01,
) -> None:
    """Check tables against the contracts; quarantine bad rows to DIR/_quarantine/.

    Exit status: 0 valid, 1 too many rows quarantined, 2 a file-level error.
    """
    from crops.schema import SchemaError, validate_dir

    try:
        reports = validate_dir(directory)
    except SchemaError as exc:
        _fail(str(exc))
        return
    table = Table(title=f"validation of {directory}", header_style="bold")
    for col in ("table", "rows", "valid", "quarantined", "reasons"):
        table.add_column(
            col, justify="right" if col in ("rows", "valid", "quarantined") else "left"
        )
    worst = 0.0
    for r in reports:
        d = r.as_dict()
        reasons = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items()) or "-"
        table.add_row(r.table, str(d["rows"]), str(d["valid"]), str(d["quarantined"]), reasons)
        worst = max(worst, r.quarantined / r.rows if r.rows else 0.0)
    console.print(table)
    if any(r.quarantined for r in reports):
        console.print(f"quarantined rows written to {directory / '_quarantine'}")
    world = directory / "world.json"
    if world.exists():
        summary = json.loads(world.read_text()).get("summary", {})
        console.print(_summary_table(summary, "world summary"))
    if worst > max_quarantine_share:
        _fail(
            f"{worst:.2%} of a table's rows quarantined (limit {max_quarantine_share:.2%})", code=1
        )


class LlmBackendName(StrEnum):
    local = "local"
    ray_batch = "ray-batch"
    knowledge = "knowledge"
    none = "none"
    vllm_offline = "vllm-offline"


class LlmEngineName(StrEnum):
    vllm = "vllm"
    llama_cpp = "llama.cpp"


@app.command()
def mine(
    world: Annotated[Path, typer.Option(help="directory with videos, search_log and rec_log")],
    out: Annotated[Path, typer.Option(help="directory for samples, synth_videos, report")],
    llm_endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server (vLLM): http://host:8000")
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="model name the server serves")] = None,
    llm_backend: Annotated[
        LlmBackendName | None,
        typer.Option(
            help="without an endpoint: local (a real LLM here: llama.cpp's server with the"
            " packaged SmolLM2-135M, or --llm-model PATH.gguf) | knowledge (world knowledge,"
            " not an LLM, a diagnostic) | none | vllm-offline (vLLM's in-process engine on a GPU"
            " node, with --llm-model) | ray-batch (Ray Data batch inference: actors each holding"
            " an engine, see --llm-engine)"
        ),
    ] = None,
    llm_engine: Annotated[
        LlmEngineName | None,
        typer.Option(
            help="ray-batch: vllm (GPU actors, --llm-model a HF model) | llama.cpp (a GGUF,"
            " default the packaged SmolLM2-135M; CPU actors with --llm-gpus-per-actor 0)"
        ),
    ] = None,
    llm_actors: Annotated[
        int | None, typer.Option(help="ray-batch: actors, each with its own engine")
    ] = None,
    llm_gpus_per_actor: Annotated[
        float | None, typer.Option(help="ray-batch: GPUs per actor (default 1; 0: CPU)")
    ] = None,
    llm_cache: Annotated[
        Path | None, typer.Option(help="SQLite cache of LLM replies (default OUT/llm_cache.sqlite)")
    ] = None,
    filter_model: Annotated[
        str, typer.Option(help="relevance filter: minilm | a sentence-transformers path | none")
    ] = "minilm",
    relevance_threshold: Annotated[
        float | None,
        typer.Option(
            help="keep reformulation and feed candidates scoring above this, on the filter's"
            " (1 + cos) / 2 scale (default: MineConfig's)"
        ),
    ] = None,
    level_filter: Annotated[
        float | None,
        typer.Option(
            help="an extension, off by default: drop level samples (labels 1-3) scoring at or"
            " below this, same scale; the summary counts them"
        ),
    ] = None,
    window_s: Annotated[
        float | None,
        typer.Option(help="reformulation: a chain's queries within this of its first (s)"),
    ] = None,
    feed_window_s: Annotated[
        float | None, typer.Option(help="feed window around a search, either side (s)")
    ] = None,
    feed_max_per_user: Annotated[
        int | None, typer.Option(help="recfeed candidates per user, the closest first")
    ] = None,
    synth_min_positives: Annotated[
        int, typer.Option(help="synthesise for queries with fewer positives than this")
    ] = 200,
    synth_max_queries: Annotated[int, typer.Option(help="at most this many queries")] = 1000,
    synth_per_query: Annotated[int, typer.Option(help="synthetic videos per query")] = 4,
    synth_budget_s: Annotated[
        float | None,
        typer.Option(help="local LLM: stop synthesis after this many seconds (poorest first)"),
    ] = None,
) -> None:
    """Mine graded samples: cascade labels, reformulation, recommendation feed, LLM synthesis."""

    from crops.mining.config import MineConfig
    from crops.mining.mine import mine as run
    from crops.schema import SchemaError

    if llm_endpoint and llm_backend is not None:
        _fail("give --llm-endpoint (with --llm-model) or --llm-backend, not both")
    if llm_endpoint and not llm_model:
        _fail("--llm-endpoint needs --llm-model (the name `vllm serve` was started with)")
    if llm_backend == LlmBackendName.vllm_offline and not llm_model:
        _fail("--llm-backend vllm-offline needs --llm-model (a Hugging Face model name or path)")
    if not (world / "videos.parquet").exists():
        _fail(f"--world {world}: no videos.parquet there")
    backend_name = "openai" if llm_endpoint else (llm_backend or LlmBackendName.local).value
    if backend_name == "knowledge" and not (world / "world.json").exists():
        _fail(
            f"--world {world} is not a simulated world (no world.json): the knowledge backend"
            " needs one; give --llm-endpoint or --llm-backend none"
        )
    # options left out keep MineConfig's defaults (their one home)
    given = {
        "reformulation_window_s": window_s,
        "feed_window_s": feed_window_s,
        "feed_max_per_user": feed_max_per_user,
        "relevance_threshold": relevance_threshold,
        "level_filter": level_filter,
    }
    if level_filter is not None and filter_model == "none":
        _fail("--level-filter needs the relevance filter's scores: not with --filter-model none")
    cfg = _options(
        MineConfig,
        **{k: v for k, v in given.items() if v is not None},
        filter_model=filter_model,
        synth_min_positives=synth_min_positives,
        synth_max_queries=synth_max_queries,
        synth_per_query=synth_per_query,
        synth_budget_s=synth_budget_s,
        llm_backend=backend_name,
        llm_endpoint=llm_endpoint,
        llm_model=llm_model,
        **{
            k: v
            for k, v in (
                ("llm_engine", llm_engine.value if llm_engine else None),
                ("llm_actors", llm_actors),
                ("llm_gpus_per_actor", llm_gpus_per_actor),
            )
            if v is not None
        },
    )
    backend = _synthesis_backend(cfg, world, llm_cache or out / "llm_cache.sqlite")
    scorer = None
    if filter_model != "none":
        from crops.mining.relevance import RelevanceFilter

        try:
            scorer = RelevanceFilter(filter_model)
        except (ValueError, ImportError, OSError) as exc:
            _fail(str(exc))
    try:
        with _progress_bar() as progress:
            report = run(world, out, cfg, backend, scorer=scorer, progress=progress)
    except SchemaError as exc:
        _fail(str(exc))
        return
    s = report["samples"]
    console.print(f"[bold]samples written to {out}[/]: {s['rows']} rows, {s['queries']} queries")
    console.print(_summary_table({f"label {k}": v for k, v in s["by_label"].items()}, "labels"))
    console.print(_summary_table(s["by_source"], "sources"))
    flt = report["filter"]
    console.print(
        _summary_table(
            {f"{src} pass rate": flt[src]["pass_rate"] for src in ("reformulation", "recfeed")}
            | _level_filter_summary(report["level_filter"])
            | {"quarantined " + k: v for k, v in report["quarantined"].items()},
            "filter and quarantine",
        )
    )
    syn = report["synthesis"]
    kind = (
        ""
        if "not an LLM" in syn["backend"]
        else (" (an LLM)" if syn["is_llm"] else " (not an LLM)")
    )
    console.print(
        f"synthesis: {syn['backend']}{kind},"
        f" {syn['videos']} videos for {syn['policy']['selected']} queries,"
        f" {syn['requests_sent']} requests, {syn['cache_hits']} cached"
        + (
            f", {syn['json_valid_replies']}/{syn['replies']} replies JSON-valid,"
            f" {syn['valid_replies']} usable"
            if syn.get("replies")
            else ""
        )
        + (
            f", {syn['skipped_for_budget']} skipped (time budget)"
            if syn.get("skipped_for_budget")
            else ""
        )
        + (f", {syn['failed']} quarantined" if syn.get("failed") else "")
    )
    qual = report["quality"]
    if "note" not in qual:
        console.print(
            _summary_table(
                {
                    f"{src} {m}": qual[src][m]
                    for src in ("reformulation", "recfeed", "llm", "click")
                    for m in ("precision", "never_shown_share")
                    if qual[src][m] is not None
                },
                "quality against the world's truth",
            )
        )


def _level_filter_summary(levels: dict) -> dict:
    """The level filter's lines of the mining summary: what it dropped, per source."""
    if levels["threshold"] is None:
        return {"level filter": "off"}
    return {
        f"level filter > {levels['threshold']}: dropped": levels["dropped"],
        **{f"  dropped {k}": v for k, v in levels["dropped_by_source"].items()},
        "  level samples kept": levels["kept"],
    }


def _synthesis_backend(cfg, world: Path, cache: Path):
    """The synthesis backend the options name."""
    from crops.mining import synthesis

    if cfg.llm_backend == "openai":
        try:
            return synthesis.OpenAIChatBackend(
                cfg.llm_endpoint,
                cfg.llm_model,
                concurrency=cfg.llm_concurrency,
                timeout_s=cfg.llm_timeout_s,
                max_retries=cfg.llm_max_retries,
                cache_path=cache,
                seed=cfg.seed,
            )
        except ValueError as exc:
            _fail(str(exc))
    if cfg.llm_backend == "local":
        from crops.mining.llm_server import LocalLLMBackend

        try:
            return LocalLLMBackend(
                cfg.llm_model,
                log_dir=cache.parent,
                cache_path=cache,
                seed=cfg.seed,
                max_retries=cfg.llm_max_retries,
                budget_s=cfg.synth_budget_s,
            )
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            _fail(str(exc))
    if cfg.llm_backend in ("vllm-offline", "ray-batch"):
        from crops.mining.batch_synthesis import BatchSynthesis, vllm_offline
        from crops.mining.llm_engines import EngineSpec
        from crops.mining.llm_server import packaged_model

        try:
            if cfg.llm_backend == "vllm-offline":
                return vllm_offline(cfg.llm_model, cache_path=cache, seed=cfg.seed)
            model = cfg.llm_model
            if model is None and cfg.llm_engine == "llama.cpp":
                model = str(packaged_model())
            if model is None:
                _fail("--llm-backend ray-batch with the vllm engine needs --llm-model")
            return BatchSynthesis(
                EngineSpec(engine=cfg.llm_engine, model=model),
                runner="ray",
                actors=cfg.llm_actors,
                gpus_per_actor=cfg.llm_gpus_per_actor,
                batch_size=cfg.llm_batch_size,
                seed=cfg.seed,
                max_retries=cfg.llm_max_retries,
                cache_path=cache,
            )
        except (ImportError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
    if cfg.llm_backend == "knowledge":
        from crops.mining.knowledge import KnowledgeBackend
        from crops.world.world import World

        try:
            return KnowledgeBackend(World.load(world), seed=cfg.seed)
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
    return synthesis.NoSynthesis()


class LossName(StrEnum):
    h_infonce = "h-infonce"
    infonce = "infonce"
    softmax = "softmax"


@app.command()
def train(
    samples: Annotated[Path, typer.Option(help="samples.parquet from `crops mine`")],
    videos: Annotated[Path, typer.Option(help="videos.parquet the samples refer to")],
    out: Annotated[Path, typer.Option(help="MODEL_DIR to write")],
    loss: Annotated[LossName, typer.Option(help="training loss")] = LossName.h_infonce,
    encoder: Annotated[str, typer.Option(help="hash | hf:<name-or-path> (hf:minilm)")] = "hash",
    separate_towers: Annotated[bool, typer.Option(help="query and video towers apart")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Ray Train workers (default 1; N on a cluster)")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="cap on optimizer steps (default: the stop rule's)")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="stop after this many evaluations without gain; 0: train --max-steps"),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="steps between validations")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="steps between checkpoints, at epoch ends")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="share of the queries held out for validation")
    ] = None,
    queries_per_batch: Annotated[int, typer.Option(help="query groups per global batch")] = 32,
    group_size: Annotated[int, typer.Option(help="samples per query group")] = 8,
    lr: Annotated[float | None, typer.Option(help="default 2e-5 (hf), 1e-3 (hash)")] = None,
    hard_negatives: Annotated[
        str, typer.Option(help="none | bm25 (DPR-style) | model (ANCE-style, refreshed per epoch)")
    ] = "none",
    n_hard: Annotated[int, typer.Option(help="hard negatives per query group")] = 0,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            help="batches per epoch: checkpoints, ANCE refreshes (default: samples/group/batch)"
        ),
    ] = None,
    positive_min_label: Annotated[
        int, typer.Option(help="InfoNCE losses: labels at or above it are positives (1-5)")
    ] = 4,
    gpu: Annotated[bool, typer.Option(help="GPU workers (NCCL)")] = False,
    storage_path: Annotated[
        str | None,
        typer.Option(help="checkpoints: a folder or s3://... (default OUT-checkpoints)"),
    ] = None,
    synth_videos: Annotated[
        Path | None, typer.Option(help="synthetic videos (default: beside the samples, if there)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Train the dual encoder with Ray Train (TorchTrainer, DDP) and write a loadable MODEL_DIR."""

    from crops.model.train import TrainConfig
    from crops.model.train import train as run

    for path, what in ((samples, "--samples"), (videos, "--videos")):
        if not path.exists():
            _fail(f"{what} {path}: not found")
    video_files = [str(videos)]
    synth = synth_videos or samples.parent / "synth_videos.parquet"
    if synth.exists():
        video_files.append(str(synth))
    elif synth_videos is not None:
        _fail(f"--synth-videos {synth_videos}: not found")
    cfg = _options(
        TrainConfig,
        samples=str(samples),
        videos=video_files,
        out=str(out),
        loss=loss.value,
        encoder=encoder,
        shared=not separate_towers,
        **({} if workers is None else {"workers": workers}),
        queries_per_batch=queries_per_batch,
        group_size=group_size,
        lr=lr,
        hard_negatives=hard_negatives,
        n_hard=n_hard,
        steps_per_epoch=steps_per_epoch,
        stop=stop_options(max_steps, patience, eval_every, val_fraction),
        **({} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}),
        positive_min_label=positive_min_label,
        use_gpu=gpu,
        storage_path=storage_path,
        seed=seed,
    )
    if not (encoder == "hash" or encoder.startswith("hf:")):
        _fail(f"--encoder {encoder!r}: use hash or hf:<name-or-path>")
    from crops.schema import SchemaError

    try:
        with _progress_bar() as progress:
            summary = run(cfg, progress)
    except (SchemaError, ValueError) as exc:
        _fail(str(exc))
        return
    m = summary["metrics"]
    loss_value = m.get("loss", float("nan"))
    console.print(
        f"[bold]model written to {out}[/]: {summary['steps']} steps, loss {loss_value:.4f},"
        f" {m.get('samples_per_s', 0):,.0f} samples/s, {summary['wall_s']:.0f} s;"
        f" {summary['validation']['why_stopped']}"
    )
    if summary["samples_without_video"]:
        console.print(
            f"[yellow]{summary['samples_without_video']} samples skipped: their video is in"
            " none of the video files[/]"
        )


@app.command()
def evaluate(
    world: Annotated[Path | None, typer.Option(help="a simulated world: CT, QR, graded")] = None,
    trec_dir: Annotated[
        Path | None, typer.Option(help="a collection: TSV docs, TSV queries, TREC qrels")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="MODEL_DIR from `crops train`")] = None,
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


@app.command()
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
        float | None,
        typer.Option(help="seconds of local-LLM synthesis when mining into OUT (default 1200)"),
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option(help="only these rows (repeat); default all")
    ] = None,
    encoder: Annotated[str, typer.Option(help="hash | hf:<name-or-path>")] = "hash",
    max_steps: Annotated[
        int | None, typer.Option(help="cap on each method's steps (default: the stop rule's)")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="evaluations without gain before a method stops; 0: --max-steps each"),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="steps between validations")] = None,
    level_filter: Annotated[
        float | None,
        typer.Option(help="'CroPS + level filter' row's threshold (default: relevance threshold)"),
    ] = None,
    queries_per_batch: Annotated[int, typer.Option(help="query groups per batch")] = 32,
    group_size: Annotated[int, typer.Option(help="samples per query group")] = 8,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers a run (default 1)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    force: Annotated[bool, typer.Option(help="retrain rows that already have results")] = False,
) -> None:
    """Train and evaluate the paper's table (BM25, NCE, DPR, ANCE, FS-LR, the CroPS ladder)."""
    from crops.evaluate.collection import CollectionError
    from crops.evaluate.experiment import (
        COLUMNS,
        ExperimentConfig,
        method_by_name,
        run_experiment,
    )
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
        **({} if synth_budget_s is None else {"synth_budget_s": synth_budget_s}),
        encoder=encoder,
        stop=stop_options(max_steps, patience, eval_every),
        **({} if level_filter is None else {"level_filter": level_filter}),
        queries_per_batch=queries_per_batch,
        group_size=group_size,
        **({} if workers is None else {"workers": workers}),
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


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="MODEL_DIR from `crops train`")],
    index: Annotated[Path, typer.Option(help="INDEX_DIR built from that model (`crops index`)")],
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8080,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: all)")] = "127.0.0.1",
    name: Annotated[str, typer.Option(help="model name in the URL: /v1/models/NAME:predict")] = (
        "crops"
    ),
    max_top_k: Annotated[int, typer.Option(help="refuse larger top_k (HTTP 400)")] = 1000,
    max_batch: Annotated[int, typer.Option(help="refuse more queries per request")] = 64,
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

    limits = _options(Limits, max_top_k=max_top_k, max_batch=max_batch)
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


@app.command()
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


@app.command("index")
def index_command(
    model: Annotated[Path, typer.Option(help="MODEL_DIR from `crops train`")],
    videos: Annotated[
        list[Path], typer.Option(help="videos table; repeat for more (e.g. synth_videos.parquet)")
    ],
    out: Annotated[Path, typer.Option(help="INDEX_DIR to write")],
    factory: Annotated[
        str, typer.Option(help="FAISS factory string: Flat | HNSW32 | IVF4096,PQ32 | ...")
    ] = "Flat",
    batch_size: Annotated[int, typer.Option(help="texts per embedding batch")] = 256,
    actors: Annotated[int, typer.Option(help="Ray Data embedding actors")] = 2,
    shard_size: Annotated[int, typer.Option(help="vectors per shard (IVF/PQ/SQ: Ray tasks)")] = (
        250_000
    ),
    train_size: Annotated[int, typer.Option(help="training sample (IVF, PQ, SQ)")] = 100_000,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists searched (default 32)")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (default 64)")] = None,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--no-gpu", help="default: GPUs when Ray has any")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an index already in OUT")] = False,
) -> None:
    """Embed every video with Ray Data and build a FAISS index folder (inner product)."""
    from crops.index.build import IndexConfig, build_index

    cfg = _options(
        IndexConfig,
        model_dir=str(model),
        videos=[str(v) for v in videos],
        out=str(out),
        factory=factory,
        batch_size=batch_size,
        actors=actors,
        shard_size=shard_size,
        train_size=train_size,
        nprobe=nprobe,
        ef_search=ef_search,
        use_gpu=gpu,
        force=force,
    )
    try:
        with _progress_bar() as progress:
            summary = build_index(cfg, progress)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    shown = {
        "count": summary["count"],
        "dim": summary["dim"],
        "factory": summary["factory"],
        "shards": f"{summary['shards']} ({summary['shard_mode']})",
        "embed_s": summary["embed_s"],
        "build_s": summary["build_s"],
        "path": summary["path"],
    }
    for key in ("nprobe", "ef_search"):
        if key in summary:
            shown[key] = summary[key]
    console.print(f"[bold]index written to {out}[/]")
    console.print(_summary_table(shown, "index"))


pipeline_app = typer.Typer(
    name="pipeline",
    help="The Kubeflow pipeline: compile it, run it here (kfp.local), submit it to a cluster.",
    no_args_is_help=True,
    add_completion=False,
)


@contextmanager
def _image_warnings() -> Iterator[None]:
    """The library's ImageWarnings as plain `warning:` lines on stderr; others as usual."""
    import warnings

    from crops.pipeline import ImageWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, ImageWarning):
                    err.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


_SYNTHESIS_HELP = (
    "endpoint (an LLM server; its Secret is required) | vllm-offline (GPU mine task) | none"
)


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="IR YAML to write")] = Path("crops_pipeline.yaml"),
    target: Annotated[str, typer.Option(help="cluster | local")] = "cluster",
    image: Annotated[
        str | None, typer.Option(help="image of every task (default crops:0.1.0)")
    ] = None,
    source: Annotated[str, typer.Option(help="simulate | ingest (the world_uri parameter)")] = (
        "simulate"
    ),
    synthesis: Annotated[str, typer.Option(help=_SYNTHESIS_HELP)] = "endpoint",
    task_gpus: Annotated[int, typer.Option(help="GPUs of the train/index tasks themselves")] = 0,
    s3_secret: Annotated[
        str | None, typer.Option(help="a Secret with AWS_* keys for s3:// URIs")
    ] = None,
) -> None:
    """Compile the pipeline to KFP v2 IR YAML (cluster: GPU nodes, PVC, Secrets).

    For the cluster it warns when the image names no registry host.
    """
    from crops.pipeline import PipelineError, compile_pipeline

    options: dict = {"source": source, "synthesis": synthesis, "task_gpus": task_gpus}
    if image:
        options["image"] = image
    if s3_secret:
        options["s3_secret"] = s3_secret
    try:
        with _image_warnings():
            path = compile_pipeline(out, target, **options)
    except PipelineError as exc:
        _fail(str(exc))
        return
    console.print(f"[bold]pipeline compiled to {path}[/] (target {target})", highlight=False)


@pipeline_app.command("run")
def pipeline_run(
    local: Annotated[bool, typer.Option("--local", help="run here under kfp.local")] = False,
    scale: Annotated[str, typer.Option(help="world size: default | tiny")] = "default",
    seed: Annotated[int, typer.Option(help="world seed")] = 1,
    max_steps: Annotated[
        int | None,
        typer.Option(help="cap on each model's steps (default: converge, the stop rule's cap)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="pipeline root: task outputs and logs")] = Path(
        "runs/pipeline"
    ),
    param: Annotated[
        list[str] | None, typer.Option(help="another pipeline argument NAME=VALUE (repeat)")
    ] = None,
    cache: Annotated[bool, typer.Option(help="reuse the outputs of unchanged tasks")] = False,
    verbose: Annotated[bool, typer.Option(help="show every task's output")] = False,
) -> None:
    """Run the whole pipeline here under kfp.local, on the embedded default world."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from crops.evaluate.experiment import COLUMNS
    from crops.pipeline import PipelineError, build, local_arguments, parse_params, run_local

    if not local:
        _fail("give --local (to run on a cluster: crops pipeline submit --host URL)")
    try:
        arguments = local_arguments(
            scale, seed, max_steps, parse_params(param or [], build("local"))
        )
    except PipelineError as exc:
        _fail(str(exc))
        return
    columns = (
        SpinnerColumn(finished_text="[green]done[/]"),
        TextColumn("{task.description:<40}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[last]}"),
    )
    live = err.is_terminal and not verbose
    with Progress(*columns, console=err, disable=not live, redirect_stdout=False) as bar:
        ids: dict[str, int] = {}
        finished: set[str] = set()

        def on_task(event: str, name: str, label: str, detail: str) -> None:
            if event == "start":
                ids[name] = bar.add_task(label, total=1, last="")
            elif event == "update":
                if name in ids and name not in finished:  # a late tick of a finished task
                    bar.update(ids[name], last=escape(detail[-80:]))
                return
            elif event == "success":
                finished.add(name)
                bar.update(ids[name], completed=1, last=f"{detail} s")
            else:
                finished.add(name)
                bar.update(ids[name], description=f"[red]{label} (failed)[/]", last="")
                bar.stop_task(ids[name])
            if not live:
                word = {"start": "start", "success": "done ", "failure": "FAIL "}[event]
                took = f" ({detail} s)" if event != "start" else ""
                err.print(f"{word} {label}{took}", highlight=False)

        err.print(f"running the pipeline under kfp.local into {out} ...", highlight=False)
        try:
            result = run_local(out, arguments, on_task=on_task, verbose=verbose, cache=cache)
        except PipelineError as exc:
            bar.stop()
            _fail(str(exc), code=1)
            return
    table = Table(title="offline retrieval (%)", header_style="bold")
    table.add_column("method")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    for name, scores in result["offline"]["scores"].items():
        table.add_row(name, *(f"{100 * scores[key]:.1f}" for key, _ in COLUMNS))
    console.print(table)
    decision = result["decision"]
    colour = {"promote": "green", "hold": "yellow", "rollback": "red"}[decision["action"]]
    console.print(
        f"A/B decision: [bold {colour}]{decision['action'].upper()}[/] after look "
        f"{result['looks_run']} of {result['looks_planned']}",
        highlight=False,
    )
    for reason in decision["reasons"]:
        console.print(f"  - {escape(reason)}", highlight=False, soft_wrap=True)
    shown = {
        "run folder": result["run_dir"],
        "offline table": result["offline_table"],
        "A/B report": result["ab_report_md"],
        "A/B report (json)": result["ab_report_json"],
        "InferenceService manifest": result["isvc_manifest"],
        "task logs": result["log"],
        "summary": result["summary_json"],
    }
    for what, path in shown.items():
        console.print(f"{what}: {path}", highlight=False, soft_wrap=True)
    console.print(f"pipeline finished in {result['wall_s']:.0f} s", highlight=False)


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[str, typer.Option(help="the KFP API, e.g. http://localhost:8888")],
    experiment: Annotated[str, typer.Option(help="experiment to file the run under")] = "crops",
    param: Annotated[
        list[str] | None, typer.Option(help="a pipeline argument NAME=VALUE (repeat)")
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="default crops-<time>")] = None,
    package: Annotated[
        Path | None, typer.Option(help="a compiled package (default: compile for the cluster)")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="namespace of the pipeline's pods and of what they create (the pipeline's"
            " `namespace` parameter); multi-user KFP: your profile namespace; standalone KFP:"
            " its own [default: kubeflow]"
        ),
    ] = None,
    service_account: Annotated[
        str, typer.Option(help="the run's ServiceAccount (RayJob, InferenceService rights)")
    ] = "crops-pipeline",
    image: Annotated[str | None, typer.Option(help="image of every task")] = None,
    synthesis: Annotated[str, typer.Option(help=_SYNTHESIS_HELP)] = "endpoint",
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="kubeconfig for the preflight (default: in-cluster, ~/.kube/config)"),
    ] = None,
    skip_preflight: Annotated[
        bool, typer.Option("--skip-preflight", help="submit without checking the namespace")
    ] = False,
) -> None:
    """Submit a run of the pipeline to a Kubeflow Pipelines backend.

    Before the run is created, a preflight checks with your kubeconfig that the pods'
    namespace has what they need (ServiceAccount and its rights, the artifacts PVC, the
    ConfigMap crops-platform, the LLM Secret and its keys when LLM synthesis is asked for),
    and names everything missing. Exit status: 0 submitted, 2 bad input or a failed preflight,
    1 the KFP host or the Kubernetes API is unreachable, or the host refuses the run.
    """
    from crops.pipeline import HostError, PipelineError, build, parse_params, submit

    options: dict = {"synthesis": synthesis}
    if image:
        options["image"] = image
    try:
        with _image_warnings():
            arguments = parse_params(param or [], build("cluster", **options))
            result = submit(
                host,
                arguments=arguments,
                experiment=experiment,
                run_name=run_name,
                package=package,
                namespace=namespace,
                service_account=service_account,
                options=options,
                kubeconfig=kubeconfig,
                skip_preflight=skip_preflight,
            )
    except HostError as exc:
        _fail(str(exc), code=1)
        return
    except PipelineError as exc:
        _fail(str(exc))
        return
    report = result["preflight"]
    if report is not None:
        for note in report.notes:
            err.print(f"[yellow]preflight:[/] {escape(note)}", highlight=False, soft_wrap=True)
        err.print(
            f"preflight: namespace {result['namespace']} has what the run needs"
            f" ({len(report.passed)} checks passed)",
            highlight=False,
        )
    console.print(
        f"[bold]run {result['run_id']} submitted[/] (experiment {result['experiment']},"
        f" pods in namespace {result['namespace']} as {result['service_account']}):"
        f" {result['url']}",
        highlight=False,
        soft_wrap=True,
    )


app.add_typer(pipeline_app, name="pipeline")
app.add_typer(abtest_app, name="abtest")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
