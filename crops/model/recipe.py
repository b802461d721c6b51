"""The training recipe: which samples, which videos and which settings train a method's model.

One home for what `crops experiment`, the train component (in its task or as a RayJob) and the
RayJob entry point share: the rows of the paper's table (`METHODS`: sources, loss, hard
negatives), a method's sample subset and video files, and `Recipe`, the settings every method
trains with (batch shape, a fixed epoch length, the stop rule). `train_config()` turns them
into the one `TrainConfig` a run takes; a RayJob gets that same configuration as a JSON file
(`crops train --config`), so both backends see the same batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.mining.config import MineConfig
from crops.model.convergence import StopRule
from crops.model.train_config import TrainConfig

SEARCH_LOG = ("click", "exposed", "ranked", "prefiltered")
ORACLE_ROW = "CroPS, oracle synthesis"


class Method(BaseModel):
    name: str
    slug: str
    sources: tuple[str, ...] = ()
    loss: Literal["h-infonce", "infonce", "softmax"] = "h-infonce"
    hard_negatives: Literal["none", "bm25", "model"] = "none"
    level_filter: bool = Field(
        False, description="drop level samples (labels 1-3) at or below the config's threshold"
    )
    synthesis: Literal["llm", "oracle"] = Field(
        "llm", description="oracle: the samples come from the config's `oracle_mined` folder"
    )
    description: str = ""

    @property
    def dense(self) -> bool:
        return bool(self.sources)


METHODS: tuple[Method, ...] = (
    Method(name="BM25", slug="bm25", description="bm25s, English stop words"),
    Method(
        name="NCE",
        slug="nce",
        sources=("click",),
        loss="infonce",
        description="click positives, in-batch random negatives, InfoNCE",
    ),
    Method(
        name="DPR",
        slug="dpr",
        sources=("click",),
        loss="infonce",
        hard_negatives="bm25",
        description="NCE + BM25 hard negatives",
    ),
    Method(
        name="ANCE",
        slug="ance",
        sources=("click",),
        loss="infonce",
        hard_negatives="model",
        description="NCE + hard negatives from the model's own index, refreshed per epoch",
    ),
    Method(
        name="FS-LR",
        slug="fs-lr",
        sources=SEARCH_LOG,
        description="search-log levels graded by HLA, H-InfoNCE",
    ),
    Method(
        name="+reformulation",
        slug="plus-reformulation",
        sources=(*SEARCH_LOG, "reformulation"),
        description="FS-LR + query-reformulation positives",
    ),
    Method(
        name="+recommendation",
        slug="plus-recommendation",
        sources=(*SEARCH_LOG, "reformulation", "recfeed"),
        description="+ recommendation-feed positives",
    ),
    Method(
        name="CroPS",
        slug="crops",
        sources=(*SEARCH_LOG, "reformulation", "recfeed", "llm"),
        description="+ LLM-synthesised videos: all three perspectives",
    ),
    Method(
        name="binary InfoNCE",
        slug="binary-infonce",
        sources=(*SEARCH_LOG, "reformulation", "recfeed", "llm"),
        loss="infonce",
        description="CroPS samples, labels binarised (>= 4 positive), InfoNCE",
    ),
    Method(
        name="CroPS + level filter",
        slug="crops-level-filter",
        sources=(*SEARCH_LOG, "reformulation", "recfeed", "llm"),
        level_filter=True,
        description="CroPS without the level samples (labels 1-3) the relevance filter scores"
        " at or below the threshold (extension, not the paper's)",
    ),
    Method(
        name=ORACLE_ROW,
        slug="crops-oracle-synthesis",
        sources=(*SEARCH_LOG, "reformulation", "recfeed", "llm"),
        synthesis="oracle",
        description="CroPS with the knowledge backend's videos, which read the simulator's truth:"
        " the upper bound of synthesis (diagnostic, needs --oracle-mined)",
    ),
)

#: The level-filter row's threshold, on the relevance filter's (1 + cos) / 2 scale: the same
#: operating point as the positives' (taken from MineConfig.relevance_threshold, its one home).
#: On the default world it keeps 67.1 % of the level samples and drops 88.2 % of their grade-0
#: ones (12.9 % -> 2.3 %; `python bench/bench_miner_precision.py`, crops/mining/config.py).
LEVEL_FILTER_DEFAULT: float = MineConfig.model_fields["relevance_threshold"].default


def _default(field: str):
    return TrainConfig.model_fields[field].default


class Recipe(BaseModel):
    """The settings every method trains with, whatever runs it (experiment, task, RayJob)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = _default("encoder")
    stop: StopRule = Field(default_factory=StopRule, description="when each method stops")
    queries_per_batch: int = Field(_default("queries_per_batch"), ge=1)
    group_size: int = Field(_default("group_size"), ge=2)
    n_hard: int = Field(2, ge=1, description="hard negatives per group (DPR, ANCE)")
    steps_per_epoch: int = Field(
        500,
        ge=1,
        description="steps per epoch, fixed rather than derived from the data so every backend"
        " draws the same batches; ANCE refreshes its index at each",
    )
    workers: int = Field(
        _default("workers"),
        ge=1,
        description="Ray Train workers: 1 on a laptop (a second hash-encoder worker on 2 cores is"
        " slower: bench/bench_train.py part c); N on a cluster",
    )
    lr: float | None = Field(None, gt=0, description="default: the encoder's")
    seed: int = 0
    level_filter: float = Field(
        LEVEL_FILTER_DEFAULT,
        ge=0,
        le=1,
        description="the level-filter row drops level samples scoring at or below this, on the "
        "relevance filter's (1 + cos) / 2 scale (crops/mining/config.py measures it)",
    )


