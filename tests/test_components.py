"""The KFP components (components/<name>/component.py): each through `python_func` on the tiny
world, the RayJob and cluster paths with the Kubernetes calls replaced by recording stubs (or
against the real kube-apiserver), and components run by `kfp.local` in a subprocess."""

import json
import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from crops.pipeline import source_root

source_root()  # components/ and pipelines/ importable

from components import BASE_IMAGE, DEFAULT_IMAGE  # noqa: E402
from components.abtest import abtest  # noqa: E402
from components.deploy import deploy  # noqa: E402
from components.evaluate import evaluate  # noqa: E402
from components.index import index  # noqa: E402
from components.ingest import ingest  # noqa: E402
from components.mine import mine  # noqa: E402
from components.simulate import simulate  # noqa: E402
from components.train import train  # noqa: E402
from components.validate import validate  # noqa: E402

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
    """crops.* (and everything heavy) is imported inside the function body."""
    import ast
    import sys

    tree = ast.parse((COMPONENTS / folder / "component.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("kfp", "components"), name
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
        world=given(Dataset, tiny_dir), mined=mined, metrics=metrics, filter_model="none"
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
    from fake_openai import FakeOpenAIServer

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


class RecordingRayJobStub:
    """A STUB for crops.k8s.rayjob.submit_and_wait (no cluster): records the spec, checks the
    entrypoint against the real `crops <command>` options and writes what the job would."""

    def __init__(self, command: str, produce) -> None:
        self.command, self.produce, self.specs = command, produce, []

    def __call__(self, spec, timeout_s: float) -> dict:
        import typer.main

        from crops.cli import app

        self.specs.append(spec)
        argv = shlex.split(spec.entrypoint)
        assert argv[:2] == ["python", f"/app/ray_jobs/{self.command}.py"]
        name = "train" if self.command == "train" else "index"
        command = typer.main.get_command(app).commands[name]
        known = {o for p in command.params for o in p.opts + p.secondary_opts}
        given = {a for a in argv[2:] if a.startswith("--")}
        assert given <= known, given - known
        self.produce(options(argv))
        return {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}


def test_train_as_a_rayjob_stages_inputs_on_the_volume_and_copies_the_model_back(
    mined_fast, tiny_index, tmp_path: Path, monkeypatch
) -> None:
    import crops.k8s.rayjob as rayjob

    mined_dir, world_dir = mined_fast
    model_src, _ = tiny_index

    def produce(opts: dict) -> None:
        target = Path(opts["--out"])
        shutil.copytree(model_src, target)
        (target / "training.json").write_text(json.dumps({"wall_s": 1.5, "metrics": {"loss": 2.0}}))

    stub = RecordingRayJobStub("train", produce)
    monkeypatch.setattr(rayjob, "submit_and_wait", stub)
    mount = tmp_path / "pvc"
    model, metrics = out(Model, tmp_path, "model"), out(Metrics, tmp_path, "m")
    train.python_func(
        mined=given(Dataset, mined_dir),
        world=given(Dataset, world_dir),
        model=model,
        metrics=metrics,
        method="nce",
        steps=300,
        epochs=3,
        backend="rayjob",
        namespace="ml",
        image="crops:0.1.0",
        workers=4,
        worker_gpus=1,
        mount_path=str(mount),
    )
    (spec,) = stub.specs
    assert spec.namespace == "ml" and spec.workers == 4 and spec.worker_gpus == 1
    assert spec.pvc == "crops-artifacts" and spec.mount_path == str(mount)
    assert spec.node_selector == {"nvidia.com/gpu.present": "true"}  # RayJobSpec.gpu
    assert spec.name.startswith("crops-train-nce-")
    argv = shlex.split(spec.entrypoint)
    opts = options(argv)
    staged = Path(opts["--samples"])
    assert staged.is_relative_to(mount) and staged.is_file()
    assert not (staged.parent / "synth_videos.parquet").exists()  # NCE: clicks only
    assert set(pq.read_table(staged)["source"].to_pylist()) == {"click"}
    assert opts["--loss"] == "infonce" and "--gpu" in argv
    # the click-only epoch is shorter than 100 steps: more epochs, about 300 steps in all
    assert 250 <= int(opts["--epochs"]) * int(opts["--max-steps-per-epoch"]) <= 350
    assert (Path(model.path) / "crops_model.json").is_file()
    assert model.metadata["method"] == "NCE" and model.metadata["backend"] == "rayjob"
    assert metrics.metadata["loss"] == 2.0


def test_index_as_a_rayjob(tiny_dir: Path, tiny_index, tmp_path: Path, monkeypatch) -> None:
    import crops.k8s.rayjob as rayjob

    model_dir, index_dir = tiny_index
    stub = RecordingRayJobStub(
        "build_index", lambda opts: shutil.copytree(index_dir, Path(opts["--out"]))
    )
    monkeypatch.setattr(rayjob, "submit_and_wait", stub)
    ix, metrics = out(Artifact, tmp_path, "index"), out(Metrics, tmp_path, "m")
    index.python_func(
        model=given(Model, model_dir),
        world=given(Dataset, tiny_dir),
        index=ix,
        metrics=metrics,
        factory="IVF64,Flat",
        backend="rayjob",
        worker_gpus=0,
        mount_path=str(tmp_path / "pvc"),
    )
    (spec,) = stub.specs
    assert spec.worker_gpus == 0 and spec.node_selector == {}
    assert "--no-gpu" in spec.entrypoint and "--factory IVF64,Flat" in spec.entrypoint
    assert (Path(ix.path) / "index.faiss").is_file() and metrics.metadata["count"] == 1500


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
    with pytest.raises(ValueError, match="steps"):
        train.python_func(**common, steps=0)


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
        steps=6,
        epochs=2,
    )
    assert metrics.metadata["steps"] == 6 and metrics.metadata["samples"] > 1000
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


def test_deploy_locally_writes_the_manifest_it_would_apply(tiny_index, tmp_path: Path) -> None:
    from crops.index.store import model_hash

    model_dir, index_dir = tiny_index
    manifest = out(Artifact, tmp_path, "manifest")
    deploy.python_func(
        model=given(Model, model_dir),
        index=given(Artifact, index_dir),
        manifest=manifest,
        name="crops",
        namespace="search",
        canary_percent=10,
    )
    obj = yaml.safe_load(Path(manifest.path).read_text())
    assert obj["kind"] == "InferenceService" and obj["metadata"]["namespace"] == "search"
    args = obj["spec"]["predictor"]["containers"][0]["args"]
    digest = model_hash(model_dir)[:12]
    assert args[args.index("--model") + 1] == f"/artifacts/serving/crops/{digest}/model"
    assert args[args.index("--index") + 1] == f"/artifacts/serving/crops/{digest}/index"
    volumes = obj["spec"]["predictor"]["volumes"]
    assert {
        "name": "artifacts",
        "persistentVolumeClaim": {"claimName": "crops-artifacts"},
    } in volumes
    assert manifest.metadata["applied"] is False and manifest.metadata["canary_percent"] == 10


def test_deploy_refuses_bad_settings(tiny_index, tmp_path: Path) -> None:
    model_dir, index_dir = tiny_index
    common = {
        "model": given(Model, model_dir),
        "index": given(Artifact, index_dir),
        "manifest": out(Artifact, tmp_path, "manifest"),
    }
    with pytest.raises(ValueError, match="target 'prod'"):
        deploy.python_func(**common, target="prod")
    with pytest.raises(ValueError, match="canary_percent must be within 0..100, got 101"):
        deploy.python_func(**common, canary_percent=101)


def test_deploy_to_a_cluster_publishes_the_folders_and_creates_the_service(
    tiny_index, tmp_path: Path, apiserver, namespace, monkeypatch
) -> None:
    """Against the real kube-apiserver with KServe's CRD: created, then a 25 % canary."""
    import kubernetes.config.kube_config

    from crops.k8s.inference_service import InferenceServiceClient

    # the task's default configuration (no in-cluster account here): the test server's
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(apiserver.kubeconfig)
    )
    model_dir, index_dir = tiny_index
    mount = tmp_path / "pvc"

    def run(percent: int) -> dict:
        manifest = out(Artifact, tmp_path, f"manifest-{percent}")
        deploy.python_func(
            model=given(Model, model_dir),
            index=given(Artifact, index_dir),
            manifest=manifest,
            target="cluster",
            namespace=namespace,
            canary_percent=percent,
            mount_path=str(mount),
        )
        return manifest.metadata

    first = run(10)  # no service yet: created, all traffic to it
    published = Path(first["model_path"])
    assert published.is_relative_to(mount) and (published / "crops_model.json").is_file()
    assert (Path(first["index_path"]) / "index.faiss").is_file() and first["applied"] is True
    obj = InferenceServiceClient(apiserver.api_client()).get("crops", namespace)
    assert not obj["spec"].get("canary")
    run(25)  # the service exists: the same predictor rolls out as a 25 % canary
    obj = InferenceServiceClient(apiserver.api_client()).get("crops", namespace)
    assert obj["spec"]["canary"][0]["trafficPercent"] == 25


