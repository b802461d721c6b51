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

    def shard_index(self, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
        """(query positions, doc positions) in this batch of worker `rank`'s shard: every
        world-th query, and the docs of those queries, in batch order."""
        return np.arange(rank, len(self.queries), world), np.flatnonzero(self.owner % world == rank)

    def shard(self, rank: int, world: int) -> Batch:
        """This worker's queries (every world-th) and their docs."""
        keep, docs = self.shard_index(rank, world)
        return Batch(
            query_index=self.query_index[keep],
            queries=[self.queries[i] for i in keep],
            doc_index=self.doc_index[docs],
            docs=[self.docs[j] for j in docs],
            labels=self.labels[np.ix_(keep, docs)],
            owner=self.owner[docs] // world,  # query i of the batch is query i // world here
        )


def _segment_rank(mask: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """1-based running count of `mask` within each segment (segments are contiguous)."""
    run = np.cumsum(mask)
    before = np.where(starts > 0, run[starts - 1], 0)
    return run - np.repeat(before, lengths)


class GroupBatcher:
    """Batches of `queries_per_batch` query groups of up to `group_size` samples each.

    An epoch draws about n_samples / group_size groups, queries weighted by how many samples
    they have; a group keeps the query's best sample and a spread over its other labels.
    `hard_negatives` adds that many explicit negatives (label 0) per group from a source.

    How a batch is drawn (vectorised: no Python loop over samples). Candidate queries are
    drawn without replacement, weighted by size; each of their samples gets a random key,
    Exp(1) / w with w = 1 / (size of the sample's label level in that query), so sorting a
    query's samples by key is a weighted draw without replacement that spreads over levels.
    In candidate order, a query takes the best-labelled sample still free (not taken by an
    earlier query of the batch; the smallest key among its best label) and then the next
    `group_size - 1` free samples by key; a query left without a free positive (label > 0)
    is skipped, and the batch holds the first `queries_per_batch` queries that are kept.
    That sequential rule is solved for all candidates at once by a fixed point: each round
    computes every group given the docs the previous round's earlier groups took; round r
    settles candidate r, and rounds stop as soon as nothing changes (conflicts are rare: two
    or three rounds). Hard negatives of a group are drawn after the groups, and never take a
    doc of any group of the batch.
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
        # every query's samples, flat (CSR by query; within a query best label first)
        sizes = np.array([len(d) for d, _ in data.groups], dtype=np.int64)
        self.starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.starts[1:])
        empty = np.zeros(0, dtype=np.int64)
        self.docs = np.concatenate([d for d, _ in data.groups] or [empty]).astype(np.int64)
        self.labels = np.concatenate([lab for _, lab in data.groups] or [empty]).astype(np.int64)
        # sampling weight of each sample: 1 / (size of its label level within its query)
        query = np.repeat(np.arange(len(sizes)), sizes)
        levels = int(self.labels.max()) + 1 if len(self.labels) else 1
        cell = query * levels + self.labels
        self.level_weight = 1.0 / np.bincount(cell, minlength=len(sizes) * levels)[cell]
        self.weights = sizes / sizes.sum()
        groups = max(1, int(round(data.n_samples / group_size)))
        self.batches_per_epoch = max(1, groups // queries_per_batch)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The epoch's batches, identical on every worker for the same (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        n_q = len(self.data.queries)
        for _ in range(self.batches_per_epoch):
            order = rng.choice(n_q, size=min(n_q, self.qpb * 2), replace=False, p=self.weights)
            batch = self._batch(order, rng)
            if batch is not None:
                yield batch

    def _batch(self, order: np.ndarray, rng: np.random.Generator) -> Batch | None:
        # the first candidates usually fill the batch; later ones cannot change the groups of
        # earlier ones, so look further only when too few queries were kept
        n = min(len(order), self.qpb + max(2, self.qpb // 4))
        keys = rng.exponential(size=self._n_samples(order[:n]))
        groups = self._groups(order[:n], keys)
        if groups[0].sum() < self.qpb and n < len(order):
            more = rng.exponential(size=self._n_samples(order[n:]))
            groups = self._groups(order, np.concatenate([keys, more]))
        kept, take, first, cand_docs, cand_labels, pos = groups
        qs = order[: len(kept)][kept]
        if len(qs) < self.min_queries:
            return None
        row = np.cumsum(kept) - 1  # candidate -> its row in the batch
        sel = np.flatnonzero(take)
        sel = sel[np.lexsort((~first[sel], pos[sel]))]  # by group; the best sample first
        docs, labels, owner = cand_docs[sel], cand_labels[sel], row[pos[sel]]
        if self.n_hard and self.hard is not None:
            docs, labels, owner = self._add_hard(qs, docs, labels, owner, rng)
        # the label matrix: a doc's own group's label, another group's doc is 0 unless it is
        # one of the query's known samples too (then that label); the kept candidates' samples
        # hold every known label of the batch's queries
        column = np.full(len(self.data.texts), -1, dtype=np.int64)
        column[docs] = np.arange(len(docs))
        known = kept[pos] & (column[cand_docs] >= 0)
        matrix = np.zeros((len(qs), len(docs)), dtype=np.int64)
        matrix[row[pos[known]], column[cand_docs[known]]] = cand_labels[known]
        matrix[owner, np.arange(len(docs))] = labels
        return Batch(
            query_index=qs.astype(np.int64),
            queries=[self.data.queries[q] for q in qs],
            doc_index=docs,
            docs=[self.data.texts[d] for d in docs],
            labels=matrix,
            owner=owner,
        )

    def _n_samples(self, queries: np.ndarray) -> int:
        return int((self.starts[queries + 1] - self.starts[queries]).sum())

    def _groups(self, cands: np.ndarray, keys: np.ndarray):
        """The groups of candidate queries `cands` (in order) for the sequential rule:
        (kept per candidate, taken per sample, best-first per sample, and the candidates'
        samples' docs, labels and candidate positions, sorted by candidate then key)."""
        starts, ends = self.starts[cands], self.starts[cands + 1]
        lengths = ends - starts
        seg = np.zeros(len(cands), dtype=np.int64)
        np.cumsum(lengths[:-1], out=seg[1:])
        idx = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - seg, lengths)
        pos = np.repeat(np.arange(len(cands)), lengths)
        # sort each candidate's samples by key Exp(1) / w, mapped monotonically into [0, 1)
        # and added to the candidate position, so one argsort orders by (candidate, key)
        key = keys / self.level_weight[idx]
        idx = idx[np.argsort(pos + key / (1.0 + key), kind="stable")]
        docs, labels = self.docs[idx], self.labels[idx]
        taker = np.full(len(self.data.texts), len(cands), dtype=np.int64)
        take = np.zeros(len(idx), dtype=bool)
        for _ in range(len(cands) + 1):
            free = taker[docs] >= pos  # not taken by an earlier candidate of the batch
            best = np.maximum.reduceat(np.where(free, labels, -1), seg) if len(idx) else seg
            top = free & (labels == best[pos])
            first = top & (_segment_rank(top, seg, lengths) == 1)
            rest = free & ~first
            kept = best > 0
            kept &= np.cumsum(kept) <= self.qpb
            group = first | (rest & (_segment_rank(rest, seg, lengths) < self.group_size))
            new = group & kept[pos]
            if np.array_equal(new, take):
                break
            take = new
            taker[:] = len(cands)
            np.minimum.at(taker, docs[take], pos[take])
        return kept, take, first, docs, labels, pos

    def _add_hard(self, qs, docs, labels, owner, rng):
        """Each group's hard negatives (label 0), never a doc already in the batch."""
        in_batch = set(docs.tolist())
        extra_docs, extra_owner = [], []
        for i, q in enumerate(qs):
            for d in self.hard.negatives(int(q), self.n_hard, rng):
                if int(d) not in in_batch:
                    in_batch.add(int(d))
                    extra_docs.append(int(d))
                    extra_owner.append(i)
        if not extra_docs:
            return docs, labels, owner
        all_docs = np.concatenate([docs, np.array(extra_docs, dtype=np.int64)])
        all_labels = np.concatenate([labels, np.zeros(len(extra_docs), dtype=np.int64)])
        all_owner = np.concatenate([owner, np.array(extra_owner, dtype=np.int64)])
        order = np.argsort(all_owner, kind="stable")  # docs grouped by their query
        return all_docs[order], all_labels[order], all_owner[order]