#: The recipe's defaults, for parameters that restate none of them (the train component's).
DEFAULTS = Recipe()


def method_by_name(name: str) -> Method:
    for m in METHODS:
        if m.name.lower() == name.lower() or m.slug == name.lower():
            return m
    known = ", ".join(m.name for m in METHODS)
    raise ValueError(f"unknown method {name!r}; known: {known}")


def subset_samples(
    mined: Path, method: Method, out: Path, level_filter: float | None = None
) -> tuple[Path, int]:
    """The method's samples (its sources only) as their own parquet file.

    A level-filter method also drops the level samples (labels 1-3) whose recorded relevance
    is at or below `level_filter` (default: `LEVEL_FILTER_DEFAULT`); their count, per source,
    is written to OUT/subset.json. Level samples without a score (a file mined with
    `--filter-model none`) are an error for such a method, never kept or dropped blind.
    """
    import polars as pl

    from crops.schema import LEVEL_SOURCES

    out.mkdir(parents=True, exist_ok=True)
    target = out / "samples.parquet"
    rows = pl.scan_parquet(mined / "samples.parquet").filter(
        pl.col("source").is_in(list(method.sources))
    )
    summary: dict = {"method": method.name, "sources": list(method.sources)}
    if method.level_filter:
        threshold = LEVEL_FILTER_DEFAULT if level_filter is None else level_filter
        level = pl.col("source").is_in(LEVEL_SOURCES)
        unscored = rows.filter(level & pl.col("relevance").is_null()).select(pl.len()).collect()
        if unscored.item():
            raise ValueError(
                f"{method.name}: {unscored.item()} level samples in {mined / 'samples.parquet'}"
                " have no relevance score; mine them with a filter model (crops mine without"
                " --filter-model none)"
            )
        drop = level & (pl.col("relevance") <= threshold)
        dropped = dict(rows.filter(drop).group_by("source").len().sort("source").collect().rows())
        rows = rows.filter(~drop)
        summary["level_filter"] = {
            "threshold": threshold,
            "dropped": sum(dropped.values()),
            "dropped_by_source": dropped,
        }
    rows.sink_parquet(target, compression="zstd")
    n = pl.scan_parquet(target).select(pl.len()).collect().item()
    if n == 0:
        raise ValueError(f"{method.name}: no samples from sources {method.sources} in {mined}")
    summary["rows"] = n
    (out / "subset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return target, n


@dataclass(frozen=True)
class TrainingData:
    """A method's training inputs: its sample subset and the video files the samples name."""

    samples: Path
    videos: tuple[Path, ...]
    rows: int


def training_data(
    method: Method, mined: Path, world_videos: Path, out: Path, level_filter: float | None = None
) -> TrainingData:
    """The method's samples (written under OUT) and its videos: the world's, plus the mined
    synthetic videos for a method that trains on the LLM source."""
    samples, n = subset_samples(mined, method, out, level_filter)
    videos = [world_videos]
    synth = mined / "synth_videos.parquet"
    if "llm" in method.sources and synth.is_file():
        videos.append(synth)
    return TrainingData(samples, tuple(videos), n)


def train_config(
    method: Method, recipe: Recipe, data: TrainingData, out: Path, **run
) -> TrainConfig:
    """The `TrainConfig` of a method's run. `run` holds what is about the run, not the recipe:
    name, storage_path, use_gpu."""
    if not method.dense:
        raise ValueError(f"{method.name} is not a trained method")
    return TrainConfig(
        samples=str(data.samples),
        videos=[str(v) for v in data.videos],
        out=str(out),
        loss=method.loss,
        encoder=recipe.encoder,
        stop=recipe.stop,
        steps_per_epoch=recipe.steps_per_epoch,
        queries_per_batch=recipe.queries_per_batch,
        group_size=recipe.group_size,
        hard_negatives=method.hard_negatives,
        n_hard=recipe.n_hard if method.hard_negatives != "none" else 0,
        workers=recipe.workers,
        lr=recipe.lr,
        seed=recipe.seed,
        **run,
    )


__all__ = [
    "DEFAULTS",
    "LEVEL_FILTER_DEFAULT",
    "METHODS",
    "ORACLE_ROW",
    "SEARCH_LOG",
    "Method",
    "Recipe",
    "TrainingData",
    "method_by_name",
    "subset_samples",
    "train_config",
    "training_data",
]
