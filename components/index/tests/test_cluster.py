"""index: the cluster paths as they run on a cluster (the `platform` fixture is
tests/shared_fixtures.py's): each task with the crops-pipeline account's own token (never the
admin's), against the real kube-apiserver with the chart's RBAC and platform ConfigMap
installed.

No controllers run there, so the tests play them: a KubeRay stand-in runs each RayJob's
entrypoint with the RayJob's runtime environment (the command KubeRay's submitter would send to
the head) and writes the job's status; a kubelet stand-in marks vLLM ready. What the tasks
create, and whether their account may create it, is real."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from support.cluster import KubeRayPlayer
from support.kfp_artifacts import out

from crops.components.index import index
from crops.k8s.rayjob import RayJobFailed

PIPELINE = "crops-pipeline"


def test_a_failing_rayjob_surfaces_its_reason(
    apiserver, namespace, platform: Path, tiny_index, tiny_dir: Path, tmp_path: Path
) -> None:
    """The entry point's own last error line reaches the task's exception."""
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    with KubeRayPlayer(apiserver, namespace), pytest.raises(RayJobFailed) as err:
        index.python_func(
            model=Model(uri=str(bad_model)),
            world=Dataset(uri=str(tiny_dir)),
            index=out(Artifact, tmp_path, "index"),
            metrics=out(Metrics, tmp_path, "m"),
            backend="rayjob",
            namespace=namespace,
            worker_gpus=0,
            timeout_s=120,
        )
    assert "AppFailed" in str(err.value) and namespace in str(err.value)
