"""train: the dual encoder on Ray Train (`crops train`), in the task or as a KubeRay RayJob.

`crops train` as a component: one dense row of the paper's table (`method`, a slug of
`crops.evaluate.experiment.METHODS`) trained on its subset of the mined samples to convergence
under the stop rule of `crops train` (`crops.model.convergence.StopRule`: validation recall of
held-out training queries, patience, a cap), as `crops experiment` does. The pipeline trains two:

- `method=crops`: every source (search-log levels, reformulation, recommendation feed, LLM),
  H-InfoNCE on the HLA labels;
- `method=nce`: click positives only, in-batch negatives, InfoNCE: the click-only control.

`rayjob` copies the samples to `<mount path>/runs/<hash>/<method>/` on the artifacts volume,
submits `python -m crops.ray_jobs.train <crops train options> --gpu` with
`crops.k8s.rayjob.submit_and_wait(RayJobSpec(...), timeout_s)`, and copies the model back
into the output. The RayJob is the installed release's: image, pods, volume (mounted at the
same path as in the task) and lifecycle come from the ConfigMap `crops-platform`
(`crops.k8s.platform`), exactly as the chart's own RayJobs; the task runs as `crops-pipeline`.
The RayJob runs `crops train` with the same stop rule (`--max-steps`, `--patience 0` when
`converge` is false).
"""

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
    queries_per_batch: int = 32,
    group_size: int = 8,
    n_hard: int = 2,
    encoder: str = "hash",
    lr: float = 0.0,
    workers: int = 2,
    seed: int = 0,
    backend: str = "local",
    checkpoints: str = "",
    namespace: str = "crops",
    worker_gpus: int = 1,
    job_name: str = "",
    timeout_s: float = 6 * 3600.0,
):
    """Train one row of the paper's table on the mined samples; the model folder is the output.

    `method` names a row of `crops.evaluate.experiment.METHODS` and fixes the sample sources,
    the loss and the hard negatives: `crops` (every source, H-InfoNCE on the HLA labels) or
    `nce` (click positives only, InfoNCE: the click-only control), or any other dense row.
    Every method trains to convergence under the same stop rule, as in `crops experiment`
    (`crops.model.convergence.StopRule`: validation recall on held-out training queries,
    patience, a cap); training.json in the model folder has the curve and why it stopped.

    backend `local` trains here with Ray local (TorchTrainer, Train V2, CPU workers, or GPUs
    when the task has them). backend `rayjob` copies the samples to the artifacts volume,
    submits a KubeRay RayJob running `python -m crops.ray_jobs.train <crops train options>` with
    GPU workers that mount the same volume (`crops.k8s.rayjob.submit_and_wait`), waits, and
    copies the model back. The RayJob's image, pods, volume and lifecycle are the installed
    release's (`crops.k8s.platform.Platform.from_cluster(namespace)`), the same as the chart's.

    Args:
        mined: the `mine` output (samples.parquet, synth_videos.parquet).
        world: the world (videos.parquet).
        model: the model folder (loads with `DualEncoder.load`).
        metrics: samples, steps, the last loss, samples/s, seconds.
        method: crops | nce | dpr | ance | fs-lr | plus-reformulation | plus-recommendation |
            binary-infonce.
        max_steps: cap on optimizer steps; 0: the stop rule's default.
        converge: stop on the validation patience rule (true) or train exactly `max_steps`.
        queries_per_batch: query groups per global batch.
        group_size: samples per query group.
        n_hard: hard negatives per group for the methods that use them (DPR, ANCE).
        encoder: hash | hf:<name-or-path>.
        lr: learning rate; 0: the encoder's default.
        workers: Ray Train workers (local: CPU workers; rayjob: GPU workers).
        seed: random seed.
        backend: local | rayjob.
        checkpoints: checkpoint folder or s3:// URI (local backend); empty: a temporary folder.
        namespace: the RayJob's namespace, where the platform is installed (rayjob).
        worker_gpus: GPUs per RayJob worker (rayjob; 0 trains on CPUs).
        job_name: the RayJob's name; empty: crops-train-<method>-<output hash>-<time>.
        timeout_s: give up waiting for the RayJob after this long (rayjob).
    """
    import hashlib
    import json
    import os
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from crops.evaluate.experiment import ExperimentConfig, method_by_name, subset_samples

    m = method_by_name(method)
    if not m.dense:
        raise ValueError(f"{m.name} is not a trained method")
    if backend not in ("local", "rayjob"):
        raise ValueError(f"backend {backend!r}: use local or rayjob")
    from crops.model.convergence import StopRule, stop_options

    if max_steps < 0:
        raise ValueError(f"max_steps must be at least 1 (or 0 for the default), got {max_steps}")
    if not converge and max_steps == 0:
        raise ValueError("converge=false trains exactly max_steps steps: give max_steps")
    stop = stop_options(max_steps or None, None if converge else 0)
    StopRule(**stop)  # refuse a bad rule here, before any work
    # epochs as `crops experiment` runs them (ANCE's index refreshes), from its one home
    per_epoch = ExperimentConfig.model_fields["steps_per_epoch"].default
    work = Path(tempfile.mkdtemp(prefix="crops-train-"))
    samples, n = subset_samples(Path(mined.path), m, work / "data")
    videos = [Path(world.path) / "videos.parquet"]
    synth = Path(mined.path) / "synth_videos.parquet"
    if "llm" in m.sources and synth.is_file():
        videos.append(synth)
    hard = n_hard if m.hard_negatives != "none" else 0
    out = Path(model.path)

    if backend == "local":
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        from crops.model.train import TrainConfig
        from crops.model.train import train as run

        cfg = TrainConfig(
            samples=str(samples),
            videos=[str(v) for v in videos],
            out=str(out),
            loss=m.loss,
            encoder=encoder,
            stop=stop,
            steps_per_epoch=per_epoch,
            queries_per_batch=queries_per_batch,
            group_size=group_size,
            hard_negatives=m.hard_negatives,
            n_hard=hard,
            workers=workers,
            lr=lr or None,
            seed=seed,
            storage_path=checkpoints or str(work / "checkpoints"),
            name=f"pipeline-{m.slug}",
        )
        summary = run(cfg)
        result = {"backend": "local", "wall_s": summary["wall_s"], **summary["metrics"]}
    else:
        from crops.k8s.platform import Platform
        from crops.k8s.rayjob import RayJobSpec, entrypoint, staging_root, submit_and_wait

        platform = Platform.from_cluster(namespace)
        key = hashlib.sha256(model.uri.encode()).hexdigest()[:10]
        attempt = f"{int(time.time()) % 100_000:05d}"  # a retried task makes a new RayJob
        root = staging_root(platform, key, m.slug)
        (root / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy2(samples, root / "data" / "samples.parquet")
        shutil.copy2(videos[0], root / "videos.parquet")
        if len(videos) > 1:  # `crops train` takes synth_videos.parquet beside the samples
            shutil.copy2(videos[1], root / "data" / "synth_videos.parquet")
        args = [
            "--samples", root / "data" / "samples.parquet",
            "--videos", root / "videos.parquet",
            "--out", root / "model",
            "--loss", m.loss,
            "--encoder", encoder,
            "--workers", workers,
            "--queries-per-batch", queries_per_batch,
            "--group-size", group_size,
            "--steps-per-epoch", per_epoch,
            "--hard-negatives", m.hard_negatives,
            "--n-hard", hard,
            "--storage-path", root / "checkpoints",
            "--seed", seed,
        ]  # fmt: skip
        if lr:
            args += ["--lr", lr]
        if "max_steps" in stop:
            args += ["--max-steps", stop["max_steps"]]
        if "patience" in stop:
            args += ["--patience", 0]
        if worker_gpus > 0:
            args.append("--gpu")
        spec = RayJobSpec(
            name=job_name or f"crops-train-{m.slug}-{key[:8]}-{attempt}",
            namespace=namespace,
            job="train",
            entrypoint=entrypoint("train", args),
            workers=workers,
            worker_gpus=worker_gpus,
        )
        job = submit_and_wait(spec, timeout_s=timeout_s, platform=platform)
        shutil.copytree(root / "model", out, ignore=shutil.ignore_patterns("checkpoints"))
        trained = json.loads((out / "training.json").read_text())
        result = {"backend": "rayjob", "rayjob": spec.name, "wall_s": trained["wall_s"]}
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
            "encoder": encoder,
            "samples": n,
            "backend": result["backend"],
            "why_stopped": validation["why_stopped"],
        }
    )
