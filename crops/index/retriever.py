"""A dense retriever: a query tower plus an index folder; what serving and evaluation call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crops.index.store import VideoIndex


class DenseRetriever:
    """Embeds queries with the model's query tower and searches the index.

    Callable as a `crops.world.platform.Retriever`: ``retriever(queries, k)`` gives video ids.
    """

    def __init__(self, model, index: VideoIndex) -> None:
        if model.dim != index.dim:
            raise ValueError(
                f"model embeds {model.dim}-d vectors, index {index.path} holds {index.dim}-d ones"
            )
        self.model, self.index = model, index

    @classmethod
    def load(
        cls, model_dir: str | Path, index_dir: str | Path, *, check_model: bool = True
    ) -> DenseRetriever:
        from crops.model.encoders import DualEncoder

        index = VideoIndex.load(index_dir)
        if check_model:
            index.check_model(model_dir)
        return cls(DualEncoder.load(model_dir), index)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, video ids), each (len(queries), k'), k' = min(k, index size)."""
        if not queries:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64)
        return self.index.search(self.model.embed(list(queries), side="query"), k)

    def __call__(self, queries: Sequence[str], k: int) -> list[list[int]]:
        _, ids = self.search(queries, k)
        return [[int(v) for v in row if v >= 0] for row in ids]
