"""abtest: the arms, policy and flags given to run_abtest, the hold after deploy's hold, the
cluster path against the real kube-apiserver, and two served models compared (slow)."""

import json
from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model
from support.kfp_artifacts import given, options, out

from crops.components.abtest import abtest


def stub_report(action: str) -> dict:
    return {
        "decision": {"action": action, "reasons": ["stub"]},
        "looks_run": 2,
        "analysis": {
            "arms": {"control": {"users": 10}, "treatment": {"users": 12}},
            "metrics": {"ctr": {"control": 0.1, "treatment": 0.12, "lift": 0.2, "p_value": 0.3}},
        },
    }


def abtest_args(tiny_dir: Path, tiny_index, tmp_path: Path) -> dict:
    model_dir, index_dir = tiny_index
    return {
        "world": given(Dataset, tiny_dir),
        "control_model": given(Model, model_dir),
        "control_index": given(Artifact, index_dir),
        "treatment_model": given(Model, model_dir),
        "treatment_index": given(Artifact, index_dir),
        "metrics": out(Metrics, tmp_path, "m"),
        "report": out(Markdown, tmp_path, "report"),
        "results": out(Artifact, tmp_path, "results"),
    }


def test_abtest_locally_serves_the_model_folders_unless_given_urls(
    tiny_dir: Path, tiny_index, tmp_path: Path, monkeypatch
) -> None:
    """STUB for run_abtest: the arms, policy and flags reach it."""
    import crops.abtest.simulate as ab

    model_dir, index_dir = tiny_index
    seen: dict = {}

    def run_abtest_stub(cfg, progress=None):
        seen["cfg"] = cfg
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "report.md").write_text("# stub report\n")
        return stub_report("hold")

    monkeypatch.setattr(ab, "run_abtest", run_abtest_stub)
    common = abtest_args(tiny_dir, tiny_index, tmp_path)
    action = abtest.python_func(
        **common,
        control_url="http://127.0.0.1:9/",
        deploy_decision="canary",
        days=3,
        min_users_per_arm=50,
    )
    cfg = seen["cfg"]
    assert cfg.control == "http://127.0.0.1:9/" and cfg.control_index is None
    assert cfg.treatment == str(model_dir) and cfg.treatment_index == index_dir
    assert cfg.policy.looks == 3 and cfg.policy.min_users_per_arm == 50
    assert action == "hold" and common["metrics"].metadata["decision"] == 0
    assert common["metrics"].metadata["ctr_lift"] == 0.2
    assert common["metrics"].metadata["treatment_users"] == 12
    assert Path(common["report"].path).read_text() == "# stub report\n"
    assert "applied" not in common["results"].metadata


def test_abtest_on_a_cluster_measures_the_served_predictors_and_applies_its_decision(
    tiny_dir: Path, tiny_index, tmp_path: Path, accounts, kserve, namespace, monkeypatch
) -> None:
    """On a cluster the arms are deploy's URLs (the InferenceService's default predictor and
    canary), never copies served by the task; the decision is applied, as crops-abtest, to
    that InferenceService; a second promote finds no canary and is a recorded no-op."""
    import crops.abtest.simulate as ab
    from crops.k8s.inference_service import InferenceServiceClient, InferenceServiceSpec, deploy

    accounts.install()
    specs = [
        InferenceServiceSpec(
            name="crops", namespace=namespace, model_path=f"/m/{m}", index_path=f"/i/{m}"
        )
        for m in ("control", "candidate")
    ]
    deploy(specs[1], 10, control=specs[0], client=accounts.client("crops-pipeline"))
    accounts.act_as("crops-abtest", monkeypatch)
    urls = {"control_url": specs[1].url, "treatment_url": specs[1].canary_url}
    seen: list = []

    def run_abtest_stub(cfg, progress=None):
        seen.append(cfg)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "report.md").write_text("# stub report\n")
        return stub_report("promote")

    monkeypatch.setattr(ab, "run_abtest", run_abtest_stub)

    def run(sub: str, **kw) -> tuple[str, dict]:
        common = abtest_args(tiny_dir, tiny_index, tmp_path / sub)
        action = abtest.python_func(
            **common, target="cluster", apply=True, isvc="crops", namespace=namespace, **kw
        )
        return action, common["results"].metadata

    with pytest.raises(ValueError, match="measures the two predictors the InferenceService"):
        run("none", deploy_decision="canary")  # no URLs: never serve copies of its own
    assert seen == []

    action, meta = run("first", deploy_decision="canary", **urls)
    (cfg,) = seen
    assert (cfg.control, cfg.treatment) == (urls["control_url"], urls["treatment_url"])
    assert cfg.control_index is None and cfg.treatment_index is None
    assert action == "promote" and meta["applied"]["patched"] is True
    obj = InferenceServiceClient(accounts.client("crops-abtest")).get("crops", namespace)
    assert "canary" not in obj["spec"]
    assert options(obj["spec"]["predictor"]["containers"][0]["args"])["--model"] == "/m/candidate"

    action, meta = run("again", deploy_decision="canary", **urls)
    assert action == "promote" and meta["applied"]["patched"] is False
    noop = f"InferenceService {namespace}/crops has no canary to promote"
    assert meta["applied"]["noop"].startswith(noop)
    assert meta["reasons"][-1].startswith(noop)