# ----------------------------------------------------------------------------- abtest


def test_abtest_wiring_with_stubbed_runner_and_cluster(
    tiny_dir: Path, tiny_index, tmp_path: Path, monkeypatch
) -> None:
    """STUBS for run_abtest and apply_decision: the arms, policy and apply flags reach them."""
    import crops.evaluate.abtest as ab

    model_dir, index_dir = tiny_index
    seen: dict = {}

    def run_abtest_stub(cfg, progress=None):
        seen["cfg"] = cfg
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "report.md").write_text("# stub report\n")
        return {
            "decision": {"action": "hold", "reasons": ["stub"]},
            "looks_run": 2,
            "analysis": {
                "arms": {"control": {"users": 10}, "treatment": {"users": 12}},
                "metrics": {
                    "ctr": {"control": 0.1, "treatment": 0.12, "lift": 0.2, "p_value": 0.3}
                },
            },
        }

    def apply_decision_stub(decision, *, isvc, namespace, mode):
        seen["apply"] = (decision["action"], isvc, namespace, mode)
        return {"action": decision["action"], "patched": False}

    monkeypatch.setattr(ab, "run_abtest", run_abtest_stub)
    monkeypatch.setattr(ab, "apply_decision", apply_decision_stub)
    metrics, report, results = (
        out(Metrics, tmp_path, "m"),
        out(Markdown, tmp_path, "report"),
        out(Artifact, tmp_path, "results"),
    )
    action = abtest.python_func(
        world=given(Dataset, tiny_dir),
        control_model=given(Model, model_dir),
        control_index=given(Artifact, index_dir),
        treatment_model=given(Model, model_dir),
        treatment_index=given(Artifact, index_dir),
        metrics=metrics,
        report=report,
        results=results,
        control_url="http://crops-predictor.search",
        days=3,
        min_users_per_arm=50,
        apply=True,
        isvc="crops",
        namespace="search",
        mode="Standard",
    )
    cfg = seen["cfg"]
    assert cfg.control == "http://crops-predictor.search" and cfg.control_index is None
    assert cfg.treatment == str(model_dir) and cfg.treatment_index == index_dir
    assert cfg.policy.looks == 3 and cfg.policy.min_users_per_arm == 50
    assert seen["apply"] == ("hold", "crops", "search", "Standard")
    assert action == "hold" and metrics.metadata["decision"] == 0
    assert metrics.metadata["ctr_lift"] == 0.2 and metrics.metadata["treatment_users"] == 12
    assert Path(report.path).read_text() == "# stub report\n"


