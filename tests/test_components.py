"""The KFP components (components/<name>/component.py): each through `python_func` on the tiny
world, the RayJob and cluster paths with the Kubernetes calls replaced by recording stubs (or
against the real kube-apiserver), and components run by `kfp.local` in a subprocess."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from crops.components import BASE_IMAGE, DEFAULT_IMAGE
from crops.components.abtest import abtest
from crops.components.deploy import deploy
from crops.components.evaluate import evaluate
from crops.components.index import index
from crops.components.ingest import ingest
from crops.components.mine import mine
from crops.components.simulate import simulate
from crops.components.train import train
from crops.components.validate import validate

ALL = (simulate, ingest, validate, mine, train, index, evaluate, deploy, abtest)
COMPONENTS = Path(__file__).resolve().parent.parent / "components"


def out(kind, tmp_path: Path, name: str):
    """An output artifact at a fresh path, as the KFP launcher hands one to a component."""
    return kind(uri=str(tmp_path / name))


def given(kind, path: Path):
    """An input artifact over an existing path."""
    return kind(uri=str(path))


def options(argv: list[str]) -> dict[str, str]:
    """--option value pairs of a command line."""
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}


# ----------------------------------------------------------------------------- the style


@pytest.mark.parametrize("component", ALL, ids=lambda c: c.name)
def test_components_are_lightweight_on_the_project_image(component) -> None:
    container = component.component_spec.implementation.container
    assert container.image == BASE_IMAGE == DEFAULT_IMAGE == "crops:0.1.0"
    command = " ".join(container.command)
    assert "pip install" not in command  # the image carries crops and kfp
    assert "kfp.dsl.executor_main" in command


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in COMPONENTS.glob("*/component.py")))
def test_top_level_imports_are_stdlib_and_kfp_only(folder: str) -> None:
    """crops.* (and everything heavy) is imported inside the function body; at the top only
    the base image, the training recipe's and the mining settings' defaults (parameter
    defaults' one home)."""
    import ast
    import sys

    allowed = {"crops.components", "crops.model.recipe", "crops.mining.config", "crops.index.build"}
    tree = ast.parse((COMPONENTS / folder / "component.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for name in names:
                light = name.split(".")[0] in (*sys.stdlib_module_names, "kfp")
                assert light or name in allowed, name
    assert (COMPONENTS / folder / "README.md").is_file()


def test_no_registry_host_in_any_image_name() -> None:
    for path in [*COMPONENTS.rglob("*.py"), *COMPONENTS.rglob("*.md")]:
        text = path.read_text()
        assert "docker.io" not in text and "ghcr.io" not in text and "quay.io" not in text, path


def test_the_image_can_be_overridden_for_a_compile(monkeypatch) -> None:
    import runpy

    monkeypatch.setenv("CROPS_IMAGE", "crops:9.9.9")
    assert runpy.run_path(str(COMPONENTS / "__init__.py"))["BASE_IMAGE"] == "crops:9.9.9"


# ----------------------------------------------------------------------------- simulate, ingest


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


def test_ingest_copies_a_folder_of_contract_tables(tiny_dir: Path, tmp_path: Path) -> None:
    world = out(Dataset, tmp_path, "world")
    ingest.python_func(world=world, uri=str(tiny_dir))
    for name in ("videos.parquet", "search_log.parquet", "world.json", "tests/qr.qrels"):
        assert (Path(world.path) / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert world.metadata["source"] == str(tiny_dir)


def test_ingest_refuses_what_is_not_a_world(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos.parquet"):
        ingest.python_func(world=out(Dataset, tmp_path, "w"), uri=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ingest.python_func(world=out(Dataset, tmp_path, "w2"), uri=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs a uri"):
        ingest.python_func(world=out(Dataset, tmp_path, "w3"), uri=" ")


# ----------------------------------------------------------------------------- validate


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


# ----------------------------------------------------------------------------- mine


def test_mine_grades_samples_with_the_knowledge_backend(tiny_dir: Path, tmp_path: Path) -> None:
    mined, metrics = out(Dataset, tmp_path, "mined"), out(Metrics, tmp_path, "m")
    backend = mine.python_func(
        world=given(Dataset, tiny_dir),
        mined=mined,
        metrics=metrics,
        filter_model="none",
        llm_backend="knowledge",  # a named diagnostic, never a default
    )
    assert backend == "knowledge (simulator world knowledge, not an LLM)"
    for name in ("samples.parquet", "synth_videos.parquet", "report.json"):
        assert (Path(mined.path) / name).is_file()
    m = metrics.metadata
    assert m["samples"] == pq.read_metadata(Path(mined.path) / "samples.parquet").num_rows
    assert m["source_llm"] == m["synthetic_videos"] > 0 and m["synthesis_is_llm"] == 0
    assert m["quarantined_videos"] == 0 and "label_5" in m


def test_mine_takes_the_llm_endpoint_and_key_from_the_environment(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """What the crops-llm Secret sets on a cluster: CROPS_LLM_ENDPOINT and CROPS_LLM_API_KEY."""
    from fakes.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("CROPS_LLM_ENDPOINT", fake.url)
        monkeypatch.setenv("CROPS_LLM_API_KEY", "sk-from-secret")
        metrics = out(Metrics, tmp_path, "m")
        backend = mine.python_func(
            world=given(Dataset, tiny_dir),
            mined=out(Dataset, tmp_path, "mined"),
            metrics=metrics,
            llm_model="fake-llm",
            filter_model="none",
            synth_max_queries=3,
            synth_per_query=2,
        )
    assert backend == "openai-chat (an LLM)"
    assert len(fake.requests) == 3 and fake.requests[0]["model"] == "fake-llm"
    assert {h["authorization"] for h in fake.headers} == {"Bearer sk-from-secret"}
    assert metrics.metadata["synthesis_is_llm"] == 1 and metrics.metadata["synthetic_videos"] > 0


def test_mine_refuses_an_unknown_backend(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llm_backend 'gpt': use one of"):
        mine.python_func(
            world=given(Dataset, tiny_dir),
            mined=out(Dataset, tmp_path, "mined"),
            metrics=out(Metrics, tmp_path, "m"),
            llm_backend="gpt",
        )


# ----------------------------------------------------------------------------- train, index


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


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_writes_the_offline_table(tiny_dir: Path, tiny_index, tmp_path: Path) -> None:
    model_dir, index_dir = tiny_index
    metrics, table, results = (
        out(Metrics, tmp_path, "m"),
        out(Markdown, tmp_path, "table"),
        out(Artifact, tmp_path, "results"),
    )
    evaluate.python_func(
        world=given(Dataset, tiny_dir),
        treatment_model=given(Model, model_dir),
        treatment_index=given(Artifact, index_dir),
        control_model=given(Model, model_dir),
        control_index=given(Artifact, index_dir),
        metrics=metrics,
        table=table,
        results=results,
    )
    text = Path(table.path).read_text()
    assert "| method | CT R@100 | QR R@100 | NDCG@4 |" in text
    assert "| CroPS vs NCE (relative) | +0.0 % | +0.0 % | +0.0 % |" in text
    assert {"bm25_ct_r_100", "nce_qr_r_100", "crops_graded_ndcg_4"} <= set(metrics.metadata)
    saved = json.loads(Path(results.path).read_text())
    assert list(saved["scores"]) == ["BM25", "NCE", "CroPS"]
    assert saved["results"]["CroPS"]["queries_run"] > 0


# ----------------------------------------------------------------------------- deploy


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


# ----------------------------------------------------------------------------- abtest


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


# ----------------------------------------------------------------------------- kfp.local


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


# ------------------------------------------------------------------------------ synthesize


def test_serve_llm_passes_an_endpoint_through_and_refuses_vllm_off_cluster(tmp_path) -> None:
    from kfp.dsl import Metrics

    from crops.components.serve_llm import serve_llm

    run = serve_llm.python_func
    summary = Metrics(uri=str(tmp_path / "m"))
    assert run(summary=summary, llm_endpoint=" http://vllm:8000 ") == "http://vllm:8000"
    assert summary.metadata == {"served": 0, "has_endpoint": 1}
    # no server asked for: nothing started, mine synthesises with none
    assert run(summary=Metrics(uri=str(tmp_path / "n")), llm_backend="none") == ""
    with pytest.raises(ValueError, match="needs target=cluster"):
        run(summary=Metrics(uri=str(tmp_path / "o")), serve_vllm=True, llm_model="m")
    with pytest.raises(ValueError, match="needs llm_model"):
        run(summary=Metrics(uri=str(tmp_path / "p")), serve_vllm=True, target="cluster")


@pytest.mark.slow
def test_local_serve_llm_starts_a_real_llm_server_and_release_stops_it(tmp_path) -> None:
    """Locally, with no endpoint, serve_llm starts llama.cpp's server (the packaged model),
    mine's client finds its model and dialect, and release_llm stops it by its URL."""
    import httpx
    from kfp.dsl import Metrics

    from crops.components.serve_llm import release_llm, serve_llm
    from crops.mining.llm_server import MODEL_NAME, discover

    summary = Metrics(uri=str(tmp_path / "s"))
    url = serve_llm.python_func(summary=summary)
    try:
        assert url.startswith("http://127.0.0.1:") and summary.metadata["served"] == 1
        assert discover(url) == (MODEL_NAME, "llama.cpp")
    finally:
        released = release_llm.python_func(
            summary=Metrics(uri=str(tmp_path / "r")), llm_endpoint=url
        )
    assert released == f"local LLM server {url}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/v1/models", timeout=2)
    # a server it did not start is never touched
    assert (
        release_llm.python_func(
            summary=Metrics(uri=str(tmp_path / "x")), llm_endpoint="http://vllm:8000"
        )
        == ""
    )
