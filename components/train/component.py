"""train: the dual encoder on Ray Train (`crops train`), in the task or as a KubeRay RayJob.

`crops train` as a component: one dense row of the paper's table (`method`, a slug of
`crops.model.recipe.METHODS`) trained on its subset of the mined samples to convergence
under the stop rule of `crops train` (`crops.model.convergence.StopRule`: validation recall of
held-out training queries, patience, a cap), as `crops experiment` does. The pipeline trains two:

- `method=crops`: every source (search-log levels, reformulation, recommendation feed, LLM),
  H-InfoNCE on the HLA labels;
- `method=nce`: click positives only, in-batch negatives, InfoNCE: the click-only control.

`rayjob` copies the samples and the run's `TrainConfig` (the recipe's, as in the task) to
`<mount path>/runs/<hash>/<method>/` on the artifacts volume, submits `python -m
crops.ray_jobs.train --config <that train.json>` (`crops.k8s.staging.StagedRayJob`), and copies
the model back into the output. The RayJob is the installed release's: image, pods, volume
(mounted at the same path as in the task) and lifecycle come from the ConfigMap `crops-platform`
(`crops.k8s.platform`), exactly as the chart's own RayJobs; the task runs as `crops-pipeline`.
The RayJob trains from that one configuration: the same batches, schedule and stop rule as the
local backend.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    mined: Input[Dataset],
    world: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    method: str = "crops",
    max_steps: int = 0,
    converge: bool = True,
    queries_per_batch: int = -1,
    group_size: int = -1,
    n_hard: int = -1,
    encoder: Optional[str] = None,  # noqa: UP045
    lr: float = 0.0,
    workers: int = -1,
    seed: int = -1,
    backend: str = "local",
    checkpoints: str = "",
    namespace: str = "crops",
    worker_gpus: int = 1,
    job_name: str = "",
    timeout_s: float = 6 * 3600.0,
):
    """Train one row of the paper's table on the mined samples; the model folder is the output.

    `method` names a row of `crops.model.recipe.METHODS` and fixes the sample sources,
    the loss and the hard negatives: `crops` (every source, H-InfoNCE on the HLA labels) or
    `nce` (click positives only, InfoNCE: the click-only control), or any other dense row.
    Every method trains to convergence under the same stop rule, as in `crops experiment`
    (`crops.model.convergence.StopRule`: validation recall on held-out training queries,
    patience, a cap); training.json in the model folder has the curve and why it stopped.
    The settings and their defaults are the training recipe's (`crops.model.recipe.Recipe`,
    shared with `crops experiment`), and both backends train from the one `TrainConfig` it
    builds, so they draw the same batches.

    backend `local` trains here with Ray local (TorchTrainer, Train V2, CPU workers, or GPUs
    when the task has them). backend `rayjob` copies the samples and that configuration to the
    artifacts volume, submits a KubeRay RayJob running `python -m crops.ray_jobs.train --config
    <staged train.json>` with GPU workers that mount the same volume
    (`crops.k8s.staging.StagedRayJob`), waits, and copies the model back. The RayJob's image,
    pods, volume and lifecycle are the installed release's
    (`crops.k8s.platform.Platform.from_cluster(namespace)`), the same as the chart's.

    Args:
        mined: the `mine` output (samples.parquet, synth_videos.parquet).
        world: the world (videos.parquet).
        model: the model folder (loads with `DualEncoder.load`).
        metrics: samples, steps, the last loss, samples/s, seconds.
        method: crops | nce | dpr | ance | fs-lr | plus-reformulation | plus-recommendation |
            binary-infonce.
        max_steps: cap on optimizer steps; 0: the stop rule's default.
        converge: stop on the validation patience rule (true) or train exactly `max_steps`.
        queries_per_batch: query groups per global batch; -1: the recipe's
            (`crops.model.recipe.Recipe`, as for every -1 or unset setting here).
        group_size: samples per query group; -1: the recipe's.
        n_hard: hard negatives per group for the methods that use them (DPR, ANCE); -1: the
            recipe's.
        encoder: hash | hf:<name-or-path>; unset: the recipe's.
        lr: learning rate; 0: the encoder's default.
        workers: Ray Train workers (local: CPU workers; rayjob: GPU workers); -1: the recipe's.
        seed: random seed; -1: the recipe's.
        backend: local | rayjob.
        checkpoints: checkpoint folder or s3:// URI (local backend); empty: a temporary folder.
        namespace: the RayJob's namespace, where the platform is installed (rayjob).
        worker_gpus: GPUs per RayJob worker (rayjob; 0 trains on CPUs).
        job_name: the RayJob's name; empty: crops-train-<method>-<output hash>-<time>.
        timeout_s: give up waiting for the RayJob after this long (rayjob).
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from crops.model.convergence import StopRule, stop_options
    from crops.model.recipe import Recipe, method_by_name, train_config, training_data

    m = method_by_name(method)
    if not m.dense:
        raise ValueError(f"{m.name} is not a trained method")
    if backend not in ("local", "rayjob"):
        raise ValueError(f"backend {backend!r}: use local or rayjob")
    if max_steps < 0:
        raise ValueError(f"max_steps must be at least 1 (or 0 for the default), got {max_steps}")
    if not converge and max_steps == 0:
        raise ValueError("converge=false trains exactly max_steps steps: give max_steps")
    given = {
        "encoder": encoder,
        "queries_per_batch": queries_per_batch,
        "group_size": group_size,
        "n_hard": n_hard,
        "workers": workers,
        "seed": seed,
    }  # unset: the recipe's defaults (their one home)
    recipe = Recipe(
        stop=StopRule(**stop_options(max_steps or None, None if converge else 0)),
        lr=lr or None,
        **{k: v for k, v in given.items() if v not in (None, -1)},
    )  # the experiment's recipe: the same batches on both backends
    work = Path(tempfile.mkdtemp(prefix="crops-train-"))
    data = training_data(m, Path(mined.path), Path(world.path) / "videos.parquet", work / "data")
    n = data.rows
    out = Path(model.path)

    if backend == "local":
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        from crops.model.train import train as run

        storage = checkpoints or str(work / "checkpoints")
        cfg = train_config(m, recipe, data, out, name=f"pipeline-{m.slug}", storage_path=storage)
        summary = run(cfg)
        result = {"backend": "local", "wall_s": summary["wall_s"], **summary["metrics"]}
    else:
        from crops.k8s.staging import StagedRayJob
        from crops.model.recipe import TrainingData

        stage = StagedRayJob.for_output(model.uri, m.slug, namespace)
        staged = TrainingData(
            samples=stage.put(data.samples, "data/samples.parquet"),
            videos=tuple(
                stage.put(v, "videos.parquet" if i == 0 else f"data/{v.name}")
                for i, v in enumerate(data.videos)
            ),
            rows=n,
        )
        cfg = train_config(
            m,
            recipe,
            staged,
            stage.root / "model",
            name=f"pipeline-{m.slug}",
            storage_path=str(stage.root / "checkpoints"),
            use_gpu=worker_gpus > 0,
        )
        config = stage.write("train.json", cfg.model_dump_json(indent=2))
        name, job = stage.run(
            name_prefix=f"crops-train-{m.slug}",
            job="train",
            script="train",
            args=["--config", config],
            workers=recipe.workers,
            worker_gpus=worker_gpus,
            timeout_s=timeout_s,
            name=job_name,
        )
        stage.fetch("model", out, ignore=["checkpoints"])
        trained = json.loads((out / "training.json").read_text())
        result = {"backend": "rayjob", "rayjob": name, "wall_s": trained["wall_s"]}
        result.update(trained.get("metrics", {}))
        model.metadata["rayjob"] = json.loads(json.dumps(job, default=str))
    shutil.rmtree(work, ignore_errors=True)

    metrics.log_metric("samples", n)
    validation = json.loads((out / "training.json").read_text())["validation"]
    metrics.log_metric("steps", int(json.loads((out / "training.json").read_text())["steps"]))
    if validation.get("best_step") is not None:
        metrics.log_metric("best_step", int(validation["best_step"]))
        metrics.log_metric("validation_recall", float(validation["best"]))
    for key in ("loss", "samples_per_s", "wall_s"):
        if isinstance(result.get(key), int | float):
            metrics.log_metric(key, float(result[key]))
    model.metadata.update(
        {
            "method": m.name,
            "slug": m.slug,
            "loss": m.loss,
            "sources": list(m.sources),
            "encoder": recipe.encoder,
            "samples": n,
            "backend": result["backend"],
            "why_stopped": validation["why_stopped"],
        }
    )
