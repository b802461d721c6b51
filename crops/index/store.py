"""The on-disk index folder and searching it: one reader for the CLI, the server and evaluation.

An index folder holds

- ``index.faiss``: a FAISS index over L2-normalised document embeddings (inner product);
- ``ids.npy``: int64 video ids, row ``i`` of the index is ``ids[i]``;
- ``manifest.json`` (written last, so a half-written folder is never mistaken for an index):
  format, model hash, count, dimension, factory, metric, shards and build figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
MANIFEST = "manifest.json"
FORMAT = "crops-faiss-index"
FORMAT_VERSION = 1


def model_hash(model_dir: str | Path) -> str:
    """SHA-256 over every file of a model folder (names and bytes), so an index names its model."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("checkpoints/", "metrics.jsonl", "training.json")):
            continue  # training by-products, not the model
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_index(out: str | Path, index: Any, ids: np.ndarray, manifest: dict[str, Any]) -> Path:
    """Write index, ids and (last) the manifest; ``manifest`` gains format, count and dim."""
    import faiss

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index.ntotal != len(ids):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
    (folder / MANIFEST).unlink(missing_ok=True)
    faiss.write_index(_to_cpu(index), str(folder / INDEX_FILE))
    np.save(folder / IDS_FILE, ids)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "count": int(index.ntotal),
        "dim": int(index.d),
    }
    (folder / MANIFEST).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return folder


def _to_cpu(index: Any) -> Any:
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index


@dataclass
class VideoIndex:
    """A loaded index folder: FAISS index, id mapping and manifest."""

    index: Any
    ids: np.ndarray
    manifest: dict[str, Any]
    path: Path

    @classmethod
    def load(
        cls, folder: str | Path, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> VideoIndex:
        """Load and check an index folder; errors name the folder and the missing piece.

        ``nprobe`` (IVF) and ``ef_search`` (HNSW) override the manifest's search settings.
        """
        import faiss

        root = Path(folder)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a CroPS index folder: no {MANIFEST}")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}"
                f" is not {FORMAT} v{FORMAT_VERSION}"
            )
        for name in (INDEX_FILE, IDS_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root}: {name} is missing")
        index = faiss.read_index(str(root / INDEX_FILE))
        ids = np.load(root / IDS_FILE)
        if index.ntotal != len(ids) or index.ntotal != manifest.get("count"):
            raise ValueError(
                f"{root}: index has {index.ntotal} vectors, ids.npy {len(ids)},"
                f" manifest count {manifest.get('count')}: the folder is inconsistent"
            )
        if nprobe is not None or "nprobe" in manifest:
            _set_nprobe(index, nprobe if nprobe is not None else int(manifest["nprobe"]))
        if ef_search is not None or "ef_search" in manifest:
            _set_ef_search(index, ef_search if ef_search is not None else manifest["ef_search"])
        return cls(index=index, ids=ids, manifest=manifest, path=root)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, video ids) per row; rows short of ``k`` hits are padded with -1."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {x.shape}, the index wants (n, {self.dim})")
        k = max(1, min(int(k), len(self)))
        scores, rows = self.index.search(x, k)
        found = rows >= 0
        ids = np.where(found, self.ids[np.where(found, rows, 0)], -1)
        return scores, ids

    def check_model(self, model_dir: str | Path) -> None:
        """Refuse a model other than the one the index was built with."""
        want = self.manifest.get("model_hash")
        if want and model_hash(model_dir) != want:
            raise ValueError(
                f"index {self.path} was built with model hash {want[:12]}..., but {model_dir}"
                " hashes differently: rebuild the index with `crops index`"
            )


def _set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    with contextlib.suppress(RuntimeError):  # not an IVF index: nothing to set
        faiss.extract_index_ivf(index).nprobe = int(nprobe)


def _set_ef_search(index: Any, ef_search: int) -> None:
    import faiss

    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):  # not an HNSW index: nothing to set
        inner.hnsw.efSearch = int(ef_search)
