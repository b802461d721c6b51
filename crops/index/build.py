"""Build a FAISS index of every video from a trained model: `crops index`.

Steps: check every input before starting Ray (model folder, video files, factory, out
folder, enough vectors to train); read and validate the videos tables (pyarrow, the `videos`
contract) and join their texts; embed them with a Ray Data actor pool (`crops.index.embed`);
build the index (`build_faiss`); write the folder (`crops.index.store.write_index`).

Video ids are unique across the given files: the same id in two files is an error naming
both (an index cannot say which text it holds); a duplicate inside one file is quarantined by
the contract check and counted.

Sharding (corpora above ``shard_size`` vectors), by factory:

- IVF factories (``IVF4096,Flat``, ``IVF4096,PQ32``, ``OPQ16,IVF4096,PQ16``, ...) and
  flat-code ones (``PQ32``, ``SQ8``): train once on a sample, then each shard is encoded into a
  copy of the trained empty index in its own Ray task (in parallel, across the cluster) and
  the shards are merged in order with ``merge_from``;
- ``Flat``: adding is a memory copy, so all vectors go in with one add (shards, in tasks or
  one after the other here, only add copies: 1.7x raw FAISS at 1M vectors);
- graph indexes (``HNSW32``, ...) cannot be merged: they are built from all the vectors in
  one process (FAISS's own threads).

On a GPU (``faiss.get_num_gpus() > 0``, faiss-gpu installed) IVF factories train and add on the
GPU in this process; Flat and HNSW stay on the CPU (FAISS has no GPU HNSW, a GPU Flat gains
nothing at build time).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from crops.index.store import MANIFEST, model_hash, write_index

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: nprobe written to the manifest of an IVF index when none is given (capped at nlist).
DEFAULT_NPROBE = 32
#: HNSW efSearch written to the manifest when none is given (FAISS's own default is 16).
DEFAULT_EF_SEARCH = 64


class IndexConfig(BaseModel):
    """Everything an index build needs; stored in the index manifest."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: str = Field(description="MODEL_DIR written by `crops train`")
    videos: list[str] = Field(min_length=1, description="videos tables (Parquet)")
    out: str = Field(description="INDEX_DIR to write")
    factory: str = Field("Flat", description="any FAISS index_factory string")
    batch_size: int = Field(256, ge=1, description="texts per embedding batch")
    actors: int = Field(2, ge=1, description="Ray Data embedding actors")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor (0.5: 2-core machines)")
    use_gpu: bool | None = Field(None, description="None: use GPUs when Ray has any")
    shard_size: int = Field(250_000, ge=1, description="vectors per shard")
    train_size: int = Field(100_000, ge=1, description="training sample (IVF, PQ, SQ)")
    nprobe: int | None = Field(None, ge=1, description=f"IVF; default min(nlist, {DEFAULT_NPROBE})")
    ef_search: int | None = Field(None, ge=1, description=f"HNSW; default {DEFAULT_EF_SEARCH}")
    force: bool = Field(False, description="replace an index already in OUT")
    seed: int = 0

    @field_validator("factory")
    @classmethod
    def _factory_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the FAISS factory string is empty")
        if value.upper().startswith("IDMAP"):
            raise ValueError(
                f"{value!r}: drop IDMap, the index folder maps rows to video ids (ids.npy)"
            )
        return value


# ------------------------------------------------------------------------------ the FAISS part


def make_index(factory: str, dim: int) -> Any:
    """An empty inner-product index from a factory string; a bad string raises ValueError."""
    import faiss

    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1]
        detail = detail.split(" failed: ", 1)[-1] if " failed: " in detail else detail
        detail = detail.split(": ", 1)[-1] if detail.startswith("Error") else detail
        raise ValueError(
            f"invalid FAISS factory {factory!r} for {dim}-d vectors: {detail}"
        ) from exc


def _ivf(index: Any) -> Any | None:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def shard_mode(index: Any) -> str:
    """How shards of this index are built: ``tasks`` (encoded in Ray tasks, merged with
    merge_from) or ``whole`` (one add of everything: Flat, whose add is a copy that shards
    would only slow down, and graphs, which cannot be merged)."""
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexFlat):
        return "whole"
    if _ivf(index) is not None or isinstance(inner, faiss.IndexFlatCodes):
        return "tasks"
    return "whole"


def min_train_points(index: Any) -> int:
    """The fewest training vectors FAISS accepts for this index (0: needs no training)."""
    import faiss

    if index.is_trained:
        return 0
    need = 1
    ivf = _ivf(index)
    if ivf is not None:
        need = max(need, int(ivf.nlist))
    for part in (ivf, index):
        inner = faiss.downcast_index(part) if part is not None else None
        pq = getattr(inner, "pq", None)
        if pq is not None:
            need = max(need, int(pq.ksub))
    return need


