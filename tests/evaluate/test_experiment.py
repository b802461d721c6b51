"""The experiment's rows and sample subsets (fast: hand-made sample files, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from crops.evaluate.experiment import ExperimentConfig, _run_key, render_markdown
from crops.mining.config import MineConfig
from crops.mining.hla import to_arrow
from crops.model.recipe import LEVEL_FILTER_DEFAULT, METHODS, method_by_name, subset_samples
from crops.schema import HLA_LABELS
from crops.schema import LEVEL_SOURCES as LEVELS

LEVEL_ROW = "CroPS + level filter"


def samples_file(folder: Path, rows: list[tuple[str, int, str, float | None]]) -> Path:
    """A mined folder whose samples.parquet holds (query, video_id, source, relevance) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "query": [r[0] for r in rows],
            "video_id": [r[1] for r in rows],
            "label": [HLA_LABELS[r[2]] for r in rows],
            "source": [r[2] for r in rows],
            "relevance": [r[3] for r in rows],
            "request_id": [1] * len(rows),
            "session_id": [1] * len(rows),
        },
        schema_overrides={"label": pl.Int8, "relevance": pl.Float32},
    )
    pq.write_table(to_arrow(frame), folder / "samples.parquet")
    return folder


ROWS = [
    ("q", 1, "click", None),
    ("q", 2, "reformulation", 0.9),
    ("q", 3, "recfeed", 0.55),  # a positive below the level threshold: not a level, kept
    ("q", 4, "llm", None),
    ("q", 5, "exposed", 0.8),
    ("q", 6, "exposed", 0.6),  # at the threshold: dropped (kept only above it)
    ("q", 7, "ranked", 0.3),
    ("q", 8, "prefiltered", 0.61),
    ("q", 9, "prefiltered", 0.2),
]


def test_the_level_filter_row_sits_beside_crops_and_binary_infonce() -> None:
    names = [m.name for m in METHODS]
    assert names.index(LEVEL_ROW) == names.index("binary InfoNCE") + 1
    row, crops = method_by_name(LEVEL_ROW), method_by_name("CroPS")
    assert row.level_filter and not crops.level_filter
    assert (row.sources, row.loss, row.hard_negatives) == (
        crops.sources,
        crops.loss,
        crops.hard_negatives,
    )
    assert method_by_name("crops-level-filter") is row
    assert not any(m.level_filter for m in METHODS if m is not row)
    assert set(LEVELS) == {s for s, label in HLA_LABELS.items() if 1 <= label <= 3}


def test_level_filter_subset_drops_scored_levels_at_or_below_the_threshold(tmp_path) -> None:
    mined = samples_file(tmp_path / "m", ROWS)
    path, n = subset_samples(mined, method_by_name(LEVEL_ROW), tmp_path / "d", 0.6)
    kept = pl.read_parquet(path)
    assert sorted(kept["video_id"]) == [1, 2, 3, 4, 5, 8]
    assert n == kept.height == 6
    summary = json.loads((tmp_path / "d" / "subset.json").read_text())
    assert summary["level_filter"] == {
        "threshold": 0.6,
        "dropped": 3,
        "dropped_by_source": {"exposed": 1, "prefiltered": 1, "ranked": 1},
    }
    assert summary["rows"] == 6
    # another threshold, from the same mined file: no re-mining
    _, n = subset_samples(mined, method_by_name(LEVEL_ROW), tmp_path / "d2", 0.25)
    assert n == 8


def test_level_filter_subset_defaults_to_the_experiment_threshold(tmp_path) -> None:
    mined = samples_file(tmp_path / "m", ROWS)
    subset_samples(mined, method_by_name(LEVEL_ROW), tmp_path / "d")
    summary = json.loads((tmp_path / "d" / "subset.json").read_text())
    assert summary["level_filter"]["threshold"] == LEVEL_FILTER_DEFAULT
    assert ExperimentConfig(world="w", out="o").level_filter == LEVEL_FILTER_DEFAULT
    # one operating point for the filter: the level row gates at the positives' threshold
    assert MineConfig().relevance_threshold == LEVEL_FILTER_DEFAULT  # taken from it


def test_other_rows_ignore_the_level_filter(tmp_path) -> None:
    mined = samples_file(tmp_path / "m", ROWS)
    _, n = subset_samples(mined, method_by_name("CroPS"), tmp_path / "d", 0.99)
    assert n == len(ROWS)
    assert "level_filter" not in json.loads((tmp_path / "d" / "subset.json").read_text())


def test_level_filter_needs_scored_level_samples(tmp_path) -> None:
    unscored = [*ROWS, ("q", 10, "ranked", None)]
    mined = samples_file(tmp_path / "m", unscored)
    with pytest.raises(ValueError, match="1 level samples .* have no relevance score"):
        subset_samples(mined, method_by_name(LEVEL_ROW), tmp_path / "d", 0.6)
    # rows without the filter do not need the scores
    _, n = subset_samples(mined, method_by_name("FS-LR"), tmp_path / "d3")
    assert n == 7  # click + 6 level samples, one unscored


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_experiment_level_filter_is_on_the_relevance_scale(bad: float) -> None:
    with pytest.raises(ValidationError, match="level_filter"):
        ExperimentConfig(world="w", out="o", level_filter=bad)


def test_the_threshold_changes_the_level_filter_rows_key_only(tmp_path) -> None:
    mined = samples_file(tmp_path / "m", ROWS)
    world = tmp_path / "w"
    world.mkdir()
    (world / "videos.parquet").write_bytes(b"stand-in: only its size and mtime are keyed")
    a = ExperimentConfig(world=str(world), out=str(tmp_path / "o"), level_filter=0.6)
    b = a.model_copy(update={"level_filter": 0.65})
    row, crops = method_by_name(LEVEL_ROW), method_by_name("CroPS")
    assert _run_key(a, row, mined) != _run_key(b, row, mined)
    assert _run_key(a, crops, mined) == _run_key(b, crops, mined)


def test_the_table_shows_the_level_filter_row() -> None:
    metrics = {"ct/R@100": 0.5, "qr/R@100": 0.4, "graded/nDCG@4": 0.7}
    results = {
        name: {"metrics": metrics, "description": method_by_name(name).description, "samples": 9}
        for name in ("CroPS", "binary InfoNCE", LEVEL_ROW)
    }
    md = render_markdown(
        {
            "world": "w",
            "mined": "m",
            "config": ExperimentConfig(world="w", out="o").model_dump(),
            "results": results,
            "goals": {},
        }
    )
    row = next(line for line in md.splitlines() if line.startswith(f"| {LEVEL_ROW} |"))
    assert "| 50.0 | 40.0 | 70.0 |" in row and "extension" in row
