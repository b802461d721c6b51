"""deploy: the offline gate, the first deploy written locally, and on the real kube-apiserver
as the pipeline account (KServe played)."""

import json
from pathlib import Path

import pytest
import yaml
from kfp.dsl import Artifact, Model
from support.kfp_artifacts import given, options, out

from crops.components.deploy import deploy


def offline_results(tmp_path: Path, candidate: float, control: float, name: str = "offline"):
    """An evaluate task's results.json (columns, row names, scores) with the given
    graded/nDCG@4 for the treatment (CroPS) and the control (NCE)."""
    from crops.evaluate.experiment import COLUMNS

    def row(ndcg: float) -> dict:
        return {"ct/R@100": 0.5, "qr/R@100": 0.4, "graded/nDCG@4": ndcg}

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "columns": [list(c) for c in COLUMNS],
                "control": "NCE",
                "treatment": "CroPS",
                "scores": {"BM25": row(0.1), "NCE": row(control), "CroPS": row(candidate)},
            }
        )
    )
    return given(Artifact, path)


@pytest.fixture(scope="module")
def control_dir(tiny_index, tmp_path_factory) -> Path:
    """A second model (the control), distinct from tiny_index's, beside the same index."""
    from crops.model.encoders import build_dual_encoder

    path = tmp_path_factory.mktemp("control") / "model"
    build_dual_encoder("hash", seed=1).save(path)
    return path


def deploy_args(
    tiny_index, control_dir: Path, tmp_path: Path, model_dir: Path | None = None, **offline
) -> dict:
    """The deploy component's inputs: the candidate (tiny_index's model unless `model_dir`),
    the control, an offline table (`candidate`, `control`: graded/nDCG@4) and the output."""
    index_dir = tiny_index[1]
    return {
        "model": given(Model, model_dir or tiny_index[0]),
        "index": given(Artifact, index_dir),
        "control_model": given(Model, control_dir),
        "control_index": given(Artifact, index_dir),
        "offline": offline_results(tmp_path, **(offline or {"candidate": 0.3, "control": 0.3})),
        "manifest": out(Artifact, tmp_path, "manifest"),
    }


def _args(predictor: dict) -> dict[str, str]:
    return options(predictor["containers"][0]["args"])


def test_deploy_locally_writes_the_first_deploy_it_would_apply(
    tiny_index, control_dir: Path, tmp_path: Path
) -> None:
    """The control as the default predictor and the candidate as the canary, on the chart's
    default volume, mount path and image; nothing applied, no URLs."""
    from crops.index.store import model_hash

    model_dir, _ = tiny_index
    common = deploy_args(tiny_index, control_dir, tmp_path, candidate=0.29, control=0.30)
    outputs = deploy.python_func(**common, name="crops", namespace="search", canary_percent=10)
    assert outputs.decision == "canary" and (outputs.control_url, outputs.treatment_url) == ("", "")
    assert outputs.reason == (
        "canary: offline graded/nDCG@4: CroPS 0.2900 vs NCE 0.3000 (-0.0100, tolerance 0.02)"
    )
    manifest = common["manifest"]
    obj = yaml.safe_load(Path(manifest.path).read_text())
    assert obj["kind"] == "InferenceService" and obj["metadata"]["namespace"] == "search"
    candidate, control = model_hash(model_dir)[:12], model_hash(control_dir)[:12]
    predictor, (canary,) = obj["spec"]["predictor"], obj["spec"]["canary"]
    assert _args(predictor)["--model"] == f"/artifacts/serving/crops/{control}/model"
    assert _args(canary["predictor"])["--model"] == f"/artifacts/serving/crops/{candidate}/model"
    assert _args(canary["predictor"])["--index"] == f"/artifacts/serving/crops/{candidate}/index"
    assert canary["trafficPercent"] == 10
    assert predictor["containers"][0]["image"] == "crops:0.1.0"  # the platform's
    assert {
        "name": "artifacts",
        "persistentVolumeClaim": {"claimName": "crops-artifacts", "readOnly": True},
    } in predictor["volumes"]
    meta = manifest.metadata
    assert meta["applied"] is False and meta["canary_percent"] == 10
    assert meta["decision"] == "canary" and meta["offline_gate"]["difference"] == pytest.approx(
        -0.01
    )

    serverless = deploy_args(tiny_index, control_dir, tmp_path / "s", candidate=0.3, control=0.3)
    deploy.python_func(**serverless, mode="Serverless")
    obj = yaml.safe_load(Path(serverless["manifest"].path).read_text())
    assert "canary" not in obj["spec"]  # Serverless: the control first, the candidate next
    assert _args(obj["spec"]["predictor"])["--model"].endswith(f"/{control}/model")


