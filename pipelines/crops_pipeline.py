"""The CroPS pipeline (Kubeflow Pipelines v2).

simulate (or ingest) -> validate -> serve LLM (vLLM, or llama.cpp locally) -> mine -> train
CroPS (every source, H-InfoNCE on the HLA labels) and the click-only control (NCE: click
positives, InfoNCE) -> index both -> offline evaluation -> deploy CroPS as a canary
InferenceService -> online A/B test and canary decision.

`build_pipeline(target)` returns the pipeline for a target: `local` runs under `kfp.local`
(`crops pipeline run --local`); `cluster` adds the kfp-kubernetes settings a KFP backend
needs: GPU nodes for train and index (and for mine when it runs vLLM in-process), the
artifacts volume on every task, the LLM endpoint and key from a Secret, an optional S3 Secret.
`compile_pipeline(path, target)` writes the IR YAML (`crops pipeline compile`).
"""

from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Markdown, Metrics

from crops.abtest.simulate import AbTestConfig
from crops.components import BASE_IMAGE
from crops.components.abtest import abtest
from crops.components.deploy import deploy
from crops.components.evaluate import evaluate
from crops.components.index import index
from crops.components.ingest import ingest
from crops.components.mine import mine
from crops.components.serve_llm import release_llm, serve_llm
from crops.components.simulate import simulate
from crops.components.train import train
from crops.components.validate import validate
from crops.evaluate.sequential import CanaryPolicy
from crops.k8s.platform import Platform
from crops.mining.config import MineConfig
from crops.model.recipe import DEFAULTS

PIPELINE_NAME = "crops"
TARGETS = ("local", "cluster")
SOURCES = ("simulate", "ingest")
#: Locally, synthesis stops sending requests after this long (the poorest queries first):
#: the small CPU model writes a video in a few seconds, and the main job stays short.
LOCAL_SYNTH_BUDGET_S = 110.0

#: How the mine task synthesises videos: `endpoint` (an LLM server is required; on a cluster
#: the run fails naming what is missing rather than fall back), `vllm-offline` (vLLM in the
#: task), `none` (no synthesis).
SYNTHESIS = ("endpoint", "vllm-offline", "none")
#: The mine task's `llm_backend` default per synthesis; `endpoint` locally keeps `auto`: the
#: endpoint when one is set, else the local LLM server that the serve_llm task starts
#: (llama.cpp with the packaged SmolLM2-135M, crops.mining.llm_server).
LLM_BACKEND = {"vllm-offline": "vllm-offline", "none": "none"}

#: The chart's default values: the artifacts volume (RayJob inputs and models, checkpoints,
#: published serving folders), where every task mounts it, and the labels of pipeline pods.
_PLATFORM = Platform.default()
ARTIFACTS_PVC = _PLATFORM.artifacts_pvc
MOUNT_PATH = _PLATFORM.mount_path
PIPELINE_POD_LABELS = {
    k: v for k, v in _PLATFORM.pod_labels("pipeline").items() if k != "app.kubernetes.io/instance"
}
#: The LLM endpoint and its API key (Secret keys -> environment of the mine task).
LLM_SECRET = "crops-llm"
LLM_SECRET_ENV = {"endpoint": "CROPS_LLM_ENDPOINT", "api-key": "CROPS_LLM_API_KEY"}
#: S3-compatible storage credentials (ingest from s3://, checkpoints to s3://), when asked for.
S3_SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class Outputs(NamedTuple):
    """The pipeline's outputs: the offline table, the InferenceService, the A/B report."""

    offline_table: Markdown
    offline_metrics: Metrics
    offline_results: Artifact
    isvc_manifest: Artifact
    ab_report: Markdown
    ab_metrics: Metrics
    ab_results: Artifact


def _on_gpu_nodes(task: dsl.PipelineTask, gpus: int) -> None:
    kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    if gpus > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)


