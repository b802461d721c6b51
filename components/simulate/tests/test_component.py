"""simulate: the world and its summary, through `python_func`."""

from pathlib import Path

import pytest
from kfp.dsl import Dataset, Metrics
from support.kfp_artifacts import out

from crops.components.simulate import simulate


def test_simulate_writes_the_world_and_its_summary(tmp_path: Path) -> None:
    world, summary = out(Dataset, tmp_path, "world"), out(Metrics, tmp_path, "summary")
    simulate.python_func(world=world, summary=summary, scale="tiny", seed=1)
    assert (Path(world.path) / "videos.parquet").is_file()
    assert (Path(world.path) / "tests" / "ct.qrels").is_file()
    assert world.metadata["scale"] == "tiny" and world.metadata["seed"] == 1
    assert summary.metadata["count_videos"] == 1500
    assert 0 < summary.metadata["exposure_coverage"] < 1


def test_simulate_refuses_an_unknown_scale(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale 'huge': use one of tiny, default, large"):
        simulate.python_func(
            world=out(Dataset, tmp_path, "w"), summary=out(Metrics, tmp_path, "s"), scale="huge"
        )