def test_deploy_holds_on_a_worse_offline_table(tiny_index, control_dir, tmp_path: Path) -> None:
    common = deploy_args(tiny_index, control_dir, tmp_path, candidate=0.25, control=0.30)
    outputs = deploy.python_func(**common, tolerance=0.02)
    assert outputs.decision == "hold" and (outputs.control_url, outputs.treatment_url) == ("", "")
    assert outputs.reason == (
        "hold: the candidate is worse than the control beyond the tolerance; offline "
        "graded/nDCG@4: CroPS 0.2500 vs NCE 0.3000 (-0.0500, tolerance 0.02); nothing deployed"
    )
    meta = common["manifest"].metadata
    assert meta["decision"] == "hold" and meta["applied"] is False
    assert meta["offline_gate"] == {
        "metric": "graded/nDCG@4",
        "tolerance": 0.02,
        "candidate": 0.25,
        "control": 0.30,
        "difference": pytest.approx(-0.05),
    }
    # another column and a wider tolerance let it through
    again = deploy_args(tiny_index, control_dir, tmp_path / "b", candidate=0.25, control=0.30)
    assert deploy.python_func(**again, tolerance=0.06).decision == "canary"
    again = deploy_args(tiny_index, control_dir, tmp_path / "c", candidate=0.25, control=0.30)
    assert deploy.python_func(**again, metric="qr/R@100").decision == "canary"


def test_deploy_refuses_bad_settings(tiny_index, control_dir, tmp_path: Path) -> None:
    common = deploy_args(tiny_index, control_dir, tmp_path)
    with pytest.raises(ValueError, match="target 'prod'"):
        deploy.python_func(**common, target="prod")
    with pytest.raises(ValueError, match="canary_percent must be within 0..100, got 101"):
        deploy.python_func(**common, canary_percent=101)
    with pytest.raises(ValueError, match="would send all traffic to an untested model"):
        deploy.python_func(**common, canary_percent=100)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        deploy.python_func(**common, tolerance=-0.1)
    with pytest.raises(ValueError, match=r"metric 'ndcg' .* use one of ct/R@100, graded/nDCG@4"):
        deploy.python_func(**common, metric="ndcg")


