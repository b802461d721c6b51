"""The pipeline (pipelines/crops_pipeline.py) and `crops pipeline`: the compiled IR YAML for
both targets (components, DAG, kfp-kubernetes settings), the CLI's refusals, submitting to a
host that is down, and (e2e) the whole pipeline under kfp.local on the tiny world."""

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from crops.pipeline import (
    LOCAL_PROFILES,
    PipelineError,
    build,
    check_host,
    local_arguments,
    parameters,
    parse_params,
    task_labels,
)

STEPS = (
    "simulate",
    "validate",
    "serve-llm",
    "mine",
    "release-llm",
    "train",
    "train-2",
    "index",
    "index-2",
    "evaluate",
    "deploy",
    "abtest",
)
GPU_STEPS = ("train", "train-2", "index", "index-2")


def compiled(tmp_path: Path, target: str, **options) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec or {}) of the compiled YAML."""
    from crops.pipeline import compile_pipeline

    path = compile_pipeline(tmp_path / f"{target}.yaml", target, **options)
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"] if len(docs) > 1 else {}
    return docs[0], platform.get("executors", {})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> tuple[dict, dict]:
    return compiled(tmp_path_factory.mktemp("cluster"), "cluster")


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def constant(task: dict, name: str):
    return task["inputs"]["parameters"][name]["runtimeValue"]["constant"]


# ----------------------------------------------------------------------------- the DAG


@pytest.mark.parametrize("target", ["local", "cluster"])
def test_every_step_is_in_the_compiled_pipeline(tmp_path: Path, target: str) -> None:
    spec, platform = compiled(tmp_path, target)
    assert spec["pipelineInfo"]["name"] == "crops"
    assert sorted(tasks(spec)) == sorted(STEPS)
    assert sorted(spec["deploymentSpec"]["executors"]) == sorted(f"exec-{s}" for s in STEPS)
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == "crops:0.1.0"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["target"]["defaultValue"] == target
    assert defaults["train_backend"]["defaultValue"] == (
        "rayjob" if target == "cluster" else "local"
    )
    assert defaults["apply_decision"]["defaultValue"] is (target == "cluster")
    assert bool(platform) is (target == "cluster")
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {"offline_table", "ab_report", "ab_results", "isvc_manifest"} <= set(outputs)


def test_the_dag_runs_the_steps_in_order(cluster) -> None:
    spec, _ = cluster
    t = tasks(spec)
    deps = {name: set(task.get("dependentTasks", [])) for name, task in t.items()}
    assert deps["simulate"] == set()
    assert deps["validate"] == {"simulate"}
    assert deps["serve-llm"] == set()  # the vLLM server comes up while the world is checked
    assert deps["mine"] == {"simulate", "validate", "serve-llm"}  # a validated world only
    endpoint = t["mine"]["inputs"]["parameters"]["llm_endpoint"]["taskOutputParameter"]
    assert endpoint["producerTask"] == "serve-llm"
    assert deps["train"] == deps["train-2"] == {"simulate", "mine"}
    assert deps["index"] == {"simulate", "train"} and deps["index-2"] == {"simulate", "train-2"}
    assert deps["evaluate"] == {"simulate", "train", "train-2", "index", "index-2"}
    # CroPS as the canary beside the control, after the offline table
    assert deps["deploy"] == {"evaluate", "train", "index", "train-2", "index-2"}
    # the LLM server (vLLM, or the local one serve_llm started) is taken down once mining
    # ends, failed or not; it learns which server from serve_llm's URL
    assert deps["release-llm"] == {"mine", "serve-llm"}
    assert t["release-llm"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert deps["abtest"] == {"deploy", "simulate", "train", "train-2", "index", "index-2"}
    # the two trainings: CroPS (every source, H-InfoNCE) and the click-only NCE control
    assert constant(t["train"], "method") == "crops" and constant(t["train-2"], "method") == "nce"
    ab = t["abtest"]["inputs"]["artifacts"]
    assert ab["treatment_model"]["taskOutputArtifact"]["producerTask"] == "train"
    assert ab["control_model"]["taskOutputArtifact"]["producerTask"] == "train-2"
    assert task_labels(build("local"))["train-2"] == "train control (NCE, clicks)"


def test_the_cluster_spec_puts_gpu_steps_on_gpu_nodes(cluster) -> None:
    _, executors = cluster
    for step in GPU_STEPS:
        e = executors[f"exec-{step}"]
        assert e["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert e["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    for step in set(STEPS) - set(GPU_STEPS):
        assert "nodeSelector" not in executors[f"exec-{step}"], step


def test_the_cluster_spec_mounts_the_artifacts_volume_everywhere(cluster) -> None:
    _, executors = cluster
    for step in STEPS:
        (mount,) = executors[f"exec-{step}"]["pvcMount"]
        assert mount["mountPath"] == "/artifacts"
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "crops-artifacts"


def llm_env(executors: dict) -> dict[tuple[str, str], bool]:
    """(secret key, env var) -> optional, of the mine task's crops-llm Secret."""
    out = {}
    for secret in executors["exec-mine"].get("secretAsEnv", []):
        assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "crops-llm"
        for k in secret["keyToEnv"]:
            out[(k["secretKey"], k["envVar"])] = secret.get("optional", False)
    return out