def build_pipeline(
    target: str = "local",
    *,
    source: str = "simulate",
    image: str = BASE_IMAGE,
    pvc: str = ARTIFACTS_PVC,
    mount_path: str = MOUNT_PATH,
    llm_secret: str = LLM_SECRET,
    s3_secret: str | None = None,
    synthesis: str = "endpoint",
    task_gpus: int = 0,
):
    """The pipeline for `target` (local | cluster).

    Args:
        target: `local` (kfp.local; no Kubernetes settings) or `cluster`.
        source: `simulate` the embedded default world, or `ingest` one from `world_uri`.
        image: the image of every task (default `BASE_IMAGE`). What the tasks create (RayJobs,
            the predictor) runs the installed chart's `image` (ConfigMap crops-platform), so the
            two agree when both name the same build.
        pvc: the artifacts PersistentVolumeClaim, mounted on every task at `mount_path`
            (cluster).
        mount_path: where.
        llm_secret: the Secret with the LLM `endpoint` and `api-key` (cluster). With
            synthesis `endpoint` the mine task fails naming it when no endpoint is set (not
            in the Secret, nor `llm_endpoint`, nor `serve_vllm`); `crops pipeline submit`
            checks the Secret and its keys first. Unused with `none`.
        s3_secret: a Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally
            AWS_ENDPOINT_URL) for s3:// URIs, set on every task (cluster); None: none.
        synthesis: `endpoint` (an LLM server: the Secret's endpoint, `llm_endpoint` or
            `serve_vllm`; required on a cluster, where mine's `llm_backend` is `endpoint`;
            locally `auto`), `none` (no synthesis), or `vllm-offline` (vLLM in the mine
            task, which then goes to a GPU node).
        task_gpus: GPUs requested by the train and index tasks themselves (their `local`
            backend on a GPU node); 0 with the default `rayjob` backend, whose workers hold
            the GPUs.
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: use one of {', '.join(TARGETS)}")
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: use one of {', '.join(SOURCES)}")
    if synthesis not in SYNTHESIS:
        raise ValueError(f"synthesis {synthesis!r}: use one of {', '.join(SYNTHESIS)}")
    if task_gpus < 0:
        raise ValueError(f"task_gpus must be >= 0, got {task_gpus}")
    cluster = target == "cluster"
    checkpoints = f"{mount_path}/checkpoints" if cluster else ""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CroPS: mine cross-perspective positives, train with H-InfoNCE against the"
        " click-only model, index, evaluate offline, deploy as a canary, A/B test and decide.",
    )
    def crops_pipeline(
        scale: str = "default",
        seed: int = 1,
        world_uri: str = "",
        filter_model: str = MineConfig().filter_model,
        llm_endpoint: str = "",
        llm_model: str = "",
        llm_backend: str = LLM_BACKEND.get(synthesis, "endpoint" if cluster else "auto"),
        max_steps: int = 0,
        converge: bool = True,
        encoder: str = DEFAULTS.encoder,
        workers: int = DEFAULTS.workers,
        train_backend: str = "rayjob" if cluster else "local",
        worker_gpus: int = 1 if cluster else 0,
        target: str = target,
        namespace: str = "crops",
        isvc_name: str = "crops",
        serving_mode: str = "Standard",
        canary_percent: int = 10,
        offline_metric: str = "graded/nDCG@4",
        offline_tolerance: float = 0.02,
        deploy_wait_s: float = 900.0,
        control_url: str = "",
        treatment_url: str = "",
        ab_share: float = 0.5,
        ab_users: int = 0,
        ab_days: int = AbTestConfig.model_fields["days"].default,
        ab_searches_per_user: float = 1.6,
        ab_seed: int = 0,
        ab_min_users_per_arm: int = CanaryPolicy().min_users_per_arm,
        ab_max_p99_ms: float = CanaryPolicy().max_p99_ms,
        apply_decision: bool = cluster,
        serve_vllm: bool = False,
        vllm_gpus: int = 1,
        synth_budget_s: float = 0.0 if cluster else LOCAL_SYNTH_BUDGET_S,
    ) -> Outputs:
        if source == "simulate":
            world_task = simulate(scale=scale, seed=seed).set_display_name("simulate world")
        else:
            world_task = ingest(uri=world_uri).set_display_name("ingest world")
        world = world_task.outputs["world"]
        checked = validate(world=world).set_display_name("validate")
        llm = serve_llm(
            llm_endpoint=llm_endpoint,
            llm_model=llm_model,
            target=target,
            serve_vllm=serve_vllm,
            namespace=namespace,
            gpus=vllm_gpus,
            llm_backend=llm_backend,
        ).set_display_name("serve LLM")
        mined_task = mine(
            world=world,
            llm_endpoint=llm.outputs["Output"],
            llm_model=llm_model,
            llm_backend=llm_backend,
            filter_model=filter_model,
            synth_budget_s=synth_budget_s,
            seed=seed,
        ).after(checked)
        mined_task.set_display_name("mine (reformulation, recfeed, LLM, HLA)")
        mined = mined_task.outputs["mined"]
        # vLLM down again once mining ends, failed or not, so it does not keep its GPU.
        released = release_llm(
            serve_vllm=serve_vllm, namespace=namespace, llm_endpoint=llm.outputs["Output"]
        )
        released.after(mined_task).ignore_upstream_failure()
        released.set_display_name("release the LLM server")

        trained, indexed = {}, {}
        for key, method, label in (
            ("crops", "crops", "train CroPS (H-InfoNCE, HLA)"),
            ("control", "nce", "train control (NCE, clicks)"),
        ):
            t = train(
                mined=mined,
                world=world,
                method=method,
                max_steps=max_steps,
                converge=converge,
                encoder=encoder,
                workers=workers,
                seed=seed,
                backend=train_backend,
                checkpoints=checkpoints,
                namespace=namespace,
                worker_gpus=worker_gpus,
            )
            t.set_display_name(label)
            ix = index(
                model=t.outputs["model"],
                world=world,
                backend=train_backend,
                namespace=namespace,
                worker_gpus=worker_gpus,
            )
            ix.set_display_name(f"index {'CroPS' if key == 'crops' else 'control'}")
            trained[key], indexed[key] = t, ix

        offline = evaluate(
            world=world,
            treatment_model=trained["crops"].outputs["model"],
            treatment_index=indexed["crops"].outputs["index"],
            control_model=trained["control"].outputs["model"],
            control_index=indexed["control"].outputs["index"],
        ).set_display_name("offline evaluation")
        # The candidate goes out as a canary beside the control (the platform's image, volume
        # and mount path), unless the offline table shows it worse than the control.
        deployed = deploy(
            model=trained["crops"].outputs["model"],
            index=indexed["crops"].outputs["index"],
            control_model=trained["control"].outputs["model"],
            control_index=indexed["control"].outputs["index"],
            offline=offline.outputs["results"],
            target=target,
            name=isvc_name,
            namespace=namespace,
            mode=serving_mode,
            canary_percent=canary_percent,
            metric=offline_metric,
            tolerance=offline_tolerance,
            wait_s=deploy_wait_s,
        )
        deployed.set_display_name("deploy canary")
        # On a cluster the A/B test measures the two predictors the InferenceService serves
        # (deploy's URLs); locally it serves the model folders unless URLs are given.
        ab = abtest(
            world=world,
            control_model=trained["control"].outputs["model"],
            control_index=indexed["control"].outputs["index"],
            treatment_model=trained["crops"].outputs["model"],
            treatment_index=indexed["crops"].outputs["index"],
            target=target,
            control_url=deployed.outputs["control_url"] if cluster else control_url,
            treatment_url=deployed.outputs["treatment_url"] if cluster else treatment_url,
            deploy_decision=deployed.outputs["decision"],
            deploy_reason=deployed.outputs["reason"],
            treatment_share=ab_share,
            users=ab_users,
            days=ab_days,
            searches_per_user=ab_searches_per_user,
            seed=ab_seed,
            min_users_per_arm=ab_min_users_per_arm,
            max_p99_ms=ab_max_p99_ms,
            apply=apply_decision,
            isvc=isvc_name,
            namespace=namespace,
            mode=serving_mode,
        ).after(deployed)
        ab.set_display_name("A/B test and canary decision")

        if cluster:
            tasks = [world_task, checked, llm, mined_task, offline, deployed, ab]
            tasks += [*trained.values(), *indexed.values()]
            tasks.append(released)
            for task in tasks:
                # The NetworkPolicies admit pipeline pods by these labels (values `roles`).
                for key, value in PIPELINE_POD_LABELS.items():
                    kubernetes.add_pod_label(task, key, value)
                kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)
                if s3_secret:
                    kubernetes.use_secret_as_env(task, s3_secret, S3_SECRET_ENV, optional=True)
            for task in [*trained.values(), *indexed.values()]:
                _on_gpu_nodes(task, task_gpus)
                task.set_cpu_request("2").set_memory_request("8G")
            if synthesis == "vllm-offline":
                _on_gpu_nodes(mined_task, 1)
            if synthesis != "none":
                # An LLM server was asked for: no silent fallback. The mount is optional so
                # that a missing Secret fails the task with a message naming it (mine's
                # llm_backend `endpoint`) instead of leaving the pod waiting for the Secret;
                # `crops pipeline submit` checks the Secret and its keys before the run.
                kubernetes.use_secret_as_env(mined_task, llm_secret, LLM_SECRET_ENV, optional=True)
            for task in (mined_task, offline, ab):
                task.set_cpu_request("2").set_memory_request("8G")
            if image != BASE_IMAGE:
                for task in tasks:
                    task.set_container_image(image)

        return Outputs(
            offline_table=offline.outputs["table"],
            offline_metrics=offline.outputs["metrics"],
            offline_results=offline.outputs["results"],
            isvc_manifest=deployed.outputs["manifest"],
            ab_report=ab.outputs["report"],
            ab_metrics=ab.outputs["metrics"],
            ab_results=ab.outputs["results"],
        )

    return crops_pipeline


def compile_pipeline(package_path: str, target: str = "cluster", **options) -> str:
    """Compile `build_pipeline(target, **options)` to KFP IR YAML at `package_path`."""
    compiler.Compiler().compile(build_pipeline(target, **options), package_path=package_path)
    return package_path


#: The pipeline for kfp.local, as `crops pipeline run --local` runs it.
crops_pipeline = build_pipeline("local")
