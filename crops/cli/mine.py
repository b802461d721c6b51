"""`crops mine`: the data engine (miners, relevance filter, LLM synthesis, HLA) over a world."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from crops.console import console
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table


class LlmBackendName(StrEnum):
    local = "local"
    ray_batch = "ray-batch"
    knowledge = "knowledge"
    none = "none"
    vllm_offline = "vllm-offline"


class LlmEngineName(StrEnum):
    vllm = "vllm"
    llama_cpp = "llama.cpp"


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
