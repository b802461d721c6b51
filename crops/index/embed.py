"""Batch embedding of video texts with Ray Data: an actor pool that loads the model once per actor.

Loading a model (an HF tower: hundreds of MB) per batch would dominate the run, so
`map_batches` gets a callable class: Ray builds ``actors`` instances, each loads the model in
its constructor and embeds every batch it is handed. On a 2-core machine an actor pool needs
fractional CPUs (``num_cpus=0.5``) or Ray Data waits forever for a free core
(docs/design.md section 6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def ensure_ray() -> None:
    """Start (or, with RAY_ADDRESS set, join) Ray once per process, as `crops train` does."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)


def cluster_gpus() -> float:
    """GPUs Ray can hand out (0 on a CPU-only cluster)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


class EmbedActor:
    """One Ray Data actor: the model's document tower, loaded once, embeds batches of texts."""

    def __init__(self, model_dir: str, use_gpu: bool = False, batch_size: int = 256) -> None:
        from crops.model.encoders import DualEncoder

        self.model = DualEncoder.load(model_dir, device="cuda" if use_gpu else "cpu")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.model.embed(texts, side="doc", batch_size=self.batch_size)
        return {"row": batch["row"], "embedding": vectors}


def embed_texts(
    model_dir: str,
    texts: Sequence[str],
    *,
    dim: int,
    batch_size: int = 256,
    actors: int = 2,
    num_cpus: float = 0.5,
    use_gpu: bool = False,
    progress: Progress | None = None,
) -> np.ndarray:
    """Float32 (len(texts), dim) document embeddings, row ``i`` for ``texts[i]``.

    Ray Data may hand batches back in any order; each carries its rows' positions, so the
    result is in input order whatever the scheduling (the index is then reproducible).
    """
    import pyarrow as pa
    import ray.data

    ensure_ray()
    n = len(texts)
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller's progress callback reports instead
    table = pa.table({"row": np.arange(n, dtype=np.int64), "text": pa.array(list(texts))})
    # one block per batch: a single block would feed one actor and leave the others idle
    ds = ray.data.from_arrow(table).repartition(max(actors, -(-n // batch_size)))
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "use_gpu": use_gpu,
            "batch_size": batch_size,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        num_gpus=1 if use_gpu else 0,
    )
    done, seen = 0, np.zeros(n, dtype=bool)
    t0 = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows = np.asarray(batch["row"], dtype=np.int64)
        out[rows] = np.asarray(batch["embedding"], dtype=np.float32)
        seen[rows] = True
        done += len(rows)
        if progress:
            progress("embed", done, n)
    if not seen.all():  # never expected: Ray Data lost rows
        raise RuntimeError(f"embedding returned {int(seen.sum())} of {n} rows")
    log.info("embedded %d texts in %.1f s", n, time.perf_counter() - t0)
    return out


def model_info(model_dir: str) -> dict[str, Any]:
    """The model folder's manifest (dim, encoder spec) without loading any weights."""
    import json
    from pathlib import Path

    from crops.model.encoders import MANIFEST

    path = Path(model_dir) / MANIFEST
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a CroPS model folder: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return {"dim": int(manifest["dim"]), "encoder": str(manifest["encoder"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable model manifest ({exc})") from exc