def _suggest_ivf(factory: str, n: int) -> str:
    nlist = 1 << max(0, int(np.log2(max(n // 39, 1))))
    return re.sub(r"IVF\d+", f"IVF{nlist}", factory, count=1)


def check_trainable(factory: str, dim: int, n: int) -> dict[str, Any]:
    """Fail before any work when ``n`` vectors cannot train ``factory``; returns its facts."""
    index = make_index(factory, dim)
    need = min_train_points(index)
    ivf = _ivf(index)
    facts = {"mode": shard_mode(index), "needs_training": need > 0, "nlist": None}
    if ivf is not None:
        facts["nlist"] = int(ivf.nlist)
    if n < need:
        hint = (
            f": use a smaller nlist, e.g. {_suggest_ivf(factory, n)!r}"
            if ivf is not None and n >= 1
            else ""
        )
        what = f"{facts['nlist']} centroids" if ivf is not None else "its quantizer"
        raise ValueError(
            f"factory {factory!r} trains {what} and needs at least {need} vectors,"
            f" but the corpus has {n}{hint}"
        )
    return facts


def _set_search_params(index: Any, nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    """Apply (and report for the manifest) the search settings that this index has."""
    import faiss

    params: dict[str, int] = {}
    ivf = _ivf(index)
    if ivf is not None:
        params["nprobe"] = int(min(nprobe or DEFAULT_NPROBE, ivf.nlist))
        ivf.nprobe = params["nprobe"]
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        params["ef_search"] = int(ef_search or DEFAULT_EF_SEARCH)
        inner.hnsw.efSearch = params["ef_search"]
    return params


def _add_shard(template: np.ndarray, part: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Ray task body: encode rows [start, stop) (``part``) into a copy of the trained index."""
    import faiss

    index = faiss.deserialize_index(template)
    part = np.ascontiguousarray(part)
    if _ivf(index) is not None:
        index.add_with_ids(part, np.arange(start, stop, dtype=np.int64))
    else:
        index.add(part)
    return faiss.serialize_index(index)


def _gpu_resources() -> Any | None:
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    return faiss.StandardGpuResources()


def build_faiss(
    vectors: np.ndarray,
    factory: str = "Flat",
    *,
    shard_size: int = 250_000,
    train_size: int = 100_000,
    nprobe: int | None = None,
    ef_search: int | None = None,
    use_gpu: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train (on a seeded sample) and fill an inner-product index; row ``i`` is ``vectors[i]``.

    Returns the index (on the CPU) and what the manifest records: factory, shards and how they
    were built, training sample, device, search settings, seconds per phase.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"no vectors to index (shape {x.shape})")
    n, dim = x.shape
    facts = check_trainable(factory, dim, n)
    index = make_index(factory, dim)
    bounds = [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]
    mode = facts["mode"] if len(bounds) > 1 else "whole"
    gpu = _gpu_resources() if use_gpu and facts["nlist"] is not None else None
    work = index
    if gpu is not None:
        try:
            work = faiss.index_cpu_to_gpu(gpu, 0, index)
            mode = "whole"  # one GPU adds faster than shards can travel
        except RuntimeError as exc:  # a factory the GPU build does not support
            log.warning("factory %s stays on the CPU: %s", factory, exc)
            gpu, work = None, index
    info: dict[str, Any] = {
        "factory": factory,
        "metric": "ip",
        "shards": len(bounds) if mode == "tasks" else 1,
        "shard_mode": mode,
        "device": "gpu" if gpu is not None else "cpu",
        "train_size": 0,
    }
    t0 = time.perf_counter()
    if facts["needs_training"]:
        m = min(n, max(train_size, min_train_points(index)))
        rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if m < n else None
        work.train(x if rows is None else x[rows])
        info["train_size"] = m
    info["train_s"] = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    if mode == "tasks":
        work = _add_in_tasks(work, x, bounds, progress)
    else:
        work.add(x)
        if progress:
            progress("index", 1, 1)
    info["add_s"] = round(time.perf_counter() - t1, 3)
    if gpu is not None:
        work = faiss.index_gpu_to_cpu(work)
    info.update(_set_search_params(work, nprobe, ef_search))
    return work, info


def _add_in_tasks(
    index: Any, x: np.ndarray, bounds: Sequence[tuple[int, int]], progress: Progress | None
) -> Any:
    """Encode shards in parallel Ray tasks and merge them, in order, into ``index``.

    At most one shard per cluster CPU (plus one) is in flight: each travels through the object
    store and is freed once merged, so memory stays bounded by the window, not the corpus.
    """
    import faiss
    import ray

    from crops.index.embed import ensure_ray

    ensure_ray()
    window = max(1, int(ray.cluster_resources().get("CPU", 1))) + 1
    template = ray.put(faiss.serialize_index(index))
    task = ray.remote(_add_shard)
    pending: deque = deque()
    launched = 0
    for i in range(len(bounds)):  # in order: row i of the index is vector i
        while launched < len(bounds) and len(pending) < window:
            a, b = bounds[launched]
            pending.append(task.remote(template, x[a:b], a, b))
            launched += 1
        part = faiss.deserialize_index(ray.get(pending.popleft()))
        index.merge_from(part, 0)
        del part
        if progress:
            progress("index", i + 1, len(bounds))
    return index


# ---------------------------------------------------------------------------- the whole build


def read_corpus(paths: Sequence[str | Path]) -> tuple[np.ndarray, list[str], list[dict]]:
    """Video ids and texts of all files, in file then row order; per-file counts.

    The same id in two files is an error (which text would the index hold?); rows the
    contract check rejects are counted as quarantined, not indexed.
    """
    import polars as pl

    from crops.schema import SchemaError, load_table, video_text

    frames, files, seen = [], [], {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"videos file {path} not found")
        valid, quarantine, _ = load_table(path, "videos")
        text = video_text(valid)
        frames.append(text)
        files.append({"path": str(path), "rows": text.height, "quarantined": quarantine.height})
        for earlier, ids in seen.items():
            both = text.filter(pl.col("video_id").is_in(ids.implode()))["video_id"]
            if both.len():
                shown = ", ".join(str(v) for v in both.head(5).to_list())
                raise SchemaError(
                    path,
                    "video_id",
                    f"{both.len()} video ids also in {earlier} (e.g. {shown}):"
                    " give each video in one file only",
                )
        seen[str(path)] = text["video_id"]
    corpus = pl.concat(frames)
    return corpus["video_id"].to_numpy().astype(np.int64), corpus["text"].to_list(), files


def build_exact_index(model_dir: str | Path, videos: str | Path, out: str | Path) -> Path:
    """An exact (Flat, inner product) index folder of one videos table, embedded in this
    process without Ray: for small corpora (tests, a local A/B arm)."""
    import faiss
    import polars as pl

    from crops.model.encoders import DualEncoder
    from crops.schema import video_text

    model = DualEncoder.load(model_dir)
    table = video_text(pl.read_parquet(videos))
    vectors = np.ascontiguousarray(model.embed(table["text"].to_list(), side="doc"), "float32")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    manifest = {"model_hash": model_hash(model_dir), "factory": "Flat", "metric": "ip"}
    return write_index(out, index, table["video_id"].to_numpy(), manifest)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / MANIFEST).is_file():
        if not force:
            raise ValueError(f"out {out} already holds an index: use --force to replace it")
        return
    raise ValueError(f"out {out} is not empty and not an index folder: choose another folder")


def build_index(cfg: IndexConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Embed every video with the model and write the index folder; returns its manifest."""
    from crops.index.embed import cluster_gpus, embed_texts, ensure_ray, model_info

    model = model_info(cfg.model_dir)  # raises: no folder, not a model
    for path in cfg.videos:
        if not Path(path).is_file():
            raise FileNotFoundError(f"videos file {path} not found")
    if len({str(Path(p).resolve()) for p in cfg.videos}) < len(cfg.videos):
        raise ValueError(f"a videos file is given twice: {cfg.videos}")
    make_index(cfg.factory, model["dim"])
    out = Path(cfg.out)
    _check_out(out, cfg.force)
    ids, texts, files = read_corpus(cfg.videos)
    if len(ids) == 0:
        raise ValueError(f"no valid videos to index in {', '.join(cfg.videos)}")
    check_trainable(cfg.factory, model["dim"], len(ids))
    digest = model_hash(cfg.model_dir)

    ensure_ray()
    gpus = cluster_gpus()
    if cfg.use_gpu and gpus < 1:
        raise ValueError("use_gpu (--gpu) was asked for, but the Ray cluster has no GPU")
    use_gpu = bool(gpus >= 1) if cfg.use_gpu is None else cfg.use_gpu
    actors = min(cfg.actors, int(gpus)) if use_gpu else cfg.actors  # one GPU per actor
    t0 = time.perf_counter()
    vectors = embed_texts(
        cfg.model_dir,
        texts,
        dim=model["dim"],
        batch_size=cfg.batch_size,
        actors=actors,
        num_cpus=cfg.num_cpus,
        use_gpu=use_gpu,
        progress=progress,
    )
    embed_s = time.perf_counter() - t0
    norms = np.linalg.norm(vectors, axis=1)
    if np.abs(norms - 1).max(initial=0) > 1e-3:  # the towers normalise; be sure for IP search
        vectors /= np.maximum(norms, 1e-12)[:, None]
    t1 = time.perf_counter()
    index, info = build_faiss(
        vectors,
        cfg.factory,
        shard_size=cfg.shard_size,
        train_size=cfg.train_size,
        nprobe=cfg.nprobe,
        ef_search=cfg.ef_search,
        use_gpu=use_gpu,
        seed=cfg.seed,
        progress=progress,
    )
    build_s = time.perf_counter() - t1
    manifest = {
        "model_hash": digest,
        "model_dir": str(cfg.model_dir),
        "encoder": model["encoder"],
        **info,
        "normalized": True,
        "embed_s": round(embed_s, 3),
        "build_s": round(build_s, 3),
        "videos": files,
        "embedded_on": "gpu" if use_gpu else "cpu",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.model_dump(),
    }
    write_index(out, index, ids, manifest)
    return {**manifest, "count": int(index.ntotal), "dim": int(index.d), "path": str(out)}
