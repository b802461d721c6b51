"""Zero-shot retrieval quality of encoders on Chinese web search (QBQTC), against MiniLM.

Documents are QBQTC's distinct titles, queries its distinct queries, judgements its 0/1/2
grades. Only the held-out queries (`crops.ingest.split.held_out` on the query text) are
scored, each retrieving from all titles with exact inner-product search over normalised
embeddings (`crops.evaluate.offline`, the scorer `crops evaluate` uses): nDCG@4 on the grades
and R@100 (grade >= 1 relevant). Every encoder is any `--encoder` name `crops train` takes
(`hf:minilm`, `hf:<hub name or folder>`, `hash`), and its figures are printed as ratios to
MiniLM zero-shot, the named reference, run in the same process. An encoder whose folder
names prompts (`hf:e5`: "query: " / "passage: ") is measured with them, and with
`--without-prompts` a second time without.

    python bench/bench_zh_encoders.py [--encoder hf:<name-or-path> ...] [--without-prompts]
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crops.evaluate.collection import Collection, CollectionError, Qrels
from crops.evaluate.offline import DenseSearcher, evaluate
from crops.ingest.split import held_out
from crops.model.encoders import DualEncoder, HFTower, build_dual_encoder
from crops.model.names import HF_PREFIX, MINILM_ALIAS

REPO = Path(__file__).resolve().parents[1]
#: QBQTC's train split in the shared data folder beside the repository.
DEFAULT_DATA = REPO.parent / "shared" / "data" / "qbqtc-train" / "train.json"
REFERENCE = f"{HF_PREFIX}{MINILM_ALIAS}"
MEASURES = ("nDCG@4", "R@100")
GRADES = {"0": 0, "1": 1, "2": 2}


def read_qbqtc(path: Path) -> tuple[Collection, dict[str, int]]:
    """QBQTC JSON lines -> a collection of the held-out queries over all titles.

    A row that is not JSON, lacks a query or title, or has a grade outside 0/1/2 is
    quarantined and counted by reason; a (query, title) pair judged twice keeps its
    highest grade and is counted too, so nothing is dropped unseen.
    """
    if not path.is_file():
        raise CollectionError(
            f"QBQTC file {path} does not exist: put the shared folder beside the repository"
            " or pass --data"
        )
    counts: Counter[str] = Counter()
    titles: dict[str, str] = {}  # title -> doc id
    queries: dict[str, str] = {}  # query -> query id
    grades: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                counts[f"line {n}: not JSON"] += 1
                continue
            query, title = str(row.get("query") or "").strip(), str(row.get("title") or "").strip()
            grade = GRADES.get(str(row.get("relevant", "")).strip())
            if not query or not title or grade is None:
                counts["missing query/title or grade not 0/1/2"] += 1
                continue
            qid = queries.setdefault(query, f"q{len(queries)}")
            did = titles.setdefault(title, f"t{len(titles)}")
            if (qid, did) in grades:
                counts["pair judged twice (highest grade kept)"] += 1
                if grades[qid, did] != grade:
                    counts["... with different grades"] += 1
                grade = max(grade, grades[qid, did])
            grades[qid, did] = grade
    if not grades:
        raise CollectionError(f"QBQTC file {path} has no usable rows")
    held = {qid: q for q, qid in queries.items() if held_out(q)}
    judgements: dict[str, dict[str, int]] = {}
    for (qid, did), grade in grades.items():
        if qid in held:
            judgements.setdefault(qid, {})[did] = grade
    collection = Collection(
        doc_ids=list(titles.values()),
        doc_texts=list(titles),
        queries=held,
        qrels=[Qrels("qbqtc", judgements, MEASURES)],
        source=str(path),
    )
    counts["queries"], counts["held-out queries"] = len(queries), len(held)
    return collection, dict(counts)


def run_encoder(collection: Collection, model: DualEncoder, spec: str, batch_size: int) -> dict:
    """One encoder zero-shot: its metrics, embedding time and throughput."""
    t0 = time.perf_counter()
    searcher = DenseSearcher.exact(
        model, collection.doc_ids, collection.doc_texts, name=spec, batch_size=batch_size
    )
    embed_s = time.perf_counter() - t0
    result = evaluate(collection, searcher, k=100, batch_size=batch_size)
    return {
        "encoder": spec,
        "dim": model.dim,
        "embed_s": embed_s,
        "docs_per_s": len(collection.doc_ids) / embed_s,
        **result["metrics"]["qbqtc"],
    }


def main(
    encoder: Annotated[
        list[str] | None,
        typer.Option(help="encoders to measure beside the reference (hf:<name-or-path> | hash)"),
    ] = None,
    data: Annotated[Path, typer.Option(help="QBQTC train.json")] = DEFAULT_DATA,
    max_length: Annotated[int, typer.Option(help="tokens per text (HF towers)")] = 128,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 256,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows here")] = None,
    without_prompts: Annotated[
        bool, typer.Option(help="also measure encoders that have prompts without them")
    ] = False,
) -> None:
    console = Console()
    collection, counts = read_qbqtc(data)
    console.print(
        f"QBQTC {data.name}: {len(collection.doc_ids):,} titles, {counts['queries']} queries,"
        f" {counts['held-out queries']} held out and scored; row notes: "
        + (", ".join(f"{k} {v}" for k, v in counts.items() if "quer" not in k) or "none")
    )
    specs = [REFERENCE] + [s for s in (encoder or []) if s != REFERENCE]
    rows = []
    for spec in specs:
        console.print(f"[dim]embedding {len(collection.doc_ids):,} titles with {spec} ...[/dim]")
        model = build_dual_encoder(spec, max_length=max_length)
        rows.append(run_encoder(collection, model, spec, batch_size))
        tower = model.query_tower
        if without_prompts and isinstance(tower, HFTower) and tower.prompts:
            tower.prompts = {}
            rows.append(run_encoder(collection, model, f"{spec} (no prompts)", batch_size))
    ref = rows[0]
    table = Table(title=f"zero-shot on QBQTC held-out queries (reference: {REFERENCE})")
    for col in ("encoder", "dim", *MEASURES, *(f"{m} / ref" for m in MEASURES), "docs/s"):
        table.add_column(col, justify="left" if col == "encoder" else "right")
    for row in rows:
        ratios = [row[m] / ref[m] if ref[m] else float("nan") for m in MEASURES]
        row["ratios"] = dict(zip(MEASURES, ratios, strict=True))
        table.add_row(
            row["encoder"],
            str(row["dim"]),
            *(f"{row[m]:.4f}" for m in MEASURES),
            *(f"{r:.2f}x" for r in ratios),
            f"{row['docs_per_s']:.0f}",
        )
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps({"data": str(data), "counts": counts, "rows": rows}))


if __name__ == "__main__":
    typer.run(main)