def test_deploy_to_a_cluster_as_the_pipeline_account(
    tiny_index, control_dir, tmp_path: Path, accounts, kserve, namespace, monkeypatch
) -> None:
    """On the real kube-apiserver as crops-pipeline (its token in the default kubeconfig, as in
    its pod), with the release's platform (another image, the volume mounted here): the first
    deploy creates the control with the candidate as a canary and waits for Ready; the next
    candidate becomes the canary beside the served model; a worse one is held."""
    from crops.index.store import model_hash
    from crops.k8s.inference_service import InferenceServiceClient

    mount = tmp_path / "pvc"
    mount.mkdir()
    accounts.install({"image": {"tag": "7.7.7"}, "storage": {"mountPath": str(mount)}})
    accounts.act_as("crops-pipeline", monkeypatch)
    read = InferenceServiceClient(accounts.client("crops-pipeline"))
    model_dir, index_dir = tiny_index

    def run(sub: str, model: Path | None = None, **kw) -> tuple:
        offline = kw.pop("offline", {})
        common = deploy_args(tiny_index, control_dir, tmp_path / sub, model, **offline)
        outputs = deploy.python_func(**common, target="cluster", namespace=namespace, **kw)
        return outputs, common["manifest"].metadata

    first, meta = run("first", canary_percent=10, wait_s=20)
    assert first.decision == "canary" and meta["applied"] is True
    assert (first.control_url, first.treatment_url) == (
        f"http://crops-predictor.{namespace}.svc.cluster.local",
        f"http://crops-candidate-predictor.{namespace}.svc.cluster.local",
    )
    assert (meta["control_url"], meta["treatment_url"]) == (first.control_url, first.treatment_url)
    candidate, control = model_hash(model_dir)[:12], model_hash(control_dir)[:12]
    for digest in (candidate, control):  # both published where the predictors read them
        assert (mount / "serving" / "crops" / digest / "model" / "crops_model.json").is_file()
        assert (mount / "serving" / "crops" / digest / "index" / "index.faiss").is_file()
    obj = read.get("crops", namespace)
    assert _args(obj["spec"]["predictor"])["--model"] == str(
        mount / "serving" / "crops" / control / "model"
    )
    (canary,) = obj["spec"]["canary"]
    assert (
        canary["trafficPercent"] == 10
        and _args(canary["predictor"])["--model"] == meta["model_path"]
    )
    assert canary["predictor"]["containers"][0]["image"] == "crops:7.7.7"  # the release's
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]  # waited

    # the next candidate replaces the canary; the served model (the control) stays
    from crops.model.encoders import build_dual_encoder

    nxt = tmp_path / "next-model"
    build_dual_encoder("hash", seed=2).save(nxt)
    second, meta = run("second", nxt, canary_percent=25, wait_s=20)
    assert second.decision == "canary" and second.treatment_url == first.treatment_url
    obj = read.get("crops", namespace)
    assert obj["spec"]["canary"][0]["trafficPercent"] == 25
    assert _args(obj["spec"]["canary"][0]["predictor"])["--model"] == str(
        mount / "serving" / "crops" / model_hash(nxt)[:12] / "model"
    )
    assert meta["served_control_model_path"] == str(mount / "serving" / "crops" / control / "model")
    version = obj["metadata"]["resourceVersion"]
    build_dual_encoder("hash", seed=3).save(tmp_path / "worse")

    held, meta = run("held", tmp_path / "worse", offline={"candidate": 0.1, "control": 0.3})
    assert held.decision == "hold" and "worse than the control beyond the tolerance" in held.reason
    assert (held.control_url, held.treatment_url) == ("", "") and meta["applied"] is False
    assert read.get("crops", namespace)["metadata"]["resourceVersion"] == version
    assert not (mount / "serving" / "crops" / model_hash(tmp_path / "worse")[:12]).exists()


def test_deploy_that_never_becomes_ready_fails_naming_the_object(
    tiny_index, control_dir, tmp_path: Path, accounts, kserve, namespace, monkeypatch
) -> None:
    from crops.k8s.client import KubeTimeout

    mount = tmp_path / "pvc"
    mount.mkdir()
    accounts.install({"storage": {"mountPath": str(mount)}})
    accounts.act_as("crops-pipeline", monkeypatch)
    kserve.fail = {"reason": "ModelLoadFailed", "message": "no index.faiss in the index folder"}
    common = deploy_args(tiny_index, control_dir, tmp_path)
    with pytest.raises(KubeTimeout) as e:
        deploy.python_func(**common, target="cluster", namespace=namespace, wait_s=1.5)
    assert f"InferenceService {namespace}/crops" in str(e.value)
    assert (
        "PredictorReady=False reason=ModelLoadFailed message=no index.faiss in the index folder"
        in str(e.value)
    )
