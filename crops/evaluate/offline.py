"""Offline evaluation: run a retriever over a collection's queries and score it with ir-measures.

Retrievers here answer ``search(queries, k) -> [[(doc_id, score), ...], ...]`` with string doc
ids, so one scorer serves a world's videos and any TREC collection. A query that retrieves
nothing still counts (as a miss), and judged queries without text are reported, not dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from crops.evaluate.collection import Collection
from crops.lexical import bm25_index, bm25_retrieve

Hits = list[list[tuple[str, float]]]
Progress = Callable[[str, int, int], None]


class Searcher(Protocol):
    name: str

    def search(self, queries: Sequence[str], k: int) -> Hits: ...


class BM25Searcher:
    """bm25s over the documents, English stop words, as the production lexical channel."""

    name = "bm25"

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]) -> None:
        self.doc_ids = list(doc_ids)
        self.model = bm25_index(texts)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        docs, scores = bm25_retrieve(self.model, queries, min(k, len(self.doc_ids)))
        return [
            [(self.doc_ids[d], float(s)) for d, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(docs, scores, strict=True)
        ]


class DenseSearcher:
    """A dual encoder over the documents: an exact (Flat) FAISS index built in memory, or a
    built index folder (`crops index`) whose video ids are the document ids."""

    def __init__(self, model, index, doc_ids: Sequence[str] | None, name: str) -> None:
        self.model, self.index, self.name = model, index, name
        self.doc_ids = None if doc_ids is None else np.asarray(list(doc_ids), dtype=object)

    @classmethod
    def exact(
        cls,
        model,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        name: str = "dense",
        batch_size: int = 256,
        progress: Progress | None = None,
    ) -> DenseSearcher:
        import faiss

        from crops.index.store import VideoIndex

        index = faiss.IndexFlatIP(model.dim)
        for start in range(0, len(texts), batch_size * 8):
            index.add(model.embed(list(texts[start : start + batch_size * 8]), side="doc"))
            if progress:
                progress("embed documents", min(start + batch_size * 8, len(texts)), len(texts))
        rows = np.arange(len(texts), dtype=np.int64)
        return cls(model, VideoIndex(index, rows, {}, Path("<memory>")), doc_ids, name)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        scores, ids = self.index.search(self.model.embed(list(queries), side="query"), k)
        out: Hits = []
        for row, srow in zip(ids, scores, strict=True):
            keep = row >= 0
            names = self.doc_ids[row[keep]] if self.doc_ids is not None else row[keep].astype(str)
            out.append([(str(d), float(s)) for d, s in zip(names, srow[keep], strict=True)])
        return out


def evaluate(
    collection: Collection,
    searcher: Searcher,
    *,
    k: int = 100,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> dict:
    """Scores per qrels set and measure, with the counts a reader needs to trust them."""
    import ir_measures

    judged = collection.judged_queries()
    run: list = []
    empty = 0
    t0 = time.perf_counter()
    for start in range(0, len(judged), batch_size):
        qids = judged[start : start + batch_size]
        hits = searcher.search([collection.queries[q] for q in qids], k)
        for qid, row in zip(qids, hits, strict=True):
            if not row:  # nothing retrieved is a miss, not a query left out of the average
                empty += 1
                row = [("__none__", 0.0)]
            run.extend(ir_measures.ScoredDoc(qid, d, s) for d, s in row)
        if progress:
            progress("search", min(start + batch_size, len(judged)), len(judged))
    search_s = time.perf_counter() - t0
    metrics: dict[str, dict[str, float]] = {}
    sets: dict[str, dict] = {}
    for qrels in collection.qrels:
        runnable = {q: d for q, d in qrels.judgements.items() if q in collection.queries}
        measures = [ir_measures.parse_measure(m) for m in qrels.measures]
        pairs = [ir_measures.Qrel(q, d, g) for q, docs in runnable.items() for d, g in docs.items()]
        wanted = set(runnable)
        scores = ir_measures.calc_aggregate(
            measures, pairs, [r for r in run if r.query_id in wanted]
        )
        metrics[qrels.name] = {str(m): float(scores.get(m, 0.0)) for m in measures}
        sets[qrels.name] = {
            "queries": len(runnable),
            "judgements": sum(len(v) for v in runnable.values()),
            "queries_without_text": len(qrels.judgements) - len(runnable),
            "judged_docs_not_in_collection": qrels.unknown_docs,
        }
    return {
        "collection": collection.source,
        "retriever": searcher.name,
        "k": k,
        "documents": len(collection.doc_ids),
        "documents_quarantined": collection.docs_quarantined,
        "queries_run": len(judged),
        "queries_with_no_hits": empty,
        "search_s": round(search_s, 3),
        "metrics": metrics,
        "sets": sets,
    }


def headline(result: dict) -> dict[str, float]:
    """Flat `set/measure` -> value, for tables and KFP metrics."""
    return {f"{s}/{m}": v for s, ms in result["metrics"].items() for m, v in ms.items()}


def zero_shot_name(spec: str) -> str:
    """The retriever name of an untrained encoder: says it is zero-shot, in the metrics file and
    the printed table."""
    return f"zero-shot {spec} (untrained)"


def encoder_for(model: str | Path):
    """(dual encoder, retriever name) for `--model`: a MODEL_DIR from `crops train`, or an encoder
    name (`hf:<name-or-path>`, parsed by `crops.model.names`) built untrained, zero-shot, by the
    builder training starts from. `hash` is refused: an untrained hash tower is random."""
    from crops.model.encoders import MANIFEST, DualEncoder, build_dual_encoder
    from crops.model.names import parse_encoder

    folder = Path(model)
    if (folder / MANIFEST).is_file():
        return DualEncoder.load(folder), f"model {folder.name}"
    try:
        name = parse_encoder(str(model))
    except ValueError:
        hint = " (a Hugging Face folder: hf:PATH)" if folder.is_dir() else ""
        raise ValueError(
            f"--model {model}: not a CroPS model folder (no {MANIFEST}) nor an encoder name"
            f" (hf:<name-or-path>, e.g. hf:minilm){hint}"
        ) from None
    if name.kind == "hash":
        raise ValueError(
            "--model hash: an untrained hash encoder is random weights, so a zero-shot"
            " evaluation of it means nothing; give a MODEL_DIR from `crops train --encoder hash`,"
            " or a pretrained encoder (hf:<name-or-path>, e.g. hf:minilm)"
        )
    return build_dual_encoder(str(name)).eval(), zero_shot_name(str(name))


def searcher_for(
    collection: Collection,
    *,
    model: str | Path | None = None,
    method: str | None = None,
    index: str | Path | None = None,
    progress: Progress | None = None,
) -> Searcher:
    """The searcher the CLI options name: a baseline, a model (exact; a MODEL_DIR or, zero-shot,
    an encoder name), or a model folder + index."""
    if method == "bm25":
        return BM25Searcher(collection.doc_ids, collection.doc_texts)
    if method is not None:
        raise ValueError(f"unknown method {method!r}: the built-in baseline is bm25")
    if model is None:
        raise ValueError("give a model folder or a method")
    if index is not None:
        from crops.index.retriever import DenseRetriever

        name = f"model {Path(model).name}"
        dense = DenseRetriever.load(model, index)
        return DenseSearcher(dense.model, dense.index, None, f"{name} + index {Path(index).name}")
    encoder, name = encoder_for(model)
    return DenseSearcher.exact(
        encoder, collection.doc_ids, collection.doc_texts, name=name, progress=progress
    )
