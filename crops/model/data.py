"""Training data: the plain format (query, its samples with graded labels) and batches of
query groups for in-batch contrast.

A batch holds several queries, each with a group of its samples across the label levels.
A video never sits in two groups of one batch; for another query of the batch it is an
in-batch negative (label 0) unless it is one of that query's known samples too, in which case
it keeps that label (queries of one intent share videos, and a known positive must not be
pushed down).
Batches are a pure function of (seed, epoch), so every DDP worker builds the same global
batch and takes its own slice, and a resumed run replays the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from crops.schema import SchemaError, load_table, video_text


@dataclass
class TrainingData:
    """Queries, each with (doc indices, labels); docs are texts indexed by position."""

    queries: list[str]
    groups: list[tuple[np.ndarray, np.ndarray]]
    texts: list[str]
    video_ids: np.ndarray
    quarantined: int = 0

    @property
    def n_samples(self) -> int:
        return int(sum(len(d) for d, _ in self.groups))


def load_training_data(samples: str | Path, videos: Sequence[str | Path]) -> TrainingData:
    """Read samples and the videos they refer to (world videos plus synthetic ones).

    Samples whose video is in none of the video files are quarantined by the contract check
    (reason `video_id not in videos`) and counted, not trained on.
    """
    frames = []
    for path in videos:
        valid, _, _ = load_table(path, "videos")
        frames.append(video_text(valid))
    if not frames:
        raise SchemaError(samples, None, "no video files given for the samples")
    texts = pl.concat(frames).unique(subset="video_id", keep="first", maintain_order=True)
    valid, quarantine, _ = load_table(samples, "samples", video_ids=texts["video_id"])
    if valid.height == 0:
        raise SchemaError(samples, None, "no valid samples to train on")
    texts = texts.join(valid.select("video_id").unique(), on="video_id").sort("video_id")
    index = dict(zip(texts["video_id"].to_list(), range(texts.height), strict=True))
    valid = valid.with_columns(
        pl.col("video_id").replace_strict(index, return_dtype=pl.Int64).alias("doc")
    ).sort(["query", "label", "doc"], descending=[False, True, False])
    queries, groups = [], []
    for (query,), g in valid.group_by("query", maintain_order=True):
        queries.append(query)
        groups.append((g["doc"].to_numpy(), g["label"].to_numpy().astype(np.int64)))
    return TrainingData(
        queries=queries,
        groups=groups,
        texts=texts["text"].to_list(),
        video_ids=texts["video_id"].to_numpy(),
        quarantined=quarantine.height,
    )


class HardNegatives(Protocol):
    """A source of hard negatives for a query: doc indices (BM25, the model's own index...)."""

    def negatives(self, query: int, k: int, rng: np.random.Generator) -> np.ndarray: ...


class BM25Negatives:
    """Top BM25 (bm25s) documents for the query that are not among its samples: DPR's negatives."""

    def __init__(self, data: TrainingData, depth: int = 50) -> None:
        from crops.lexical import bm25_index, bm25_retrieve

        model = bm25_index(data.texts, stopwords=None)
        k = min(depth, len(data.texts))
        docs, _ = bm25_retrieve(model, data.queries, k, stopwords=None)
        own = [set(d.tolist()) for d, _ in data.groups]
        self.pool = [np.array([x for x in row if x not in own[q]]) for q, row in enumerate(docs)]

    def negatives(self, query: int, k: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.pool[query]
        return pool[:k] if len(pool) <= k else rng.choice(pool, size=k, replace=False)


class ModelNegatives:
    """The model's own top documents for each query that are not among its samples: ANCE-style
    negatives, refreshed by building a new instance from the current model (each epoch)."""

    def __init__(self, model, data: TrainingData, depth: int = 50, batch_size: int = 256) -> None:
        import logging

        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # quiet CPU-variant probing
        import faiss

        docs = model.embed(data.texts, side="doc", batch_size=batch_size).astype(np.float32)
        queries = model.embed(data.queries, side="query", batch_size=batch_size)
        index = faiss.IndexFlatIP(docs.shape[1])
        index.add(docs)
        _, top = index.search(
            np.ascontiguousarray(queries, dtype=np.float32), min(depth, len(docs))
        )
        own = [set(d.tolist()) for d, _ in data.groups]
        self.pool = [
            np.array([x for x in row if x >= 0 and x not in own[q]]) for q, row in enumerate(top)
        ]

    @classmethod
    def from_pools(cls, pools: list[np.ndarray]) -> ModelNegatives:
        """Negatives from pools computed elsewhere (rank 0 searches, the others receive)."""
        self = cls.__new__(cls)
        self.pool = pools
        return self

    negatives = BM25Negatives.negatives


@dataclass
class Batch:
    """Queries, their docs, and labels (B, N): label of doc j for query i; a doc of another
    query's group is 0 unless it is a known sample of query i too (then its label)."""

    query_index: np.ndarray
    queries: list[str]
    doc_index: np.ndarray
    docs: list[str]
    labels: np.ndarray
    owner: np.ndarray  # for each doc, the position of its query in the batch

    def shard(self, rank: int, world: int) -> Batch:
        """This worker's queries (every world-th) and their docs."""
        keep = np.arange(len(self.queries))[rank::world]
        docs = np.flatnonzero(np.isin(self.owner, keep))
        remap = {int(q): i for i, q in enumerate(keep)}
        return Batch(
            query_index=self.query_index[keep],
            queries=[self.queries[i] for i in keep],
            doc_index=self.doc_index[docs],
            docs=[self.docs[j] for j in docs],
            labels=self.labels[np.ix_(keep, docs)],
            owner=np.array([remap[int(o)] for o in self.owner[docs]], dtype=np.int64),
        )


class GroupBatcher:
    """Batches of `queries_per_batch` query groups of up to `group_size` samples each.

    An epoch draws about n_samples / group_size groups, queries weighted by how many samples
    they have; a group keeps the query's best sample and a spread over its other labels.
    `hard_negatives` adds that many explicit negatives (label 0) per group from a source.
    """

    def __init__(
        self,
        data: TrainingData,
        *,
        queries_per_batch: int = 32,
        group_size: int = 8,
        seed: int = 0,
        hard_negatives: HardNegatives | None = None,
        n_hard: int = 0,
    ) -> None:
        if group_size < 2:
            raise ValueError("group_size must be at least 2 (a query needs something to rank)")
        if queries_per_batch < 1:
            raise ValueError("queries_per_batch must be at least 1")
        self.data, self.qpb, self.group_size, self.seed = data, queries_per_batch, group_size, seed
        self.hard, self.n_hard = hard_negatives, n_hard  # `hard` may be set later (per epoch)
        self.min_queries = 1  # the trainer sets it to the world size: no worker left empty
        # a query's known samples, so another group's video that is also one of this query's
        # samples keeps its real label instead of posing as a negative
        self.known = [dict(zip(d.tolist(), lab.tolist(), strict=True)) for d, lab in data.groups]
        sizes = np.array([len(d) for d, _ in data.groups], dtype=float)
        self.weights = sizes / sizes.sum()
        groups = max(1, int(round(data.n_samples / group_size)))
        self.batches_per_epoch = max(1, groups // queries_per_batch)

    def _group(
        self, q: int, rng: np.random.Generator, used: set[int]
    ) -> tuple[list[int], list[int]]:
        docs, labels = self.data.groups[q]
        free = np.array([i for i, d in enumerate(docs) if int(d) not in used], dtype=np.int64)
        if len(free) == 0:
            return [], []
        best = free[labels[free] == labels[free].max()]
        first = int(rng.choice(best))
        rest = free[free != first]
        take = min(len(rest), self.group_size - 1)
        if take:
            # spread over levels: weight each sample by 1 / (size of its level)
            lv = labels[rest]
            counts = {int(v): int((lv == v).sum()) for v in np.unique(lv)}
            w = np.array([1.0 / counts[int(v)] for v in lv])
            rest = rng.choice(rest, size=take, replace=False, p=w / w.sum())
        chosen = [first, *[int(i) for i in np.atleast_1d(rest)[:take]]]
        out_docs = [int(docs[i]) for i in chosen]
        out_labels = [int(labels[i]) for i in chosen]
        if self.n_hard and self.hard is not None:
            for d in self.hard.negatives(q, self.n_hard, rng):
                if int(d) not in used and int(d) not in out_docs:
                    out_docs.append(int(d))
                    out_labels.append(0)
        return out_docs, out_labels

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The epoch's batches, identical on every worker for the same (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        n_q = len(self.data.queries)
        for _ in range(self.batches_per_epoch):
            order = rng.choice(n_q, size=min(n_q, self.qpb * 2), replace=False, p=self.weights)
            used: set[int] = set()
            qs, docs, labels, owner = [], [], [], []
            for q in order:
                if len(qs) == self.qpb:
                    break
                d, lab = self._group(int(q), rng, used)
                if not d or max(lab) == 0:
                    continue
                used.update(d)
                owner.extend([len(qs)] * len(d))
                qs.append(int(q))
                docs.extend(d)
                labels.extend(lab)
            if len(qs) < self.min_queries:
                continue
            owner_a = np.array(owner, dtype=np.int64)
            matrix = np.zeros((len(qs), len(docs)), dtype=np.int64)
            for i, q in enumerate(qs):
                known = self.known[q]
                for j, d in enumerate(docs):
                    if owner_a[j] != i and d in known:
                        matrix[i, j] = known[d]
            matrix[owner_a, np.arange(len(docs))] = labels
            yield Batch(
                query_index=np.array(qs, dtype=np.int64),
                queries=[self.data.queries[q] for q in qs],
                doc_index=np.array(docs, dtype=np.int64),
                docs=[self.data.texts[d] for d in docs],
                labels=matrix,
                owner=owner_a,
            )
