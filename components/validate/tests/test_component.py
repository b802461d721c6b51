"""validate: the contract checks and the quarantine, through `python_func`; simulate and
validate run by `kfp.local` in subprocesses."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp import dsl, local
from kfp.dsl import Dataset, Metrics
from support.kfp_artifacts import given, out

from crops.components.simulate import simulate
from crops.components.validate import validate


def test_validate_counts_nothing_on_a_clean_world_and_leaves_it_untouched(
    tiny_dir: Path, tmp_path: Path
) -> None:
    quarantine, metrics = out(Dataset, tmp_path, "q"), out(Metrics, tmp_path, "m")
    result = validate.python_func(
        world=given(Dataset, tiny_dir), quarantine=quarantine, metrics=metrics
    )
    assert result.quarantined == 0
    assert metrics.metadata["videos_rows"] == 1500 and metrics.metadata["quarantined"] == 0
    assert (Path(quarantine.path) / "report.json").is_file()
    assert not (tiny_dir / "_quarantine").exists()


def test_validate_quarantines_bad_rows_and_fails_over_the_limit(
    tiny_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    table = pq.read_table(tiny_dir / "videos.parquet")
    ids = table["video_id"].to_pylist()
    ids[3] = None
    table = table.set_column(0, "video_id", [ids])
    pq.write_table(table, bad / "videos.parquet")
    quarantine, metrics = out(Dataset, tmp_path, "q"), out(Metrics, tmp_path, "m")
    result = validate.python_func(world=given(Dataset, bad), quarantine=quarantine, metrics=metrics)
    assert result.quarantined == 1 and metrics.metadata["videos_quarantined"] == 1
    rows = pq.read_table(Path(quarantine.path) / "videos.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in rows] == [(3, "null video_id")]
    with pytest.raises(RuntimeError, match=r"0.07% of a table's rows quarantined \(limit 0.01%\)"):
        validate.python_func(
            world=given(Dataset, bad),
            quarantine=out(Dataset, tmp_path, "q2"),
            metrics=out(Metrics, tmp_path, "m2"),
            max_quarantine_share=0.0001,
        )


@pytest.fixture
def kfp_local(tmp_path: Path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    yield tmp_path / "root"


def test_simulate_and_validate_run_under_kfp_local(kfp_local: Path) -> None:
    """Two components in subprocesses (the executor, artifact paths, metrics, return values)."""

    @dsl.pipeline(name="world-check")
    def world_check(scale: str = "tiny") -> int:
        world = simulate(scale=scale, seed=2)
        return validate(world=world.outputs["world"]).outputs["quarantined"]

    with pytest.warns(RuntimeWarning, match="non-Python base image"):
        run = world_check()
    assert run.output == 0  # an int in the component; kfp.local hands back 0.0
    (root,) = kfp_local.glob("world-check-*")
    assert (root / "simulate" / "world" / "videos.parquet").is_file()
    assert (root / "validate" / "quarantine" / "report.json").is_file()
