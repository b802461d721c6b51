"""`crops mine`: the data engine (miners, relevance filter, LLM synthesis, HLA) over a world."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crops.console import console, defaults
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table
from crops.mining.config import MineConfig

#: the options' defaults are MineConfig's (their one home)
D = defaults(MineConfig)


class LlmBackendName(StrEnum):
    auto = "auto"
    endpoint = "endpoint"
    openai = "openai"
    local = "local"
    ray_batch = "ray-batch"
    knowledge = "knowledge"
    none = "none"
    vllm_offline = "vllm-offline"


class LlmEngineName(StrEnum):
    vllm = "vllm"
    llama_cpp = "llama.cpp"


DEFAULT_BACKEND, DEFAULT_ENGINE = LlmBackendName(D.llm_backend), LlmEngineName(D.llm_engine)


def mine(
    world: Annotated[Path, typer.Option(help="directory with videos, search_log and rec_log")],
    out: Annotated[Path, typer.Option(help="directory for samples, synth_videos, report")],
    llm_endpoint: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible server (vLLM): http://host:8000 (default: CROPS_LLM_ENDPOINT)"
        ),
    ] = D.llm_endpoint,
    llm_model: Annotated[
        str | None,
        typer.Option(
            help="model name the server serves (default: CROPS_LLM_MODEL, else the server is"
            " asked); the model of local, vllm-offline and ray-batch"
        ),
    ] = D.llm_model,
    llm_backend: Annotated[
        LlmBackendName,
        typer.Option(
            help="auto (an endpoint if given or in CROPS_LLM_ENDPOINT, else local) | endpoint"
            " (a server is required) | local (a real LLM here: llama.cpp's server with the"
            " packaged SmolLM2-135M, or --llm-model PATH.gguf) | knowledge (world knowledge,"
            " not an LLM, a diagnostic) | none | vllm-offline (vLLM's in-process engine on a GPU"
            " node, with --llm-model) | ray-batch (Ray Data batch inference: actors each holding"
            " an engine, see --llm-engine)"
        ),
    ] = DEFAULT_BACKEND,
    llm_engine: Annotated[
        LlmEngineName,
        typer.Option(
            help="ray-batch: vllm (GPU actors, --llm-model a HF model) | llama.cpp (a GGUF,"
            " default the packaged SmolLM2-135M; CPU actors with --llm-gpus-per-actor 0)"
        ),
    ] = DEFAULT_ENGINE,
    llm_actors: Annotated[
        int, typer.Option(help="ray-batch: actors, each with its own engine")
    ] = D.llm_actors,
    llm_gpus_per_actor: Annotated[
        float, typer.Option(help="ray-batch: GPUs per actor (0: CPU)")
    ] = D.llm_gpus_per_actor,
    llm_cache: Annotated[
        Path | None, typer.Option(help="SQLite cache of LLM replies (default OUT/llm_cache.sqlite)")
    ] = None,
    filter_model: Annotated[
        str, typer.Option(help="relevance filter: minilm | a sentence-transformers path | none")
    ] = D.filter_model,
    relevance_threshold: Annotated[
        float,
        typer.Option(
            help="keep reformulation and feed candidates scoring above this, on the filter's"
            " (1 + cos) / 2 scale"
        ),
    ] = D.relevance_threshold,
    level_filter: Annotated[
        float | None,
        typer.Option(
            help="an extension, off by default: drop level samples (labels 1-3) scoring at or"
            " below this, same scale; the summary counts them"
        ),
    ] = D.level_filter,
    window_s: Annotated[
        float,
        typer.Option(help="reformulation: a chain's queries within this of its first (s)"),
    ] = D.reformulation_window_s,
    feed_window_s: Annotated[
        float, typer.Option(help="feed window around a search, either side (s)")
    ] = D.feed_window_s,
    feed_max_per_user: Annotated[
        int, typer.Option(help="recfeed candidates per user, the closest first")
    ] = D.feed_max_per_user,
    synth_min_positives: Annotated[
        int, typer.Option(help="synthesise for queries with fewer positives than this")
    ] = D.synth_min_positives,
    synth_max_queries: Annotated[
        int, typer.Option(help="at most this many queries")
    ] = D.synth_max_queries,
    synth_per_query: Annotated[
        int, typer.Option(help="synthetic videos per query")
    ] = D.synth_per_query,
    synth_budget_s: Annotated[
        float | None,
        typer.Option(
            help="LLM server (local or an endpoint): stop synthesis after this many seconds"
            " (poorest first)"
        ),
    ] = D.synth_budget_s,
) -> None:
    """Mine graded samples: cascade labels, reformulation, recommendation feed, LLM synthesis."""

    from crops.mining.mine import mine as run
    from crops.mining.synthesis.factory import SynthesisSetupError, build_backend, resolve
    from crops.schema import SchemaError

    if not (world / "videos.parquet").exists():
        _fail(f"--world {world}: no videos.parquet there")
    if level_filter is not None and filter_model == "none":
        _fail("--level-filter needs the relevance filter's scores: not with --filter-model none")
    cfg = _options(
        MineConfig,
        reformulation_window_s=window_s,
        feed_window_s=feed_window_s,
        feed_max_per_user=feed_max_per_user,
        relevance_threshold=relevance_threshold,
        level_filter=level_filter,
        filter_model=filter_model,
        synth_min_positives=synth_min_positives,
        synth_max_queries=synth_max_queries,
        synth_per_query=synth_per_query,
        synth_budget_s=synth_budget_s,
        llm_backend=llm_backend.value,
        llm_endpoint=llm_endpoint,
        llm_model=llm_model,
        llm_engine=llm_engine.value,
        llm_actors=llm_actors,
        llm_gpus_per_actor=llm_gpus_per_actor,
    )
    try:  # the backend the settings (and CROPS_LLM_ENDPOINT / CROPS_LLM_MODEL) name
        cfg = resolve(cfg)
        backend = build_backend(
            cfg, world=world, cache=llm_cache or out / "llm_cache.sqlite", log_dir=out
        )
    except SynthesisSetupError as exc:
        _fail(str(exc))
    from crops.mining.relevance import relevance_filter

    try:
        scorer = relevance_filter(cfg)
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
    console.print(window_table(report["reformulation_window"]))
    console.print(gap_line(report["reformulation_window"]["gaps"]))
    console.print(synthesis_line(report["synthesis"]))
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


def window_table(window: dict) -> Table:
    """The reformulation yield per window (report.json's `reformulation_window`), the mined
    window marked: the evidence for `--window-s`."""
    table = Table(
        title="reformulation yield by window",
        caption="positives before the relevance filter; --window-s sets the mined window",
        header_style="bold",
    )
    for name in ("window", "positives", "share of widest"):
        table.add_column(name, justify="right")
    for row in window["yield"]:
        share = row["share_of_widest"]
        table.add_row(
            f"{row['window_s']:g} s" + (" (mined)" if row["mined"] else ""),
            str(row["positives"]),
            "-" if share is None else f"{share:.1%}",
        )
    return table


def gap_line(gaps: dict) -> str:
    """The quantiles of the gap to the next different query, on one line."""
    q = gaps["quantiles_s"]
    head = (
        f"gap to the user's next different query ({gaps['with_next_query']} of"
        f" {gaps['requests']} requests have one)"
    )
    if not gaps["with_next_query"]:
        return head
    return head + ": " + ", ".join(f"{k} {v:,.0f} s" for k, v in q.items())


def synthesis_line(syn: dict) -> str:
    """The summary's synthesis line; with no backend it says plainly that synthesis was off
    (not "none (not an LLM), 0 videos for 380 queries", which reads like a failed LLM)."""
    selected = syn["policy"]["selected"]
    if syn["backend"] == "none":
        return (
            "synthesis: off (--llm-backend none): no synthetic videos"
            f" ({selected} queries would have qualified)"
        )
    kind = (
        ""
        if "not an LLM" in syn["backend"]
        else (" (an LLM)" if syn["is_llm"] else " (not an LLM)")
    )
    return (
        f"synthesis: {syn['backend']}{kind},"
        f" {syn['videos']} videos for {selected} queries,"
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
