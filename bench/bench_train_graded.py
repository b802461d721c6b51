"""Benchmark: hash-encoder training speed on graded (human-judged) collections (issue 17).

Two real collections, built here as contract tables (samples.parquet with source "judged" and
labels by `crops.schema.judged_label`, videos.parquet with int64 ids and the titles or docs as
captions), trained through `crops.model.train.train` (what `crops train` runs) with the hash
encoder, one Ray worker, the stop rule's defaults but a fixed number of steps (patience off,
validation every `eval_every` steps on the default held-out share, as a user's run has):

- reference: NFCorpus dev (325 queries, about 45 graded judgements each, 3/2/1 -> 5/4/2);
- QBQTC-shaped: QBQTC's train split (791 queries, about 19 titles each, 0/1/2 -> 1/3/5) cut
  into the shape of its 18,802-query dev split (many queries, a few judged titles each):
  each query's titles in chunks of `--titles` (default 3), each chunk a query of its own
  (the query text with the chunk number appended, so it is a distinct training query), and
  the whole set repeated `--copies` times with the copy number appended to the queries and
  titles (default 4: about 20,000 queries and 60,000 titles, as many as judgements);
- with --as-is, QBQTC as it is (791 queries, ~19 titles each), for the record.

The figure is the trainer's own samples/s (`samples_per_s` of the epoch it reports: docs
trained per second over the run, the validation at the last step included; one epoch of
`--steps` steps). Ratios are against the NFCorpus run in the same process (goal: QBQTC-shaped
/ NFCorpus >= 0.5).

    python bench/bench_train_graded.py [--steps 160] [--titles 3] [--copies 4] [--as-is]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import polars as pl  # noqa: E402

from crops.model.convergence import StopRule  # noqa: E402
from crops.model.train import TrainConfig, train  # noqa: E402
from crops.schema import JUDGED_SOURCE, SAMPLES, VIDEOS, judged_label  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROPS_SHARED", REPO.parent / "shared")) / "data"
GOAL_RATIO = 0.5


def write_tables(pairs: pl.DataFrame, top: int, out: Path) -> tuple[Path, Path]:
    """Contract tables from (query, text, grade) rows: one video per distinct text (int64 ids
    in first-seen order), one judged sample per row. Returns (samples, videos)."""
    out.mkdir(parents=True, exist_ok=True)
    texts = pairs.select("text").unique(maintain_order=True).with_row_index("video_id")
    videos = pl.DataFrame(
        {"video_id": texts["video_id"].cast(pl.Int64), "caption": texts["text"]}
    ).with_columns(pl.lit(False).alias("synthetic"))
    videos = videos.with_columns(
        [
            pl.lit(None, dtype=pl.from_arrow(VIDEOS.empty_table()).schema[c]).alias(c)
            for c in VIDEOS.names
            if c not in videos.columns
        ]
    ).select(VIDEOS.names)
    samples = pairs.join(texts, on="text").select(
        "query",
        pl.col("video_id").cast(pl.Int64),
        pl.col("grade")
        .map_elements(lambda g: judged_label(g, top), return_dtype=pl.Int8)
        .alias("label"),
        pl.lit(JUDGED_SOURCE).alias("source"),
    )
    schema = pl.from_arrow(SAMPLES.empty_table()).schema
    samples = samples.with_columns(
        [pl.lit(None, dtype=schema[c]).alias(c) for c in SAMPLES.names if c not in samples.columns]
    ).select(SAMPLES.names)
    samples.write_parquet(out / "samples.parquet")
    videos.write_parquet(out / "videos.parquet")
    return out / "samples.parquet", out / "videos.parquet"


def qbqtc_pairs(titles: int | None = None, copies: int = 1) -> pl.DataFrame:
    """QBQTC's (query, title, grade) rows; with `titles`, each query's titles in chunks of that
    many, each chunk a query of its own, the set repeated `copies` times (distinct queries)."""
    rows = pl.read_ndjson(SHARED / "qbqtc-train" / "train.json").select(
        "query", pl.col("title").alias("text"), pl.col("relevant").cast(pl.Int64).alias("grade")
    )
    if titles is None:
        return rows
    chunk = (pl.int_range(pl.len()).over("query") // titles).alias("chunk")
    rows = rows.with_columns(chunk)
    return pl.concat(
        rows.select(
            pl.format("{} {} {}", "query", "chunk", pl.lit(c)).alias("query"),
            pl.format("{} {}", "text", pl.lit(c)).alias("text") if c else "text",
            "grade",
        )
        for c in range(copies)
    )


def nfcorpus_pairs() -> pl.DataFrame:
    """NFCorpus dev's (query title, doc text, grade) rows from its 3-2-1 qrels."""
    folder = SHARED / "nfcorpus-dev"
    tsv = dict(separator="\t", has_header=False, quote_char=None)
    docs = pl.read_csv(folder / "dev.docs", new_columns=["doc", "text"], **tsv)
    queries = pl.read_csv(folder / "dev.titles.queries", new_columns=["qid", "query"], **tsv)
    qrels = pl.read_csv(folder / "dev.3-2-1.qrel", new_columns=["qid", "it", "doc", "grade"], **tsv)
    return (
        qrels.join(queries, on="qid")
        .join(docs, on="doc")
        .select("query", "text", pl.col("grade").cast(pl.Int64))
    )