@pytest.mark.slow
def test_abtest_serves_two_models_and_decides(tiny_dir: Path, tiny_index, tmp_path: Path) -> None:
    model_dir, index_dir = tiny_index
    metrics, report, results = (
        out(Metrics, tmp_path, "m"),
        out(Markdown, tmp_path, "report"),
        out(Artifact, tmp_path, "results"),
    )
    action = abtest.python_func(
        world=given(Dataset, tiny_dir),
        control_model=given(Model, model_dir),
        control_index=given(Artifact, index_dir),
        treatment_model=given(Model, model_dir),
        treatment_index=given(Artifact, index_dir),
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


def test_synthesize_passes_an_endpoint_through_and_refuses_vllm_off_cluster(tmp_path) -> None:
    from kfp.dsl import Metrics

    from components.synthesize import synthesize

    run = synthesize.python_func
    summary = Metrics(uri=str(tmp_path / "m"))
    assert run(summary=summary, llm_endpoint=" http://vllm:8000 ") == "http://vllm:8000"
    assert summary.metadata == {"served": 0, "has_endpoint": 1}
    assert run(summary=Metrics(uri=str(tmp_path / "n"))) == ""  # mine falls back
    with pytest.raises(ValueError, match="needs target=cluster"):
        run(summary=Metrics(uri=str(tmp_path / "o")), serve_vllm=True, llm_model="m")
    with pytest.raises(ValueError, match="needs llm_model"):
        run(summary=Metrics(uri=str(tmp_path / "p")), serve_vllm=True, target="cluster")


def test_synthesize_deploys_vllm_on_the_api_server_and_waits(
    apiserver, namespace, tmp_path, monkeypatch
):
    """On a cluster: the Deployment and Service are applied; the test plays the kubelet."""
    import threading

    import kubernetes
    from kfp.dsl import Metrics
    from kubernetes import client as k8s

    from components.synthesize import synthesize

    api = apiserver.api_client()
    apps = k8s.AppsV1Api(api)

    def kubelet() -> None:
        for _ in range(100):
            try:
                apps.patch_namespaced_deployment_status(
                    "crops-vllm", namespace, {"status": {"replicas": 1, "readyReplicas": 1}}
                )
                return
            except k8s.ApiException:
                threading.Event().wait(0.1)

    thread = threading.Thread(target=kubelet, daemon=True)
    thread.start()
    # the task's default configuration (no in-cluster account here): the test server's
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(apiserver.kubeconfig)
    )
    summary = Metrics(uri=str(tmp_path / "m"))
    url = synthesize.python_func(
        summary=summary,
        llm_model="Qwen/Qwen2.5-1.5B-Instruct",
        target="cluster",
        serve_vllm=True,
        namespace=namespace,
        timeout_s=30,
    )
    thread.join()
    assert url == f"http://crops-vllm.{namespace}.svc.cluster.local:8000"
    assert summary.metadata["served"] == 1
    assert k8s.CoreV1Api(api).read_namespaced_service("crops-vllm", namespace).spec.ports
