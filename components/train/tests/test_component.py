"""train: bad settings refused; the local backend on Ray, then index on that model."""

from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from support.kfp_artifacts import given, out

from crops.components.index import index
from crops.components.train import train


def test_train_and_index_refuse_bad_settings(mined_fast, tmp_path: Path) -> None:
    mined_dir, world_dir = mined_fast
    common = {
        "mined": given(Dataset, mined_dir),
        "world": given(Dataset, world_dir),
        "model": out(Model, tmp_path, "model"),
        "metrics": out(Metrics, tmp_path, "m"),
    }
    with pytest.raises(ValueError, match="backend 'k8s': use local or rayjob"):
        train.python_func(**common, backend="k8s")
    with pytest.raises(ValueError, match="BM25 is not a trained method"):
        train.python_func(**common, method="bm25")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        train.python_func(**common, method="nope")
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        train.python_func(**common, max_steps=-1)
    with pytest.raises(ValueError, match="converge=false trains exactly max_steps"):
        train.python_func(**common, converge=False)


@pytest.mark.slow
def test_train_and_index_locally_on_ray(mined_fast, tmp_path: Path) -> None:
    """The local backend: Ray Train (V2) in the task, then the Ray Data index of that model."""
    mined_dir, world_dir = mined_fast
    model, metrics = out(Model, tmp_path, "model"), out(Metrics, tmp_path, "m")
    train.python_func(
        mined=given(Dataset, mined_dir),
        world=given(Dataset, world_dir),
        model=model,
        metrics=metrics,
        method="crops",
        max_steps=6,
    )
    assert metrics.metadata["steps"] == 6 and metrics.metadata["samples"] > 1000
    assert metrics.metadata["best_step"] == 6  # the cap's evaluation is the only one
    assert model.metadata["why_stopped"].startswith("reached the cap of 6 steps")
    assert not (Path(model.path) / "checkpoints").exists()  # checkpoints are not the model
    ix, ixm = out(Artifact, tmp_path, "index"), out(Metrics, tmp_path, "im")
    index.python_func(model=model, world=given(Dataset, world_dir), index=ix, metrics=ixm)
    assert (Path(ix.path) / "manifest.json").is_file()
    assert ixm.metadata["count"] == 1500 and ix.metadata["factory"] == "Flat"
