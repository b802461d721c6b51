"""Benchmark: BM25 on real Chinese query-title pairs with each CJK tokenizer of crops.lexical.

QBQTC (train.json, JSON lines {"id", "query", "title", "relevant"}) as a retrieval collection:
documents are the distinct titles, queries the distinct queries, qrels the grades 0/1/2. The
held-out queries (`crops.ingest.split.held_out(query)`, the project's one rule) search ALL
titles through `crops.lexical` (bm25s) and `crops.evaluate.offline.evaluate` scores them with
ir-measures, nDCG@4 and R@100. Each CJK mode of `crops.lexical.CJK_MODES` runs with and without
bm25s's Chinese stop words (English ones always).

Reference, in the same process: "none", bm25s's own token pattern (what crops.lexical did
before CJK segmentation: an unsegmented Chinese title is one token). Also tokenization
throughput (documents/s over all titles) of the default mode against that reference.

    python bench/bench_cjk_lexical.py
    python bench/bench_cjk_lexical.py --data ../shared/data/qbqtc-train/train.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crops.evaluate.collection import Collection, Qrels
from crops.evaluate.offline import Hits, evaluate
from crops.ingest.split import held_out
from crops.lexical import CJK_DEFAULT, CJK_MODES, bm25_index, bm25_retrieve, tokenize

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/qbqtc-train/train.json")
MEASURES = ("nDCG@4", "R@100")
REFERENCE = "none"
console = Console(width=120)


def load_qbqtc(path: Path) -> tuple[Collection, dict[str, int]]:
    """The collection (every query; the caller keeps the held-out ones) and row counts; a
    malformed row is quarantined with its line number, never silently dropped."""
    titles: dict[str, str] = {}  # title -> doc id
    queries: dict[str, str] = {}  # query text -> query id
    grades: dict[str, dict[str, int]] = {}
    counts = {"rows": 0, "quarantined": 0, "conflicting_grades": 0}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            counts["rows"] += 1
            try:
                row = json.loads(line)
                query, title, grade = str(row["query"]), str(row["title"]), int(row["relevant"])
                if not query.strip() or not title.strip() or grade not in (0, 1, 2):
                    raise ValueError(f"empty text or grade {grade} not in 0/1/2")
            except (ValueError, KeyError, TypeError) as e:
                counts["quarantined"] += 1
                console.print(f"[yellow]{path}:{line_no}: quarantined: {e}")
                continue
            qid = queries.setdefault(query, f"q{len(queries)}")
            did = titles.setdefault(title, f"d{len(titles)}")
            judged = grades.setdefault(qid, {})
            if did in judged and judged[did] != grade:
                counts["conflicting_grades"] += 1  # kept: the higher grade
            judged[did] = max(grade, judged.get(did, 0))
    collection = Collection(
        doc_ids=list(titles.values()),
        doc_texts=list(titles),
        queries={qid: text for text, qid in queries.items()},
        qrels=[Qrels("qbqtc", grades, MEASURES)],
        source=str(path),
    )
    return collection, counts


def held_out_slice(collection: Collection) -> Collection:
    """The same documents, only the held-out queries and their judgements."""
    keep = {q: t for q, t in collection.queries.items() if held_out(t)}
    qrels = [
        Qrels(r.name, {q: r.judgements[q] for q in keep}, r.measures) for r in collection.qrels
    ]
    return Collection(collection.doc_ids, collection.doc_texts, keep, qrels, collection.source)


class LexicalSearcher:
    """crops.lexical's BM25 with one CJK mode (the offline evaluator's BM25Searcher, mode
    chosen)."""

    def __init__(self, collection: Collection, cjk: str, cjk_stopwords: bool) -> None:
        self.name = f"bm25 {cjk}{' +zh stop words' if cjk_stopwords else ''}"
        self.cjk, self.cjk_stopwords = cjk, cjk_stopwords
        self.doc_ids = collection.doc_ids
        self.model = bm25_index(collection.doc_texts, cjk=cjk, cjk_stopwords=cjk_stopwords)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        k = min(k, len(self.doc_ids))
        docs, scores = bm25_retrieve(
            self.model, queries, k, cjk=self.cjk, cjk_stopwords=self.cjk_stopwords
        )
        return [
            [(self.doc_ids[d], float(s)) for d, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(docs, scores, strict=True)
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="QBQTC train.json (relative: to the repo)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="tokenization timing repeats")
    args = ap.parse_args()
    path = args.data if args.data.is_absolute() else REPO / args.data
    if not path.is_file():
        console.print(f"[red]{path} does not exist (give --data)")
        return 2
    t0 = time.perf_counter()
    full, counts = load_qbqtc(path)
    test = held_out_slice(full)
    judged = test.qrels[0].judgements
    console.print(
        f"{path.name}: {counts['rows']:,} rows ({counts['quarantined']} quarantined,"
        f" {counts['conflicting_grades']} conflicting grades kept at the higher),"
        f" {len(full.doc_ids):,} titles, {len(full.queries):,} queries, held out"
        f" {len(test.queries):,} ({sum(len(v) for v in judged.values()):,} judgements,"
        f" {sum(any(g > 0 for g in v.values()) for v in judged.values()):,} with a relevant title)"
    )

    rows: list[tuple[str, bool, dict[str, float], float]] = []
    for cjk in CJK_MODES:
        for zh_stop in (False, True):
            if cjk == REFERENCE and zh_stop:
                continue  # no CJK tokens to stop: the same run
            start = time.perf_counter()
            result = evaluate(test, LexicalSearcher(test, cjk, zh_stop), k=100)
            rows.append((cjk, zh_stop, result["metrics"]["qbqtc"], time.perf_counter() - start))
    ref = next(m for c, z, m, _ in rows if c == REFERENCE and not z)

    table = Table(title=f"BM25 on qbqtc held-out queries, all {len(full.doc_ids):,} titles")
    table.add_column("CJK tokens")
    table.add_column("zh stop words")
    for m in MEASURES:
        table.add_column(m, justify="right")
        table.add_column(f"{m} / {REFERENCE}", justify="right")
    table.add_column("index + search s", justify="right")
    for cjk, zh_stop, metrics, seconds in rows:
        cells = []
        for m in MEASURES:
            cells += [f"{metrics[m]:.4f}", f"{metrics[m] / ref[m]:.1f}x" if ref[m] else "-"]
        label = f"{cjk} (default)" if cjk == CJK_DEFAULT and not zh_stop else cjk
        table.add_row(label, "yes" if zh_stop else "no", *cells, f"{seconds:.1f}")
    console.print(table)

    texts = full.doc_texts
    tokenize(texts[:50], cjk=CJK_DEFAULT)  # lazy loads (jieba's dictionary) off the clock
    speed: dict[str, float] = {}
    for cjk in (REFERENCE, CJK_DEFAULT):
        best = min(
            measure(cjk, lambda c=cjk: tokenize(texts, cjk=c)).seconds for _ in range(args.repeats)
        )
        speed[cjk] = len(texts) / best
    console.print(
        f"tokenization, {len(texts):,} titles, best of {args.repeats}: {CJK_DEFAULT}"
        f" {speed[CJK_DEFAULT]:,.0f} docs/s, {REFERENCE} (reference) {speed[REFERENCE]:,.0f}"
        f" docs/s, ratio {speed[CJK_DEFAULT] / speed[REFERENCE]:.2f}"
    )
    console.print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
