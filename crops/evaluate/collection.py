"""Evaluation collections: a simulated world's test sets, or any TREC-style folder.

A collection is documents (id, text), queries (id, text) and one or more named qrels sets,
each with the measures it is scored by. Readers check every line and name the file and line
of anything malformed: an evaluation over silently dropped judgements is worse than none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: What the paper reports on each of a world's test sets (tests/<name>.qrels).
WORLD_MEASURES: dict[str, tuple[str, ...]] = {
    "ct": ("R@100",),
    "qr": ("R@100",),
    "graded": ("nDCG@4",),
}
DEFAULT_TREC_MEASURES = ("R@100", "nDCG@10")


class CollectionError(ValueError):
    """A collection file is missing or malformed; the message names the file and line."""


@dataclass
class Qrels:
    """One judgement set: (query id, doc id) -> grade, scored by `measures`."""

    name: str
    judgements: dict[str, dict[str, int]]
    measures: tuple[str, ...]
    unknown_docs: int = 0  # judged docs that are not in the collection (cannot be retrieved)

    def __len__(self) -> int:
        return sum(len(v) for v in self.judgements.values())


@dataclass
class Collection:
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: list[Qrels] = field(default_factory=list)
    source: str = ""
    docs_quarantined: int = 0  # rows of the documents table that failed validation

    def judged_queries(self) -> list[str]:
        """Queries that some qrels set judges, in a stable order: the ones worth running."""
        judged = set().union(*(q.judgements for q in self.qrels)) if self.qrels else set()
        return [q for q in self.queries if q in judged]


def read_tsv_pairs(path: Path, what: str) -> dict[str, str]:
    """`id<TAB>text` lines; a missing tab, an empty id or a repeated id is an error."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CollectionError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise CollectionError(f"{path}: not valid UTF-8 ({e})") from None
    # split on newlines only: str.splitlines also breaks at \x1c, \u2028 and kin inside text
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        key = key.strip()
        if not sep or not key:
            raise CollectionError(f"{path}:{n}: expected 'id<TAB>text', got {line[:80]!r}")
        if key in out:
            raise CollectionError(f"{path}:{n}: {what} id {key!r} appears twice")
        out[key] = value.strip()
    if not out:
        raise CollectionError(f"{what} file {path} is empty")
    return out


def read_qrels(path: Path, name: str, measures: tuple[str, ...], docs: set[str]) -> Qrels:
    """TREC qrels `qid iter docid grade` (whitespace separated, integer grade)."""
    judgements: dict[str, dict[str, int]] = {}
    unknown = 0
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise CollectionError(f"qrels file {path} does not exist") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise CollectionError(
                f"{path}:{n}: expected 'qid iter docid grade' (4 fields), got {len(parts)}"
            )
        qid, _, doc, grade = parts
        try:
            g = int(grade)
        except ValueError:
            raise CollectionError(f"{path}:{n}: grade {grade!r} is not an integer") from None
        if doc not in docs:
            unknown += 1
        judgements.setdefault(qid, {})[doc] = g
    if not judgements:
        raise CollectionError(f"qrels file {path} has no judgements")
    return Qrels(name, judgements, measures, unknown)


def world_collection(world: str | Path) -> Collection:
    """The documents and the CT / QR / graded test sets of a simulated world folder."""
    from crops.schema import load_table, video_text

    root = Path(world)
    if not (root / "world.json").is_file():
        raise CollectionError(f"{root} is not a simulated world folder: no world.json")
    table, quarantined, _ = load_table(root / "videos.parquet", "videos")
    docs = video_text(table)
    doc_ids = [str(v) for v in docs["video_id"].to_list()]
    known = set(doc_ids)
    queries = read_tsv_pairs(root / "tests" / "queries.tsv", "queries")
    qrels = [
        read_qrels(root / "tests" / f"{name}.qrels", name, measures, known)
        for name, measures in WORLD_MEASURES.items()
    ]
    return Collection(doc_ids, docs["text"].to_list(), queries, qrels, str(root), len(quarantined))


def _one(folder: Path, patterns: tuple[str, ...], what: str, given: Path | None) -> Path:
    if given is not None:
        return given
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise CollectionError(
            f"{folder}: expected exactly one {what} file matching {' | '.join(patterns)},"
            f" found {names}; name it with --{what}"
        )
    return found[0]


def trec_collection(
    folder: str | Path,
    *,
    docs: Path | None = None,
    queries: Path | None = None,
    qrels: Path | None = None,
    measures: tuple[str, ...] = DEFAULT_TREC_MEASURES,
) -> Collection:
    """A folder of TSV docs, TSV queries and TREC qrels (e.g. the NFCorpus dev split).

    Files are found by name (`*.docs` or `docs.tsv`; `*queries*`; `*.qrel*`) unless given.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CollectionError(f"--trec-dir {root} is not a folder")
    docs_p = _one(root, ("*.docs", "docs.tsv", "corpus.tsv"), "docs", docs)
    queries_p = _one(root, ("*queries*",), "queries", queries)
    qrels_p = _one(root, ("*.qrel", "*.qrels", "qrels*.txt"), "qrels", qrels)
    doc_map = read_tsv_pairs(docs_p, "docs")
    query_map = read_tsv_pairs(queries_p, "queries")
    judged = read_qrels(qrels_p, qrels_p.stem, tuple(measures), set(doc_map))
    return Collection(list(doc_map), list(doc_map.values()), query_map, [judged], str(root))