def test_the_llm_endpoint_and_key_come_from_a_secret_that_must_exist(cluster) -> None:
    """LLM synthesis (`endpoint`, the default) fails closed: the endpoint comes from the
    Secret, llm_endpoint or serve_vllm, and mine fails naming all three when none is set; the
    mount is optional so a missing Secret is that clear failure, not a pod waiting for it
    (`crops pipeline submit` checks the Secret first: tests/k8s/test_preflight.py)."""
    spec, executors = cluster
    assert llm_env(executors) == {
        ("endpoint", "CROPS_LLM_ENDPOINT"): True,
        ("api-key", "CROPS_LLM_API_KEY"): True,
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["llm_backend"]["defaultValue"] == (
        "endpoint"
    )
    others = [s for s in STEPS if s != "mine"]
    assert not any("secretAsEnv" in executors[f"exec-{s}"] for s in others)


@pytest.mark.parametrize(
    ("synthesis", "backend", "env"),
    [
        ("none", "none", {}),
        (
            "vllm-offline",
            "vllm-offline",
            {("endpoint", "CROPS_LLM_ENDPOINT"): True, ("api-key", "CROPS_LLM_API_KEY"): True},
        ),
    ],
)
def test_without_an_llm_server_the_secret_is_not_required(
    tmp_path: Path, synthesis: str, backend: str, env: dict
) -> None:
    spec, executors = compiled(tmp_path, "cluster", synthesis=synthesis)
    assert llm_env(executors) == env
    assert spec["root"]["inputDefinitions"]["parameters"]["llm_backend"]["defaultValue"] == (
        backend
    )


def test_the_local_pipeline_keeps_the_auto_backend(tmp_path: Path) -> None:
    """`crops pipeline run --local` has no LLM server: mine's default stays `auto`."""
    spec, _ = compiled(tmp_path, "local")
    assert spec["root"]["inputDefinitions"]["parameters"]["llm_backend"]["defaultValue"] == ("auto")


def test_cluster_options_image_s3_secret_vllm_offline_and_task_gpus(tmp_path: Path) -> None:
    spec, executors = compiled(
        tmp_path,
        "cluster",
        image="crops:1.2.3",
        s3_secret="crops-s3",
        synthesis="vllm-offline",
        task_gpus=1,
    )
    containers = {k: v["container"] for k, v in spec["deploymentSpec"]["executors"].items()}
    assert {c["image"] for c in containers.values()} == {"crops:1.2.3"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "image" not in params  # RayJobs and predictors run the chart's image (crops-platform)
    assert params["llm_backend"]["defaultValue"] == "vllm-offline"
    for step in STEPS:
        names = [
            s["secretNameParameter"]["runtimeValue"]["constant"]
            for s in executors[f"exec-{step}"].get("secretAsEnv", [])
        ]
        assert "crops-s3" in names, step
    assert executors["exec-mine"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    for step in (*GPU_STEPS, "mine"):
        accel = containers[f"exec-{step}"]["resources"]["accelerator"]
        assert accel["resourceType"] == "nvidia.com/gpu" and accel["resourceCount"] == "1"


def test_the_ingest_source(tmp_path: Path) -> None:
    spec, _ = compiled(tmp_path, "local", source="ingest")
    assert "ingest" in tasks(spec) and "simulate" not in tasks(spec)
    assert tasks(spec)["validate"]["dependentTasks"] == ["ingest"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": "prod"}, "target 'prod': use one of local, cluster"),
        ({"source": "s3"}, "source 's3': use one of simulate, ingest"),
        ({"synthesis": "gpt"}, "synthesis 'gpt': use one of endpoint, vllm-offline"),
        ({"task_gpus": -1}, "task_gpus must be >= 0"),
    ],
)
def test_bad_build_options_are_refused(options: dict, message: str) -> None:
    target = options.pop("target", "cluster")
    with pytest.raises(PipelineError, match=message):
        build(target, **options)


# ----------------------------------------------------------------------------- arguments


def test_params_are_typed_as_the_pipeline_declares_them() -> None:
    pipeline = build("cluster")
    kinds = {name: kind for name, (kind, _) in parameters(pipeline).items()}
    assert kinds["max_steps"] == "NUMBER_INTEGER" and kinds["ab_share"] == "NUMBER_DOUBLE"
    args = parse_params(
        ["max_steps=300", "ab-share=0.25", "apply_decision=false", "isvc_name=search"], pipeline
    )
    assert args == {
        "max_steps": 300,
        "ab_share": 0.25,
        "apply_decision": False,
        "isvc_name": "search",
    }
    for bad, message in [
        ("max_steps", "use NAME=VALUE"),
        ("nope=1", "not a pipeline parameter"),
        ("max_steps=many", "expected number_integer"),
        ("apply_decision=maybe", "expected boolean"),
        ("scale=huge", "scale 'huge'"),
        ("target=prod", "target 'prod'"),
        ("max_steps=0", "max_steps must be at least 1"),
    ]:
        with pytest.raises(PipelineError, match=message):
            parse_params([bad], pipeline)


def test_local_arguments_follow_the_scale_profile() -> None:
    args = local_arguments("default", 3, None, {"ab_days": 2})
    assert "max_steps" not in args and args["seed"] == 3  # the default scale converges
    assert args["ab_days"] == 2 and args["target"] == "local"
    assert local_arguments("tiny", 1, 7)["max_steps"] == 7
    with pytest.raises(PipelineError, match="scale 'large': use one of tiny, default"):
        local_arguments("large")
    with pytest.raises(PipelineError, match="target must be local"):
        local_arguments("tiny", params={"target": "cluster"})
    assert set(LOCAL_PROFILES["default"]) <= set(parameters(build("local")))


# ----------------------------------------------------------------------------- the CLI


def test_cli_compile_writes_the_yaml(run, tmp_path: Path) -> None:
    code, stdout, _ = run("pipeline", "compile", "--out", tmp_path / "p.yaml")
    assert code == 0 and f"pipeline compiled to {tmp_path / 'p.yaml'}" in stdout
    assert "nvidia.com/gpu.present" in (tmp_path / "p.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compile", "--target", "prod"], "target 'prod': use one of local, cluster"),
        (["compile", "--out", "."], "is a folder: give a file name"),
        (["compile", "--synthesis", "gpt"], "synthesis 'gpt'"),
        (["run", "--scale", "tiny"], "give --local"),
        (["run", "--local", "--scale", "huge"], "scale 'huge': use one of tiny, default"),
        (["run", "--local", "--scale", "large"], "scale 'large': use one of tiny, default"),
        (["run", "--local", "--max-steps", "0"], "max_steps must be at least 1, got 0"),
        (
            ["run", "--local", "--param", "max_steps=x"],
            "--param max_steps='x': expected number_integer",
        ),
        (["run", "--local", "--param", "bogus=1"], "--param bogus: not a pipeline parameter"),
        (["run", "--local", "--param", "target=cluster"], "target must be local"),
        (["run", "--local", "--param", "scale=large"], "scale 'large': use one of tiny, default"),
        (["submit", "--host", "localhost:8888"], "give the KFP API's URL"),
        (["submit", "--host", "http://x", "--param", "scale=x"], "scale 'x'"),
    ],
)
def test_cli_refuses_bad_input_with_status_2(run, args: list[str], message: str) -> None:
    code, _, stderr = run("pipeline", *args)
    assert code == 2, stderr
    assert message in stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_to_an_unreachable_host_fails_clearly_and_fast(run) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    code, _, stderr = run("pipeline", "submit", "--host", host, "--param", "max_steps=10")
    assert code == 1
    assert f"the KFP host {host} is unreachable" in stderr and "ConnectError" in stderr
    assert time.monotonic() - t0 < 10
    with pytest.raises(PipelineError, match="unreachable"):
        check_host(host, timeout_s=1)


