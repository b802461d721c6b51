"""Human relevance judgements as training data: the one conversion from (query, document,
grade) to `judged` samples, shared by `crops ingest query-title` and `crops train --qrels`.

A judgement is not a behaviour, so it has its source of its own (``judged``) and its label comes
from the grade by :func:`crops.schema.judged_label` (1 + round(4 g/top)), never from
``HLA_LABELS``. This module also turns a `--trec-dir` folder (docs, queries, qrels) into the
contract tables, through the ingest core (:func:`crops.ingest.tables.write`), so a collection
trains exactly as an import does: ids mapped, rows checked, bad ones quarantined and counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from crops.ingest.tables import MANIFEST, Imported, unreadable_rows, write
from crops.ingest.text import IngestError
from crops.schema import JUDGED_SOURCE, judged_label

#: The format name of a `--trec-dir` folder converted for training (in its ingest.json).
TREC_QRELS_FORMAT = "trec-qrels"


def grade_labels(top: int) -> dict[int, int]:
    """grade -> HLA label for every grade of the scale 0..top."""
    return {g: judged_label(g, top) for g in range(top + 1)}


def judgement_samples(judgements: pl.DataFrame, top: int) -> pl.DataFrame:
    """`judged` samples of (query, video_id, grade) rows on the scale 0..top.

    video_id is kept as given (the source's id, mapped to int64 by the ingest core); a grade
    outside the scale is a ValueError (the readers turn such rows into unreadable ones first).
    """
    labels = grade_labels(top)
    bad = judgements.filter(~pl.col("grade").is_in(list(labels)))
    if bad.height:
        raise ValueError(f"grade {bad['grade'][0]} is outside the scale 0..{top}")
    return judgements.select(
        pl.col("query").cast(pl.String),
        pl.col("video_id"),
        pl.col("grade").replace_strict(labels, return_dtype=pl.Int8).alias("label"),
        pl.lit(JUDGED_SOURCE, pl.String).alias("source"),
        pl.lit(None, pl.Float32).alias("relevance"),
        pl.lit(None, pl.String).alias("request_id"),
        pl.lit(None, pl.String).alias("session_id"),
    )


def caption_videos(video_ids: list[str], captions: list[str]) -> pl.DataFrame:
    """A videos table of documents that are only a text (a title, a passage): the caption."""
    n = len(video_ids)
    return pl.DataFrame(
        {
            "video_id": pl.Series(video_ids, dtype=pl.String),
            "caption": pl.Series(captions, dtype=pl.String),
            "tags": pl.Series([None] * n, dtype=pl.List(pl.String)),
            "cover_text": pl.Series([None] * n, dtype=pl.String),
            "category": pl.Series([None] * n, dtype=pl.String),
            "upload_ts": pl.Series([None] * n, dtype=pl.Datetime("ms", "UTC")),
            "synthetic": pl.Series([False] * n, dtype=pl.Boolean),
            "source_query": pl.Series([None] * n, dtype=pl.String),
        }
    )


def trec_imported(folder: Path) -> Imported:
    """A `--trec-dir` folder (read by crops.evaluate.collection.trec_collection) as judged
    samples and videos. Every judgement becomes a sample; the grade scale is 0..largest grade.

    A judgement of a query with no text, or with a negative grade (TREC's -1/-2 for spam), is
    unreadable; one of a document not in docs reaches the samples check, which quarantines it
    (`video_id not in videos`).
    """
    from crops.evaluate.collection import trec_collection

    coll = trec_collection(folder)
    qrels = coll.qrels[0]
    rows, bad = [], []
    for qid, docs in qrels.judgements.items():
        for doc, grade in docs.items():
            where, raw = f"{coll.source} ({qrels.name} qrels)", f"{qid} 0 {doc} {grade}"
            if qid not in coll.queries:
                bad.append(("samples", where, "query id not in queries", raw))
            elif grade < 0:
                bad.append(("samples", where, "negative grade", raw))
            else:
                rows.append((coll.queries[qid], doc, grade))
    if not rows:
        raise IngestError(f"{folder}: no usable judgements in the {qrels.name} qrels")
    frame = pl.DataFrame(
        rows, schema={"query": pl.String, "video_id": pl.String, "grade": pl.Int64}, orient="row"
    )
    top = int(frame["grade"].max())
    if top < 1:
        raise IngestError(f"{folder}: every judgement has grade 0; nothing is relevant")
    counts = frame.group_by("grade").len().sort("grade")
    return Imported(
        format=TREC_QRELS_FORMAT,
        source=str(Path(folder).resolve()),
        tables={
            "videos": caption_videos(coll.doc_ids, coll.doc_texts),
            "samples": judgement_samples(frame, top),
        },
        unreadable=unreadable_rows(bad),
        notes={
            "grade_scale": f"0-{top}",
            "labels": {str(g): lab for g, lab in grade_labels(top).items()},
            "rows_per_grade": {str(g): n for g, n in counts.iter_rows()},
            "queries": frame["query"].n_unique(),
            "inputs": _inputs(folder),
        },
    )


def _inputs(folder: Path) -> dict[str, list[int]]:
    """Size and mtime of each file of a folder: whether a conversion is still current."""
    return {
        p.name: [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(Path(folder).iterdir())
        if p.is_file()
    }


def _current(side: Path, folder: Path) -> bool:
    try:
        manifest = json.loads((side / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("format") == TREC_QRELS_FORMAT
        and manifest.get("source") == str(Path(folder).resolve())
        and manifest.get("notes", {}).get("inputs") == _inputs(folder)
    )


def training_tables(qrels: Path, side: Path) -> tuple[Path, Path, dict]:
    """(samples, videos, manifest) to train on from `crops train --qrels DIR`.

    DIR is an import (DIR/ingest.json: its own samples and videos) or a `--trec-dir` folder,
    converted into `side` (rewritten only when DIR's files changed, so a rerun resumes from its
    checkpoints: their fingerprint includes the files' times). The held-out collection of an
    import (DIR/../ingest.json) is refused: its queries are the evaluation's.
    """
    qrels = Path(qrels)
    if not qrels.is_dir():
        raise IngestError(f"--qrels {qrels}: not a folder")
    if (qrels / MANIFEST).is_file():
        manifest = json.loads((qrels / MANIFEST).read_text())
        samples, videos = qrels / "samples.parquet", qrels / "videos.parquet"
        for path in (samples, videos):
            if not path.is_file():
                raise IngestError(
                    f"--qrels {qrels}: an import without {path.name} (a {manifest.get('format')}"
                    " import has no judgements to train on)"
                )
        return samples, videos, manifest
    if (qrels.parent / MANIFEST).is_file():
        raise IngestError(
            f"--qrels {qrels} is the held-out collection of the import in {qrels.parent}: train"
            f" on --qrels {qrels.parent} and evaluate on this one (--trec-dir)"
        )
    if not _current(side, qrels):
        if side.exists():
            if not (side / MANIFEST).is_file() and any(side.iterdir()):
                raise IngestError(f"{side}: exists and is not a converted collection; remove it")
            shutil.rmtree(side)
        write(trec_imported(qrels), side)
    manifest = json.loads((side / MANIFEST).read_text())
    return side / "samples.parquet", side / "videos.parquet", manifest


__all__ = [
    "TREC_QRELS_FORMAT",
    "caption_videos",
    "grade_labels",
    "judgement_samples",
    "training_tables",
    "trec_imported",
]