def run(name: str, samples: Path, videos: Path, out: Path, steps: int) -> dict:
    """Train `steps` steps through crops.model.train.train; the trainer's figures."""
    cfg = TrainConfig(
        samples=str(samples),
        videos=[str(videos)],
        out=str(out),
        encoder="hash",
        steps_per_epoch=steps,  # one epoch: the last row's rate covers the whole run
        stop=StopRule(max_steps=steps, patience=None),
        name=f"bench-graded-{name}",
    )
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t0
    return {
        # the epoch's rate as the trainer reports it (steps and validation): one epoch, one rate
        "samples_per_s": summary["metrics"]["samples_per_s"],
        "steps": summary["steps"],
        "val_queries": summary["validation"]["queries"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--titles", type=int, default=3, help="titles per QBQTC-shaped query")
    parser.add_argument("--copies", type=int, default=4, help="copies of the QBQTC-shaped set")
    parser.add_argument("--as-is", action="store_true", help="also QBQTC train as it is")
    args = parser.parse_args(argv)
    collections = {
        "NFCorpus dev (reference)": (nfcorpus_pairs(), 3),
        f"QBQTC-shaped ({args.titles} titles/query)": (
            qbqtc_pairs(args.titles, args.copies),
            2,
        ),
    }
    if args.as_is:
        collections["QBQTC train (as is)"] = (qbqtc_pairs(), 2)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (pairs, top)) in enumerate(collections.items()):
            samples, videos = write_tables(pairs, top, Path(tmp) / f"data{i}")
            shape = (pairs["query"].n_unique(), pairs.height)
            results[name] = {**run(f"c{i}", samples, videos, Path(tmp) / f"model{i}", args.steps)}
            results[name]["shape"] = shape
    ref = results["NFCorpus dev (reference)"]["samples_per_s"]
    print(
        f"\n== hash encoder, `crops.model.train.train`, 1 worker, {args.steps} steps (one epoch),"
        f" validation every {StopRule().eval_every} steps and at the last, on the default"
        " held-out share"
    )
    print(
        f"{'collection':<34}{'queries':>9}{'samples':>9}{'val q':>7}{'samples/s':>11}{'ratio':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<34}{r['shape'][0]:>9,}{r['shape'][1]:>9,}{r['val_queries']:>7,}"
            f"{r['samples_per_s']:>11,.0f}{r['samples_per_s'] / ref:>7.2f}"
        )
    shaped = next(r for n, r in results.items() if n.startswith("QBQTC-shaped"))
    ratio = shaped["samples_per_s"] / ref
    print(
        f"QBQTC-shaped / NFCorpus {ratio:.2f}; goal >= {GOAL_RATIO}:"
        f" {'yes' if ratio >= GOAL_RATIO else 'no'}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
