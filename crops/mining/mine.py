"""`crops mine`: logs in, graded samples out (samples.parquet, synth_videos.parquet, report.json).

Every input table is validated against its contract; bad rows go to OUT/_quarantine with the
reason, and the report counts them. The miners propose candidates, the relevance filter keeps
the relevant ones, synthesis adds LLM-made positives for queries that have few, and HLA grades
and de-duplicates everything into the `samples` contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from crops.mining.config import MineConfig
from crops.mining.hla import assemble, cascade_samples, labelled, to_arrow
from crops.mining.recfeed import recfeed_candidates
from crops.mining.reformulation import window_ms, windowed_candidates
from crops.mining.reformulation_window import next_query_gaps, report_windows, window_report
from crops.mining.synthesis import SynthesisBackend, SynthesisResult
from crops.schema import (
    HLA_LABELS,
    LEVEL_SOURCES,
    TS,
    VIDEOS,
    load_table,
    video_text,
    write_quarantine,
)

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

#: Synthetic video ids live above 2**62 so they never collide with a platform's own ids.
SYNTHETIC_ID_BASE = 1 << 62


def load_inputs(world: Path, out: Path) -> tuple[dict[str, pl.DataFrame], dict]:
    """Validated videos, search_log and rec_log; quarantined rows written under OUT."""
    frames, reports = {}, {}
    videos, q, rep = load_table(world / "videos.parquet", "videos")
    write_quarantine(q, out, "videos")
    frames["videos"], reports["videos"] = videos, rep.as_dict()
    # only valid videos: a sample needs its video's text, so log rows of a quarantined video
    # are quarantined too ("video_id not in videos") and counted, never mined blind
    ids = videos["video_id"]
    for name in ("search_log", "rec_log"):
        valid, q, rep = load_table(world / f"{name}.parquet", name, video_ids=ids)
        write_quarantine(q, out, name)
        frames[name], reports[name] = valid, rep.as_dict()
    return frames, reports


def apply_filter(
    candidates: pl.DataFrame,
    texts: pl.DataFrame,
    scorer,
    threshold: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Score candidates with the relevance filter and keep those above the threshold."""
    if candidates.height == 0 or scorer is None:
        kept = candidates.with_columns(pl.lit(None, pl.Float32).alias("relevance"))
        return kept, {"candidates": candidates.height, "passed": kept.height, "pass_rate": 1.0}
    joined = candidates.join(texts, on="video_id", how="left")
    scores = scorer.score(
        joined["query"].to_list(), joined["text"].fill_null("").to_list(), progress
    )
    scored = joined.with_columns(pl.Series("relevance", scores, pl.Float32)).drop("text")
    kept = scored.filter(pl.col("relevance") > threshold)
    return kept, {
        "candidates": candidates.height,
        "passed": kept.height,
        "pass_rate": kept.height / candidates.height,
        "score_p50": float(np.median(scores)),
    }


