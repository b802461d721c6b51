"""The simulator's truth as measurements of a run's data and models: measurement only.

`Truth` grades (query, video) pairs as the world does (`World.query_grades`, -1 for what has no
grade); the measures below turn grades into the diagnostics' figures: level noise per sample
source, the relevance filter's AUC and catch at a threshold, the grade composition of a
method's top k, and the truth-cleaned sample set. No training input reads any of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from crops.schema import HLA_LABELS, LEVEL_SOURCES

if TYPE_CHECKING:
    import polars as pl

    from crops.evaluate.collection import Collection
    from crops.evaluate.offline import Searcher
    from crops.world.world import World

#: Sources in the order of their labels, lowest first (ties: as HLA's priority lists them).
SOURCE_ORDER = ("prefiltered", "ranked", "exposed", "click", "recfeed", "llm", "reformulation")
GRADES = (0, 1, 2, 3)


class Scorer(Protocol):
    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------- truth


class Truth:
    """True grades of (query string, video id) from a simulated world, -1 where there is none
    (a video the catalogue does not hold, a query the world never produces): the world's own
    `World.query_grades`, with the unknown counted as ungraded rather than grade 0."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.n_videos = len(world.videos.video_id)

    @classmethod
    def load(cls, world_dir: str | Path) -> Truth:
        from crops.world.world import World

        return cls(World.load(world_dir))

    def rows(self, video_ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of video ids; -1 for ids the catalogue does not hold."""
        return self.world.video_rows(video_ids)

    def grades(self, query: str, video_ids: np.ndarray) -> np.ndarray:
        """Grades 0..3 of videos for a query; -1 for an unknown query or video."""
        return self.world.query_grades(query, video_ids, unknown=-1)

    def catalogue_grades(self, query: str) -> np.ndarray | None:
        """Grades of every catalogue video (row order) for a query; None if it is unknown."""
        if self.world.form_id(query) is None:
            return None
        return self.world.query_grades(query, self.world.videos.video_id)

    def grade_samples(self, samples: pl.DataFrame) -> np.ndarray:
        """Grades of a samples frame's (query, video_id) rows, aligned with its rows."""
        out = np.full(samples.height, -1, dtype=np.int8)
        if samples.height == 0:
            return out
        queries = samples["query"].to_numpy().astype(object)
        videos = samples["video_id"].to_numpy()
        uniq, inverse = np.unique(queries, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        for q, idx in zip(uniq, np.split(order, bounds), strict=True):
            out[idx] = self.grades(str(q), videos[idx])
        return out


def _sources_in_order(present: Sequence[str]) -> list[str]:
    known = [s for s in SOURCE_ORDER if s in present]
    return known + sorted(s for s in set(present) if s not in SOURCE_ORDER)


def _grade_shares(g: np.ndarray) -> dict:
    graded = g[g >= 0]
    n = len(graded)
    counts = {k: int((graded == k).sum()) for k in GRADES}
    shares = {str(k): (counts[k] / n if n else None) for k in GRADES}
    return {
        "samples": len(g),
        "graded": n,
        "ungraded": int(len(g) - n),
        "counts": {str(k): v for k, v in counts.items()},
        "share": shares,
        "share_grade_ge2": (counts[2] + counts[3]) / n if n else None,
        "share_grade3": counts[3] / n if n else None,
    }


def level_noise(samples: pl.DataFrame, grades: np.ndarray) -> dict:
    """Per source (HLA label): how many samples, and the shares of their graded videos at each
    grade; plus the level samples (labels 1-3) together."""
    sources = samples["source"].to_numpy().astype(object)
    rows = {}
    for s in _sources_in_order(list(set(sources))):
        mask = sources == s
        rows[s] = {"label": HLA_LABELS.get(s), **_grade_shares(grades[mask])}
    levels = np.isin(sources, LEVEL_SOURCES)
    return {"sources": rows, "levels_1_3": _grade_shares(grades[levels])}


# --------------------------------------------------------------------------- relevance filter


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for `positive` (ties count half): the Mann-Whitney U
    over (positives x negatives). None when a class is empty."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    u = ranks[positive].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def sample_levels(samples: pl.DataFrame, grades: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of up to n graded level samples (labels 1-3), drawn without replacement with
    a fixed seed, in row order."""
    sources = samples["source"].to_numpy().astype(object)
    pool = np.flatnonzero(np.isin(sources, LEVEL_SOURCES) & (grades >= 0))
    if len(pool) > n:
        pool = np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))
    return pool


def filter_check(
    samples: pl.DataFrame,
    grades: np.ndarray,
    texts: dict[int, str],
    scorer: Scorer,
    *,
    n: int = 4000,
    seed: int = 0,
    threshold: float,
) -> dict:
    """The relevance filter on level samples: AUC of its score for grade >= 1, and what it
    would do at `threshold` (mining keeps scores above it, so a score <= threshold drops)."""
    idx = sample_levels(samples, grades, n, seed)
    queries = samples["query"].to_numpy().astype(object)[idx]
    videos = samples["video_id"].to_numpy()[idx]
    sources = samples["source"].to_numpy().astype(object)[idx]
    keep = np.array([int(v) in texts for v in videos], dtype=bool)
    idx, queries, videos, sources = idx[keep], queries[keep], videos[keep], sources[keep]
    g = grades[idx]
    scores = np.asarray(
        scorer.score([str(q) for q in queries], [texts[int(v)] for v in videos]), np.float64
    )
    dropped = scores <= threshold

    def summary(mask: np.ndarray) -> dict:
        gm, sm, dm = g[mask], scores[mask], dropped[mask]
        irrelevant = gm == 0
        return {
            "samples": int(mask.sum()),
            "grade0": int(irrelevant.sum()),
            "auc_grade_ge1": auc(sm, gm >= 1),
            "dropped": float(dm.mean()) if len(dm) else None,
            "grade0_caught": float(dm[irrelevant].mean()) if irrelevant.any() else None,
            "relevant_kept": float((~dm[~irrelevant]).mean()) if (~irrelevant).any() else None,
            "score_mean_grade0": float(sm[irrelevant].mean()) if irrelevant.any() else None,
            "score_mean_grade_ge1": float(sm[~irrelevant].mean()) if (~irrelevant).any() else None,
        }

    by_source = {s: summary(sources == s) for s in LEVEL_SOURCES if (sources == s).any()}
    return {
        "threshold": threshold,
        "sample_size": n,
        "seed": seed,
        "without_text": int((~keep).sum()),
        **summary(np.ones(len(idx), dtype=bool)),
        "by_source": by_source,
    }


# --------------------------------------------------------------------------- top-k composition


def composition(
    truth: Truth,
    collection: Collection,
    searcher: Searcher,
    qids: Sequence[str],
    *,
    k: int = 100,
    batch_size: int = 256,
) -> dict:
    """Grades of a searcher's top k for queries: pooled shares of each grade, and grade-3
    recall@k averaged over the queries that have grade-3 videos."""
    counts = {g: 0 for g in (-1, *GRADES)}
    recalls: list[float] = []
    unknown = 0
    qids = [q for q in qids if q in collection.queries]
    for start in range(0, len(qids), batch_size):
        batch = qids[start : start + batch_size]
        texts = [collection.queries[q] for q in batch]
        hits = searcher.search(texts, k)
        for text, row in zip(texts, hits, strict=True):
            every = truth.catalogue_grades(text)
            if every is None:
                unknown += 1
                continue
            ids = np.array([int(d) for d, _ in row], dtype=np.int64)
            rows = truth.rows(ids)
            g = np.where(rows >= 0, every[np.maximum(rows, 0)], -1)
            for grade in counts:
                counts[grade] += int((g == grade).sum())
            total3 = int((every == 3).sum())
            if total3:
                recalls.append(float((g == 3).sum()) / total3)
    graded = sum(v for key, v in counts.items() if key >= 0)
    return {
        "queries": len(qids) - unknown,
        "queries_unknown_to_world": unknown,
        "k": k,
        "retrieved": graded + counts[-1],
        "ungraded": counts[-1],
        "share": {str(g): (counts[g] / graded if graded else None) for g in GRADES},
        "grade3_recall": float(np.mean(recalls)) if recalls else None,
        "queries_with_grade3": len(recalls),
    }


def qrels_queries(collection: Collection, name: str) -> list[str]:
    """The query ids a qrels set judges, in the collection's query order."""
    for q in collection.qrels:
        if q.name == name:
            return [qid for qid in collection.queries if qid in q.judgements]
    raise KeyError(f"no qrels set {name!r}; have {[q.name for q in collection.qrels]}")


def clean_samples(samples: pl.DataFrame, grades: np.ndarray) -> tuple[pl.DataFrame, int]:
    """The samples without the level samples (labels 1-3) whose video is grade 0: (kept, how
    many were removed). Ungraded samples stay."""
    import polars as pl

    sources = samples["source"].to_numpy().astype(object)
    drop = np.isin(sources, LEVEL_SOURCES) & (grades == 0)
    return samples.filter(pl.Series(~drop)), int(drop.sum())
