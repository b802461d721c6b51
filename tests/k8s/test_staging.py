"""Staged RayJobs (crops/k8s/staging.py): the copy in, the job's files, the copy back. The
submit-and-wait part runs against the real kube-apiserver in
components/train/tests/test_cluster.py and components/index/tests/test_cluster.py."""

from pathlib import Path

from crops.k8s.staging import StagedRayJob


def test_inputs_are_staged_and_outputs_fetched(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "weights").write_text("w")
    (src / "v.parquet").write_text("v")
    stage = StagedRayJob(platform=None, namespace="crops", root=tmp_path / "vol" / "k", key="k")
    assert stage.put(src / "model", "model") == tmp_path / "vol" / "k" / "model"
    assert stage.put(src / "v.parquet", "data/videos.parquet").read_text() == "v"
    config = stage.write("train.json", "{}")
    assert config.read_text() == "{}" and config.parent == stage.root
    (stage.root / "model" / "checkpoints").mkdir()  # what the job leaves beside its output
    out = tmp_path / "out"
    stage.fetch("model", out, ignore=["checkpoints"])
    assert (out / "weights").read_text() == "w" and not (out / "checkpoints").exists()
