"""index: embed every video with the model and build the FAISS index folder (`crops index`).

`crops index` as a component: every video of the world (the catalogue an endpoint serves;
synthetic videos are training data, not content) embedded with the model's video tower and put
in a FAISS index folder (`index.faiss`, `ids.npy`, `manifest.json` naming the model's hash).
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def index(
    model: Input[Model],
    world: Input[Dataset],
    index: Output[Artifact],
    metrics: Output[Metrics],
    factory: Optional[str] = None,  # noqa: UP045 - kfp reads typing.Optional only
    actors: int = -1,
    batch_size: int = -1,
    nprobe: int = 0,
    backend: str = "local",
    namespace: str = "crops",
    workers: int = 1,
    worker_gpus: int = 1,
    job_name: str = "",
    timeout_s: float = 2 * 3600.0,
):
    """Index the world's videos (the catalogue a retrieval endpoint serves) with the model.

    backend `local` runs `crops.index.build.build_index` here (Ray Data actor pool, faiss).
    backend `rayjob` copies the model and the videos to the artifacts volume and submits a
    KubeRay RayJob running `python -m crops.ray_jobs.build_index <crops index options>` (GPU
    embedding actors, faiss-gpu for IVF factories), then copies the index back. The RayJob is
    the installed release's (`crops.k8s.platform.Platform.from_cluster(namespace)`).

    Args:
        model: the model folder from `train`.
        world: the world (videos.parquet).
        index: the index folder: index.faiss, ids.npy, manifest.json.
        metrics: count, dim, embed and build seconds.
        factory: any FAISS index_factory string (Flat, HNSW32, IVF4096,PQ32, ...); unset:
            IndexConfig's (`crops.index.build`), as every unset setting here.
        actors: Ray Data embedding actors; unset: IndexConfig's; -1: IndexConfig's.
        batch_size: texts per embedding batch; unset: IndexConfig's; -1: IndexConfig's.
        nprobe: IVF lists searched; 0: the default.
        backend: local | rayjob.
        namespace: the RayJob's namespace, where the platform is installed (rayjob).
        workers: RayJob workers (rayjob).
        worker_gpus: GPUs per RayJob worker (rayjob; 0: CPUs).
        job_name: the RayJob's name; empty: crops-index-<output hash>-<time>.
        timeout_s: give up waiting for the RayJob after this long (rayjob).
    """
    import json
    from pathlib import Path

    import numpy as np

    if backend not in ("local", "rayjob"):
        raise ValueError(f"backend {backend!r}: use local or rayjob")
    from crops.index.build import IndexConfig

    videos = Path(world.path) / "videos.parquet"
    given = {"factory": factory, "actors": actors, "batch_size": batch_size}
    cfg = IndexConfig(  # unset parameters keep IndexConfig's defaults (their one home)
        model_dir=model.path,
        videos=[str(videos)],
        out=index.path,
        nprobe=nprobe or None,
        **{k: v for k, v in given.items() if v not in (None, -1)},
    )
    if backend == "local":
        from crops.index.build import build_index

        summary = build_index(cfg)
    else:
        from crops.k8s.staging import StagedRayJob

        stage = StagedRayJob.for_output(index.uri, "index-job", namespace)
        args = [
            "--model", stage.put(Path(model.path), "model"),
            "--videos", stage.put(videos, "videos.parquet"),
            "--out", stage.root / "index",
            "--factory", cfg.factory,
            "--actors", cfg.actors,
            "--batch-size", cfg.batch_size,
            "--force",
        ]  # fmt: skip
        if nprobe:
            args += ["--nprobe", nprobe]
        args.append("--gpu" if worker_gpus > 0 else "--no-gpu")
        _, job = stage.run(
            name_prefix="crops-index",
            job="index",
            script="build_index",
            args=args,
            workers=workers,
            worker_gpus=worker_gpus,
            timeout_s=timeout_s,
            name=job_name,
        )
        stage.fetch("index", Path(index.path))
        summary = json.loads((Path(index.path) / "manifest.json").read_text())
        summary["count"] = len(np.load(Path(index.path) / "ids.npy"))
        index.metadata["rayjob"] = json.loads(json.dumps(job, default=str))
    for key in ("count", "dim", "embed_s", "build_s"):
        if isinstance(summary.get(key), int | float):
            metrics.log_metric(key, summary[key])
    index.metadata.update(
        {"factory": summary.get("factory", cfg.factory), "model_hash": summary.get("model_hash")}
    )
