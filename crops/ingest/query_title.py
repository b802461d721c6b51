"""`crops ingest query-title`: graded (query, title) pairs, such as QBQTC, as judged training
samples and a `--trec-dir` collection for evaluation.

The source is JSON lines (``{"query", "title", "relevant"}`` per line), a JSON array of such
objects, or a TSV with a header naming ``query``, ``title`` and a grade column (``relevant``,
``label`` or ``grade``). Each distinct title is a video (its id is the title text, mapped to
int64 by the core; the caption is the title). A query is either trained on or held out, by
:func:`crops.ingest.split.held_out` on its text: the training queries' pairs become ``judged``
samples (:func:`crops.ingest.judgements.judgement_samples`), the held-out queries' pairs the
collection's qrels, retrieved from every title (all queries when the share is 0).

Grades are integers 0..top: top is the scale given (``--grades 0-2``) or else the largest grade
read. A pair judged twice with one grade keeps its first row (the others are unreadable,
``duplicate pair``); judged twice with different grades, all its rows are unreadable
(``conflicting grades``): the annotators disagree, and neither the larger grade (a positive
that may be wrong) nor a mean (a grade no one gave) is a judgement.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from crops.ingest.formats import IngestOptions
from crops.ingest.judgements import caption_videos, grade_labels, judgement_samples
from crops.ingest.split import held_out
from crops.ingest.tables import Collection, Imported, unreadable_rows
from crops.ingest.text import IngestError, read_text

#: The names a grade column or field may have, the first found is used.
GRADE_FIELDS = ("relevant", "label", "grade")
JSON_SUFFIXES = (".jsonl", ".ndjson")
TSV_SUFFIXES = (".tsv", ".tab")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class _Pair:
    where: str
    raw: str
    query: str
    title: str
    grade: int


def query_id(query: str) -> str:
    """The collection's id of a query: stable across imports (a hash of its text)."""
    return "q" + hashlib.blake2b(query.encode("utf-8"), digest_size=6).hexdigest()


def _grade(value: object) -> int | str:
    """The grade as an int, or the reason it is not one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing grade"
    if isinstance(value, bool):
        return "grade not an integer"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        return "grade not an integer"
    return value if value >= 0 else "negative grade"


def _text(record: dict, name: str) -> str:
    """A text field, stripped, or the reason it cannot be read."""
    value = record.get(name)
    if value is None:
        return f"\0missing {name}"
    if not isinstance(value, str):
        return f"\0{name} not text"
    value = value.strip()
    return value if value else f"\0empty {name}"


def _pair(record: dict, where: str, raw: str) -> _Pair | tuple[str, str, str]:
    """A record as a pair, or (where, reason, raw) when it is unreadable."""
    query, title = _text(record, "query"), _text(record, "title")
    field = next((f for f in GRADE_FIELDS if f in record), GRADE_FIELDS[0])
    grade = _grade(record.get(field))
    for value in (query, title):
        if value.startswith("\0"):
            return where, value[1:], raw
    if isinstance(grade, str):
        return where, grade, raw
    return _Pair(where, raw, query, title, grade)


def _kind(src: Path, text: str) -> str:
    """json-lines, json-array or tsv: by the file's suffix, else by its first characters."""
    suffix = src.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json-lines"
    if suffix in TSV_SUFFIXES:
        return "tsv"
    start = text.lstrip()[:1]
    if start == "[":
        return "json-array"
    if start == "{":
        return "json-lines"
    header = text.split("\n", 1)[0].rstrip("\r").split("\t")
    if {"query", "title"} <= {h.strip() for h in header}:
        return "tsv"
    raise IngestError(
        f"{src}: not JSON lines, a JSON array or a TSV with a header naming query, title and"
        f" one of {', '.join(GRADE_FIELDS)} (first line: {text[:80]!r})"
    )


def _json_lines(src: Path, text: str):
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{src}:{n}"
        try:
            record = json.loads(line)
        except ValueError:
            yield where, "malformed JSON", line
            continue
        if not isinstance(record, dict):
            yield where, "not a JSON object", line
            continue
        yield _pair(record, where, line)


def _json_array(src: Path, text: str):
    try:
        records = json.loads(text)
    except ValueError as exc:
        raise IngestError(f"{src}: not a readable JSON array: {exc}") from None
    if not isinstance(records, list):
        raise IngestError(f"{src}: a JSON file must hold an array of objects")
    for i, record in enumerate(records):
        where, raw = f"{src}:[{i}]", json.dumps(record, ensure_ascii=False)
        if not isinstance(record, dict):
            yield where, "not a JSON object", raw
        else:
            yield _pair(record, where, raw)


