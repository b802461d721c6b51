"""Mining an imported folder as the importer tests do: `crops mine` with no LLM and no
relevance filter, so what it finds is the logs' own evidence."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def mined_reformulations(run, world: Path, out: Path) -> pl.DataFrame:
    """`crops mine --world WORLD --out OUT --llm-backend none --filter-model none` through the
    CLI runner `run`; its reformulation samples (the command must exit 0)."""
    code, stdout, err = run(
        "mine", "--world", world, "--out", out, "--llm-backend", "none", "--filter-model", "none"
    )
    assert code == 0, stdout + err
    samples = pl.read_parquet(out / "samples.parquet")
    return samples.filter(pl.col("source") == "reformulation")
