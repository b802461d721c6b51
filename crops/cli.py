"""`crops ...`: the command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="crops",
    help="Train and ship CroPS dense retrievers for short-video search.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _options(model, **values):
    """Build a pydantic settings model from CLI options; a bad value exits 2 naming it."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or model.__name__
        _fail(f"bad option {where}: {first['msg']}")


def _summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (when it is a terminal): yields progress(task, done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=not err.is_terminal) as bar:

        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield progress


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
    knowledge = "knowledge"
    none = "none"
    vllm_offline = "vllm-offline"


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
            help="without an endpoint: knowledge (world knowledge, not an LLM) | none |"
            " vllm-offline (vLLM's in-process engine on a GPU node, with --llm-model)"
        ),
    ] = None,
    llm_cache: Annotated[
        Path | None, typer.Option(help="SQLite cache of LLM replies (default OUT/llm_cache.sqlite)")
    ] = None,
    filter_model: Annotated[
        str, typer.Option(help="relevance filter: minilm | a sentence-transformers path | none")
    ] = "minilm",
    relevance_threshold: Annotated[float, typer.Option(help="keep candidates above this")] = 0.6,
    window_s: Annotated[float, typer.Option(help="reformulation window (s)")] = 90,
    feed_window_s: Annotated[float, typer.Option(help="feed window around a search (s)")] = 1800,
    feed_max_per_query: Annotated[int, typer.Option(help="recfeed positives per user+query")] = 100,
    synth_min_positives: Annotated[
        int, typer.Option(help="synthesise for queries with fewer positives than this")
    ] = 200,
    synth_max_queries: Annotated[int, typer.Option(help="at most this many queries")] = 1000,
    synth_per_query: Annotated[int, typer.Option(help="synthetic videos per query")] = 4,
) -> None:
    """Mine graded samples: cascade labels, reformulation, recommendation feed, LLM synthesis."""

    from crops.engine.config import MineConfig
    from crops.engine.mine import mine as run
    from crops.schema import SchemaError

    if llm_endpoint and llm_backend is not None:
        _fail("give --llm-endpoint (with --llm-model) or --llm-backend, not both")
    if llm_endpoint and not llm_model:
        _fail("--llm-endpoint needs --llm-model (the name `vllm serve` was started with)")
    if llm_backend == LlmBackendName.vllm_offline and not llm_model:
        _fail("--llm-backend vllm-offline needs --llm-model (a Hugging Face model name or path)")
    if not (world / "videos.parquet").exists():
        _fail(f"--world {world}: no videos.parquet there")
    backend_name = "openai" if llm_endpoint else (llm_backend or LlmBackendName.knowledge).value
    if backend_name == "knowledge" and not (world / "world.json").exists():
        _fail(
            f"--world {world} is not a simulated world (no world.json): the knowledge backend"
            " needs one; give --llm-endpoint or --llm-backend none"
        )
    cfg = _options(
        MineConfig,
        reformulation_window_s=window_s,
        feed_window_s=feed_window_s,
        feed_max_per_query=feed_max_per_query,
        relevance_threshold=relevance_threshold,
        filter_model=filter_model,
        synth_min_positives=synth_min_positives,
        synth_max_queries=synth_max_queries,
        synth_per_query=synth_per_query,
        llm_backend=backend_name,
        llm_endpoint=llm_endpoint,
        llm_model=llm_model,
    )
    backend = _synthesis_backend(cfg, world, llm_cache or out / "llm_cache.sqlite")
    scorer = None
    if filter_model != "none":
        from crops.engine.relevance import RelevanceFilter

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


def _synthesis_backend(cfg, world: Path, cache: Path):
    """The synthesis backend the options name."""
    from crops.engine import synthesis

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
    if cfg.llm_backend == "vllm-offline":
        try:
            return synthesis.VllmOfflineBackend(cfg.llm_model, cache_path=cache, seed=cfg.seed)
        except ImportError as exc:
            _fail(str(exc))
    if cfg.llm_backend == "knowledge":
        from crops.engine.knowledge import KnowledgeBackend
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
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP)")] = 2,
    epochs: Annotated[int, typer.Option(help="passes over the samples")] = 2,
    queries_per_batch: Annotated[int, typer.Option(help="query groups per global batch")] = 32,
    group_size: Annotated[int, typer.Option(help="samples per query group")] = 8,
    lr: Annotated[float | None, typer.Option(help="default 2e-5 (hf), 1e-3 (hash)")] = None,
    hard_negatives: Annotated[
        str, typer.Option(help="none | bm25 (DPR-style) | model (ANCE-style, refreshed per epoch)")
    ] = "none",
    n_hard: Annotated[int, typer.Option(help="hard negatives per query group")] = 0,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="cap steps (smoke runs)")] = None,
    gpu: Annotated[bool, typer.Option(help="GPU workers (NCCL)")] = False,
    storage_path: Annotated[
        str | None, typer.Option(help="checkpoints: a folder or s3://... (default OUT/checkpoints)")
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
        workers=workers,
        epochs=epochs,
        queries_per_batch=queries_per_batch,
        group_size=group_size,
        lr=lr,
        hard_negatives=hard_negatives,
        n_hard=n_hard,
        max_steps_per_epoch=max_steps_per_epoch,
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
        f"[bold]model written to {out}[/]: {cfg.epochs} epochs, loss {loss_value:.4f},"
        f" {m.get('samples_per_s', 0):,.0f} samples/s, {summary['wall_s']:.0f} s"
    )
    if summary["samples_without_video"]:
        console.print(
            f"[yellow]{summary['samples_without_video']} samples skipped: their video is in"
            " none of the video files[/]"
        )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