def test_abtest_holds_and_applies_nothing_when_deploy_held(
    tiny_dir: Path, tiny_index, tmp_path: Path, monkeypatch
) -> None:
    import crops.abtest.simulate as ab

    def never(*args, **kwargs):
        raise AssertionError("no test and no API call after a hold")

    import crops.k8s.rollout as rollout

    monkeypatch.setattr(ab, "run_abtest", never)
    monkeypatch.setattr(rollout, "apply_decision", never)
    common = abtest_args(tiny_dir, tiny_index, tmp_path)
    reason = "hold: the candidate is worse than the control beyond the tolerance; offline ..."
    action = abtest.python_func(
        **common, target="cluster", deploy_decision="hold", deploy_reason=reason, apply=True
    )
    assert action == "hold" and common["metrics"].metadata == {"decision": 0, "looks_run": 0}
    meta = common["results"].metadata
    assert meta["decision"] == "hold" and meta["held_by"] == "deploy"
    assert meta["reasons"] == [f"no A/B test: the candidate was not deployed ({reason})"]
    saved = json.loads((Path(common["results"].path) / "ab_report.json").read_text())
    assert saved["decision"]["action"] == "hold" and saved["looks_run"] == 0
    assert saved["looks_planned"] == 5 and saved["analysis"]["metrics"] == {}
    text = Path(common["report"].path).read_text()
    assert text.startswith("# Online A/B test") and reason in text


@pytest.mark.slow
def test_abtest_serves_two_models_and_decides(tiny_dir: Path, tiny_index, tmp_path: Path) -> None:
    """Two different models (the experiment is keyed by their hashes), served and compared."""
    from crops.index.build import build_exact_index
    from crops.model.encoders import build_dual_encoder

    model_dir, index_dir = tiny_index
    other = tmp_path / "other-model"
    build_dual_encoder("hash", seed=7).save(other)
    other_index = build_exact_index(other, tiny_dir / "videos.parquet", tmp_path / "other-index")
    metrics, report, results = (
        out(Metrics, tmp_path, "m"),
        out(Markdown, tmp_path, "report"),
        out(Artifact, tmp_path, "results"),
    )
    action = abtest.python_func(
        world=given(Dataset, tiny_dir),
        control_model=given(Model, model_dir),
        control_index=given(Artifact, index_dir),
        treatment_model=given(Model, other),
        treatment_index=given(Artifact, other_index),
        metrics=metrics,
        report=report,
        results=results,
        days=1,
        users=120,
        min_users_per_arm=20,
        max_p99_ms=60_000,
    )
    saved = json.loads((Path(results.path) / "ab_report.json").read_text())
    assert action == saved["decision"]["action"] in ("promote", "hold", "rollback")
    assert metrics.metadata["looks_run"] == 1
    assert Path(report.path).read_text().startswith("# Online A/B test")
    exp = saved["experiment"]
    assert exp["control_hash"] != exp["candidate_hash"]
    assert (Path(results.path) / "logs" / "request_log").is_dir()