def _tsv(src: Path, text: str):
    lines = text.split("\n")
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    missing = [c for c in ("query", "title") if c not in header]
    if not any(f in header for f in GRADE_FIELDS):
        missing.append(" | ".join(GRADE_FIELDS))
    if missing:
        raise IngestError(
            f"{src}:1: missing column {', '.join(missing)} (found: {', '.join(header)})"
        )
    for n, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where, cells = f"{src}:{n}", line.split("\t")
        if len(cells) != len(header):
            yield where, f"not {len(header)} tab-separated fields", line
            continue
        yield _pair(dict(zip(header, cells, strict=True)), where, line)


READERS = {"json-lines": _json_lines, "json-array": _json_array, "tsv": _tsv}


def _resolve(pairs: list[_Pair]) -> tuple[list[_Pair], list[tuple[str, str, str]]]:
    """One judgement per (query, title): a repeat with the same grade is a duplicate, pairs
    judged with different grades are conflicting (module docstring)."""
    grades: dict[tuple[str, str], set[int]] = {}
    for p in pairs:
        grades.setdefault((p.query, p.title), set()).add(p.grade)
    kept, bad, seen = [], [], set()
    for p in pairs:
        key = (p.query, p.title)
        if len(grades[key]) > 1:
            bad.append((p.where, "conflicting grades", p.raw))
        elif key in seen:
            bad.append((p.where, "duplicate pair", p.raw))
        else:
            seen.add(key)
            kept.append(p)
    return kept, bad


def read(src: Path, options: IngestOptions) -> Imported:
    """Import a file of graded query-title pairs (module docstring)."""
    src = Path(src)
    if src.is_dir():
        raise IngestError(f"{src}: a folder; query-title reads one JSON-lines, JSON or TSV file")
    text = read_text(src, options.encoding)
    kind = _kind(src, text)
    pairs: list[_Pair] = []
    bad: list[tuple[str, str, str]] = []
    for item in READERS[kind](src, text):
        (pairs.append if isinstance(item, _Pair) else bad.append)(item)
    read_rows = len(pairs) + len(bad)
    if options.grades is not None:
        top, scale_from = int(options.grades.split("-")[1]), "given"
        bad += [(p.where, "unknown grade", p.raw) for p in pairs if p.grade > top]
        pairs = [p for p in pairs if p.grade <= top]
    else:
        top, scale_from = max((p.grade for p in pairs), default=0), "largest grade read"
    if not pairs:
        raise IngestError(f"{src}: no readable judgement in {read_rows} rows")
    if top < 1:
        raise IngestError(f"{src}: every grade is 0; give the scale with --grades (e.g. 0-2)")
    per_grade = {str(g): sum(p.grade == g for p in pairs) for g in range(top + 1)}
    titles = list(dict.fromkeys(p.title for p in pairs))
    kept, duplicates = _resolve(pairs)
    bad += duplicates
    share = options.holdout
    held = {q: share > 0 and held_out(q, share) for q in dict.fromkeys(p.query for p in kept)}
    train = [p for p in kept if not held[p.query]]
    judged = [p for p in kept if held[p.query] or share == 0]
    qids = {q: query_id(q) for q in dict.fromkeys(p.query for p in judged)}
    if len(set(qids.values())) != len(qids):
        raise IngestError(f"{src}: two queries share a query id; report this (query_id)")
    frame = pl.DataFrame(
        [(p.query, p.title, p.grade) for p in train],
        schema={"query": pl.String, "video_id": pl.String, "grade": pl.Int64},
        orient="row",
    )
    notes = {
        "source_kind": kind,
        "grade_scale": f"0-{top}",
        "scale_from": scale_from,
        "labels": {str(g): lab for g, lab in grade_labels(top).items()},
        "rows": read_rows,
        "rows_per_grade": per_grade,
        "holdout": share,
        "queries": {
            "train": sum(not h for h in held.values()),
            "held_out": sum(held.values()),
        },
        "judgements": {"train": len(train), "held_out": len(kept) - len(train)},
        "collection_queries": "all" if share == 0 else "held out",
    }
    return Imported(
        format="query-title",
        source=str(src),
        tables={
            "videos": caption_videos(titles, titles),
            "samples": judgement_samples(frame, top),
        },
        unreadable=unreadable_rows([("samples", w, r, raw) for w, r, raw in bad]),
        collection=Collection(
            docs={t: t for t in titles},
            queries={qid: q for q, qid in qids.items()},
            qrels=[(qids[p.query], p.title, p.grade) for p in judged],
        ),
        notes=notes,
        encoding=options.encoding,
    )