def score_levels(
    samples: pl.DataFrame,
    texts: pl.DataFrame,
    scorer,
    threshold: float | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Score the search log's level samples (labels 1-3) with the relevance filter, recording
    the score in their `relevance` column, and with a threshold (`--level-filter`, an
    extension the paper does not make) drop those scoring at or below it, counted per source.

    Without a scorer the levels keep a null relevance, and a threshold is an error: nothing is
    dropped on a score that was never computed.
    """
    is_level = pl.col("source").is_in(LEVEL_SOURCES)
    levels = samples.filter(is_level)
    stats: dict = {"threshold": threshold, "scored": 0, "dropped": 0, "dropped_by_source": {}}
    if scorer is None:
        if threshold is not None:
            raise ValueError(
                f"level_filter {threshold} needs the relevance filter's scores: set a filter"
                " model (filter_model 'none' scores nothing)"
            )
        stats["note"] = "no filter model: level samples not scored"
        return samples, stats
    scored, _ = apply_filter(
        levels.drop("relevance"), texts, scorer, threshold=-1.0, progress=progress
    )
    stats["scored"] = scored.height
    if scored.height:
        stats["score_p50"] = float(scored["relevance"].median())  # type: ignore[arg-type]
    if threshold is not None:
        dropped = scored.filter(pl.col("relevance") <= threshold)
        scored = scored.filter(pl.col("relevance") > threshold)
        stats["dropped"] = dropped.height
        stats["dropped_by_source"] = dict(
            dropped.group_by("source").len().sort("source").iter_rows()
        )
    stats["kept"] = scored.height
    out = pl.concat([samples.filter(~is_level), scored.select(samples.columns)])
    return out.sort(["query", "video_id"]), stats


def synthesis_queries(
    base: pl.DataFrame, search: pl.DataFrame, cfg: MineConfig
) -> tuple[list[str], dict]:
    """The policy: queries with fewer than `synth_min_positives` positives (label >= 4), the
    poorest first (then the most searched), at most `synth_max_queries` of them."""
    freq = search.group_by("query").agg(pl.col("request_id").n_unique().alias("searches"))
    positives = (
        base.filter(pl.col("label") >= 4).group_by("query").len().rename({"len": "positives"})
    )
    chosen = (
        freq.join(positives, on="query", how="left")
        .with_columns(pl.col("positives").fill_null(0))
        .filter(pl.col("positives") < cfg.synth_min_positives)
        .sort(["positives", "searches", "query"], descending=[False, True, False])
        .head(cfg.synth_max_queries)
    )
    policy = {
        "rule": f"queries with fewer than {cfg.synth_min_positives} positives (label >= 4), "
        f"fewest positives first, at most {cfg.synth_max_queries}, {cfg.synth_per_query} each",
        "eligible": int(
            freq.join(positives, on="query", how="left")
            .filter(pl.col("positives").fill_null(0) < cfg.synth_min_positives)
            .height
        ),
        "selected": chosen.height,
    }
    return chosen["query"].to_list(), policy


def synthetic_tables(result: SynthesisResult, backend: str) -> tuple[pa.Table, pl.DataFrame]:
    """synth_videos (the videos contract, synthetic=true) and their llm samples."""
    ids, rows = [], []
    for v in result.videos:
        key = f"{backend}|{result.stats.get('model')}|{result.stats.get('prompt_version')}|"
        key += f"{v.query}|{v.caption}"
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (1 << 61)
        ids.append(SYNTHETIC_ID_BASE + h)
        rows.append(v)
    table = pa.table(
        {
            "video_id": pa.array(ids, pa.int64()),
            "caption": [v.caption for v in rows],
            "tags": pa.array([list(v.tags) for v in rows], pa.list_(pa.string())),
            "cover_text": [v.cover_text for v in rows],
            "category": pa.nulls(len(rows), pa.string()),
            "upload_ts": pa.nulls(len(rows), TS),
            "synthetic": pa.array([True] * len(rows), pa.bool_()),
            "source_query": [v.query for v in rows],
        },
        schema=VIDEOS,
    )
    samples = pl.DataFrame(
        {
            "query": [v.query for v in rows],
            "video_id": ids,
            "request_id": [None] * len(rows),
            "session_id": [None] * len(rows),
        },
        schema={
            "query": pl.String,
            "video_id": pl.Int64,
            "request_id": pl.Int64,
            "session_id": pl.Int64,
        },
    )
    return table, samples


def quality(world_dir: Path, samples: pl.DataFrame, search: pl.DataFrame, synth: pa.Table) -> dict:
    """Per source: precision of positives against the world's truth, and the never-shown share.

    Catalogue videos are graded by the truth itself; synthesised ones by the world's relevance
    model for texts (`crops.world.judge`), whose error on the catalogue is reported beside it.
    The llm source is also broken down by the kind of query it answered (head, colloquial,
    ambiguous, ...), and for ambiguous queries by how many of their senses the videos cover.
    """
    if not (world_dir / "world.json").exists():
        return {"note": "no ground truth: the input is not a simulated world"}
    from crops.world.catalog import FORM_KINDS
    from crops.world.judge import TextJudge, synthetic_text
    from crops.world.world import World

    world = World.load(world_dir)
    judge = TextJudge(world)
    shown = (
        search.filter(pl.col("stage") == "shown")
        .select("query", "video_id")
        .unique()
        .with_columns(pl.lit(True).alias("shown"))
    )
    pos = samples.filter(pl.col("label") >= 4).join(shown, on=["query", "video_id"], how="left")
    synth_text = dict(
        zip(
            synth["video_id"].to_pylist(),
            map(
                synthetic_text,
                synth["caption"].to_pylist(),
                synth["tags"].to_pylist(),
                synth["cover_text"].to_pylist(),
            ),
            strict=True,
        )
    )
    out: dict = {}
    by_kind: dict[str, list[int]] = {}  # kind -> [positives, relevant, same facet]
    senses_hit: list[tuple[int, int]] = []  # ambiguous queries: (senses covered, senses)
    for source in ("reformulation", "recfeed", "llm", "click"):
        part = pos.filter(pl.col("source") == source)
        if part.height == 0:
            out[source] = {"positives": 0, "precision": None, "never_shown_share": None}
            continue
        relevant = 0
        for query, group in part.group_by("query"):
            q = query[0]
            ids = group["video_id"].to_numpy()
            if source != "llm":
                relevant += int((world.query_grades(q, ids) >= 2).sum())
                continue
            verdicts = [judge.judge(q, synth_text[int(v)]) for v in ids]
            relevant += sum(v.relevant for v in verdicts)
            f = world.form_id(q)
            kind = FORM_KINDS[int(world.forms.kind[f])] if f is not None else "unknown"
            row = by_kind.setdefault(kind, [0, 0, 0])
            row[0] += len(verdicts)
            row[1] += sum(v.relevant for v in verdicts)
            row[2] += sum(v.grade == 3 for v in verdicts)
            if kind == "ambiguous":
                # a sense is one of the topics the query can mean (its intents' topics)
                senses = {int(t) for t in world.intents.topic[world.forms.senses[f]]}
                topics = {int(world.intents.topic[v.intent]) for v in verdicts if v.intent >= 0}
                senses_hit.append((len(senses & topics), len(senses)))
        out[source] = {
            "positives": part.height,
            "precision": relevant / part.height,
            "never_shown_share": float(part["shown"].is_null().mean()),
        }
    if by_kind:
        out["llm"]["by_query_kind"] = {
            k: {"positives": n, "precision": r / n, "same_facet_share": f3 / n}
            for k, (n, r, f3) in sorted(by_kind.items())
        }
    if senses_hit:
        out["llm"]["ambiguous_senses_covered"] = {
            "queries": len(senses_hit),
            "mean_covered": float(np.mean([c for c, _ in senses_hit])),
            "mean_senses": float(np.mean([n for _, n in senses_hit])),
            "sense": "a topic the query can mean",
        }
    out["judged_by"] = (
        "grade >= 2 of the simulator's truth; llm videos (made up) by the world's relevance"
        " model for texts (crops.world.judge), validated on catalogue videos below"
    )
    out["llm_judge"] = judge.validate()
    return out


def mine(
    world_dir: str | Path,
    out: str | Path,
    cfg: MineConfig,
    backend: SynthesisBackend,
    *,
    scorer=None,
    progress: Progress | None = None,
) -> dict:
    """Run the data engine; returns the report (also written to OUT/report.json)."""
    world_dir, out = Path(world_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        t = now
        if progress:
            progress("mine", len(timings), 7)

    frames, inputs = load_inputs(world_dir, out)
    search, rec = frames["search_log"].lazy(), frames["rec_log"].lazy()
    step("load_and_validate")

    cascade = cascade_samples(search)
    # the mined window among the reported ones: what is mined and its yield are one frame
    mined_s = cfg.reformulation_window_s
    by_window = windowed_candidates(search, report_windows(mined_s), cfg.long_play_ms)
    feed = recfeed_candidates(
        search, rec, cfg.feed_window_s, cfg.feed_max_per_user, cfg.long_play_ms
    )
    cascade, by_window, feed, gaps = pl.collect_all(
        [cascade, by_window, feed, next_query_gaps(search)]
    )
    reform = by_window.filter(pl.col("window_ms") == window_ms(mined_s)).drop("window_ms")
    window = window_report(gaps["gap_s"], by_window, mined_s)
    step("mine_logs")

    texts = video_text(frames["videos"])

    def filter_progress(done: int, total: int) -> None:
        if progress:
            progress("filter", done, total)

    reform_kept, reform_stats = apply_filter(
        reform, texts, scorer, cfg.relevance_threshold, filter_progress
    )
    feed_kept, feed_stats = apply_filter(
        feed, texts, scorer, cfg.relevance_threshold, filter_progress
    )
    step("relevance_filter")

    base_parts = [
        cascade.lazy(),
        labelled(reform_kept.lazy(), "reformulation", "relevance"),
        labelled(feed_kept.lazy(), "recfeed", "relevance"),
    ]
    base, level_stats = score_levels(
        assemble(base_parts), texts, scorer, cfg.level_filter, filter_progress
    )
    step("level_filter")
    queries, policy = synthesis_queries(base, frames["search_log"], cfg)

    def synth_progress(done: int, total: int) -> None:
        if progress:
            progress("synthesize", done, total)

    result = backend.synthesize(queries, cfg.synth_per_query, progress=synth_progress)
    synth, llm = synthetic_tables(result, backend.name)
    llm_q = pl.DataFrame(
        result.quarantine,
        schema={"query": pl.String, "reason": pl.String, "detail": pl.String, "attempts": pl.Int64},
    )
    write_quarantine(llm_q, out, "llm")
    step("synthesize")

    samples = assemble([base.lazy(), labelled(llm.lazy(), "llm")])
    pq.write_table(to_arrow(samples), out / "samples.parquet", compression="zstd")
    pq.write_table(synth, out / "synth_videos.parquet", compression="zstd")
    step("assemble_and_write")

    by_source = dict(samples.group_by("source").len().sort("source").iter_rows())
    by_label = {str(k): v for k, v in samples.group_by("label").len().sort("label").iter_rows()}
    report = {
        "inputs": inputs,
        "quarantined": {
            **{name: r["quarantined"] for name, r in inputs.items()},
            "llm": llm_q.height,
        },
        "filter": {
            "model": None if scorer is None else scorer.model_name,
            "score": "(1 + cosine) / 2 of the bi-encoder's embeddings",
            "threshold": cfg.relevance_threshold,
            "reformulation": reform_stats,
            "recfeed": feed_stats,
            "texts_encoded": 0 if scorer is None else scorer.encoded,
        },
        "reformulation_window": window,
        "level_filter": level_stats,
        "synthesis": {
            **result.stats,
            "policy": policy,
            "videos": synth.num_rows,
            "note": None
            if backend.is_llm
            else f"{backend.name}: synthetic metadata NOT from an LLM",
        },
        "samples": {
            "rows": samples.height,
            "queries": samples["query"].n_unique(),
            "by_source": by_source,
            "by_label": by_label,
            "hla": HLA_LABELS,
        },
    }
    report["quality"] = quality(world_dir, samples, frames["search_log"], synth)
    step("quality")
    report["timings_s"] = timings
    report["config"] = cfg.model_dump()
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
