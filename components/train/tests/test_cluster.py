"""train (with index on its model): the cluster paths as they run on a cluster (the `platform`
fixture is tests/shared_fixtures.py's): each task with the crops-pipeline account's own token
(never the admin's), against the real kube-apiserver with the chart's RBAC and platform
ConfigMap installed.

No controllers run there, so the tests play them: a KubeRay stand-in runs each RayJob's
entrypoint with the RayJob's runtime environment (the command KubeRay's submitter would send to
the head) and writes the job's status; a kubelet stand-in marks vLLM ready. What the tasks
create, and whether their account may create it, is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from support.cluster import KubeRayPlayer
from support.kfp_artifacts import out

from crops.components.index import index
from crops.components.train import train

PIPELINE = "crops-pipeline"


@pytest.mark.slow
def test_train_and_index_run_as_rayjobs_of_the_installed_platform(
    apiserver, namespace, platform: Path, mined_fast, tmp_path: Path
) -> None:
    mined_dir, world_dir = mined_fast
    model, ix = out(Model, tmp_path, "model"), out(Artifact, tmp_path, "index")
    with KubeRayPlayer(apiserver, namespace) as kuberay:
        train.python_func(
            mined=Dataset(uri=str(mined_dir)),
            world=Dataset(uri=str(world_dir)),
            model=model,
            metrics=out(Metrics, tmp_path, "m"),
            method="nce",
            max_steps=4,
            workers=1,
            backend="rayjob",
            namespace=namespace,
            worker_gpus=0,
            timeout_s=300,
        )
        index.python_func(
            model=model,
            world=Dataset(uri=str(world_dir)),
            index=ix,
            metrics=out(Metrics, tmp_path, "im"),
            backend="rayjob",
            namespace=namespace,
            actors=1,
            worker_gpus=0,
            timeout_s=300,
        )
    trained, indexed = kuberay.jobs
    assert (Path(model.path) / "training.json").is_file()
    assert json.loads((Path(ix.path) / "manifest.json").read_text())["model_hash"]
    # The jobs are the platform's: its image, account, labels and the staged paths on its volume.
    for job in (trained, indexed):
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
        assert head["spec"]["serviceAccountName"] == "crops-ray"
        assert head["metadata"]["labels"]["app.kubernetes.io/component"] == "ray-node"
        assert head["spec"]["securityContext"]["fsGroup"] == 1000
        assert str(platform) in job["spec"]["entrypoint"]
    assert trained["metadata"]["labels"]["app.kubernetes.io/component"] == "train"