# ----------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_a_failing_task_stops_the_run_naming_the_task_and_its_log(run, tmp_path: Path) -> None:
    code, _, stderr = run(
        "pipeline",
        "run",
        "--local",
        "--scale",
        "tiny",
        "--out",
        tmp_path,
        "--param",
        "filter_model=/no/such/model",
    )
    assert code == 1
    assert "Inner task failed: 'mine'" in stderr and "\x1b[" not in stderr
    assert "cannot load relevance model '/no/such/model'" in stderr
    assert "task 'mine (reformulation, recfeed, LLM, HLA)' failed; its last lines:" in stderr
    (log,) = (tmp_path / "logs").glob("*.log")
    assert f"full log: {log}" in stderr.replace("\n", "")


@pytest.mark.e2e
def test_the_whole_pipeline_runs_under_kfp_local_on_the_tiny_world(run, tmp_path: Path) -> None:
    code, stdout, stderr = run(
        "pipeline", "run", "--local", "--scale", "tiny", "--max-steps", "20", "--out", tmp_path
    )
    assert code == 0, stderr
    for step in ("simulate world", "mine (reformulation", "A/B test and canary decision"):
        assert f"done  {step}" in stderr  # per-task progress (plain lines off a terminal)
    assert "offline retrieval (%)" in stdout and "A/B decision:" in stdout
    (summary_path,) = tmp_path.glob("crops-*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["decision"]["action"] in ("promote", "hold", "rollback")
    assert list(summary["offline"]["scores"]) == ["BM25", "NCE", "CroPS"]
    assert all(t["ok"] for t in summary["tasks"].values()) and len(summary["tasks"]) == 12
    for key in ("offline_table", "ab_report_json", "ab_report_md", "isvc_manifest"):
        assert Path(summary[key]).is_file(), key
        assert summary[key] in stdout.replace("\n", ""), key
    report = json.loads(Path(summary["ab_report_json"]).read_text())
    assert report["decision"] == summary["decision"]
    manifest = yaml.safe_load(Path(summary["isvc_manifest"]).read_text())
    assert manifest["kind"] == "InferenceService"
    # never all traffic to the untested model: the control serves, the candidate is the canary
    (canary,) = manifest["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    served = {c["predictor"]["containers"][0]["args"][2] for c in [canary]}
    assert manifest["spec"]["predictor"]["containers"][0]["args"][2] not in served
    assert Path(summary["offline_table"]).read_text().startswith("# Offline retrieval")
