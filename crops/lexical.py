"""BM25 (bm25s), one way for the whole project: the simulator's lexical channel, the BM25
baseline and DPR's hard negatives all index and retrieve through these two functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def bm25_index(texts: Sequence[str], stopwords: str | None = "en") -> Any:
    """A bm25s.BM25 index over `texts` (English stop words removed unless `stopwords=None`)."""
    import bm25s

    model = bm25s.BM25()
    tokens = bm25s.tokenize(list(texts), stopwords=stopwords, show_progress=False)
    model.index(tokens, show_progress=False)
    return model


def bm25_retrieve(
    model: Any, queries: Sequence[str], k: int, stopwords: str | None = "en"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` (document rows, scores) per query, single-threaded (deterministic, no pool)."""
    import bm25s

    tokens = bm25s.tokenize(list(queries), stopwords=stopwords, show_progress=False)
    docs, scores = model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return np.asarray(docs), np.asarray(scores)
