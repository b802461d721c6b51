"""Training to convergence: a validation split of the mined samples, its recall, and the stop rule.

A fixed step count decides a comparison by who converges first: a click-only model is done
long before one trained on five label levels. So `crops train` holds out some of the mined
samples' *queries* (training queries only; the test sets never reach training), measures
recall@k of their positives every `eval_every` steps, and stops when `patience` evaluations in
a row bring no gain of more than `min_delta`, or at the `max_steps` cap. The served model is the
best one seen, and training.json records the curve and why training stopped.

The split is a pure function of (seed, query text), so every worker, a resumed run and a rerun
hold out the same queries whatever the row order of the samples file.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the CLI imports the stop rule; the data layer loads only when training
    from crops.model.data import TrainingData
    from crops.model.encoders import BucketTable

StopReason = Literal["converged", "max_steps"]


class StopRule(BaseModel):
    """When training stops: the one home of these defaults (`crops train`, `crops experiment`,
    the pipeline's train component and the RayJob path all take them from here).

    With `patience` set, training evaluates recall@`val_k` of a held-out `val_fraction` of the
    queries every `eval_every` steps and stops after `patience` evaluations without a gain of
    more than `min_delta`, keeping the best model; `max_steps` caps it. With `patience` None it
    trains exactly `max_steps` steps (and evaluates only if `val_fraction` > 0).
    """

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(10_000, ge=1, description="cap on optimizer steps")
    patience: int | None = Field(
        5, ge=1, description="evaluations without gain before stopping; None: train max_steps"
    )
    eval_every: int = Field(200, ge=1, description="steps between validation evaluations")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the training queries held out for validation"
    )
    val_k: int = Field(100, ge=1, description="recall cutoff of the validation metric")
    val_max_docs: int | None = Field(
        None, ge=1, description="cap the validation corpus (slow encoders); None: every video"
    )
    min_delta: float = Field(0.002, ge=0, description="smallest recall gain that counts")

    @model_validator(mode="after")
    def _patience_needs_validation(self) -> StopRule:
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError("patience needs a validation split: val_fraction > 0")
        return self


def _rank_key(query: str, seed: int) -> bytes:
    key = seed.to_bytes(8, "little", signed=True)
    return hashlib.blake2b(query.encode("utf-8"), digest_size=8, key=key).digest()


def split_by_query(
    data: TrainingData, fraction: float, seed: int, min_label: int
) -> tuple[TrainingData, list[int]]:
    """(training data without the held-out queries, the held-out query indices in `data`).

    Only queries with a positive (label >= `min_label`) can be held out: recall needs one. At
    least one query is held out when `fraction` > 0 and one is eligible, and at least one
    query always stays in training.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return data, []
    eligible = [q for q, (_, labels) in enumerate(data.groups) if (labels >= min_label).any()]
    n_val = min(max(1, round(fraction * len(data.queries))), len(eligible), len(data.queries) - 1)
    if n_val <= 0:
        return data, []
    held = sorted(sorted(eligible, key=lambda q: _rank_key(data.queries[q], seed))[:n_val])
    keep = sorted(set(range(len(data.queries))) - set(held))
    train = replace(
        data,
        queries=[data.queries[q] for q in keep],
        groups=[data.groups[q] for q in keep],
    )
    return train, held


def _embed_hashed(tower, table: BucketTable, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Float32 embeddings of texts `rows` of a hashed table, in the batches `DualEncoder.embed`
    makes of the same texts: the same ids, so the same floats."""
    parts = [
        tower(table.bucket_ids(rows[i : i + batch_size], tower.device))
        .detach()
        .float()
        .cpu()
        .numpy()
        for i in range(0, len(rows), batch_size)
    ]
    if not parts:
        return np.zeros((0, tower.dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class RecallProbe:
    """Recall@k of the held-out queries' positives over the training corpus (all video texts).

    The corpus is every video the samples refer to; `max_docs` caps it (the held-out
    positives always stay) for encoders too slow to embed the whole corpus at every evaluation.

    What an evaluation costs grows with the corpus times the held-out queries, and on a graded
    collection of many queries with a few judged titles each (QBQTC's shape: 19,000 queries,
    59,000 titles, 2,100 held out) it was most of the run (bench/bench_train_graded.py):
    hash towers re-hashed every text n-gram by n-gram at the first evaluation (57 s, longer
    than the 200 steps before it) and looked each text up again at every later one, and
    `argpartition` over the whole (queries x corpus) score matrix took 4 s an evaluation. So
    hash towers get their texts hashed once (the trainer's corpus table, `corpus`, when it
    hands one over), and a positive's rank is counted against its own query's scores, a block
    of queries at a time; see :meth:`recall` for the tie rule.
    """

    def __init__(
        self,
        data: TrainingData,
        held: list[int],
        *,
        k: int = 100,
        min_label: int = 4,
        max_docs: int | None = None,
        seed: int = 0,
        corpus: BucketTable | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"recall cutoff k must be positive, got {k}")
        self.k = k
        self.queries = [data.queries[q] for q in held]
        positives = [data.groups[q][0][data.groups[q][1] >= min_label] for q in held]
        docs = np.arange(len(data.texts))
        if max_docs is not None and max_docs < len(docs):
            must = np.unique(np.concatenate(positives)) if positives else np.array([], int)
            rest = np.setdiff1d(docs, must)
            rng = np.random.default_rng(seed)
            extra = rng.choice(rest, size=max(0, max_docs - len(must)), replace=False)
            docs = np.sort(np.concatenate([must, extra]))
        self.docs = docs
        self.texts = [data.texts[d] for d in docs]
        position = {int(d): i for i, d in enumerate(docs)}
        self.positives = [{position[int(d)] for d in p} for p in positives]
        if corpus is not None and len(corpus) != len(data.texts):
            raise ValueError(f"corpus table has {len(corpus)} texts, the data {len(data.texts)}")
        self.corpus = corpus  # data.texts hashed by the doc tower (the trainer's HashFeatures)
        self._hashed: tuple[BucketTable, np.ndarray, BucketTable] | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def _embed(self, model, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(doc, query) embeddings; hash towers read their texts' bucket ids hashed once."""
        from crops.model.encoders import HashTower

        towers = (getattr(model, "query_tower", None), getattr(model, "doc_tower", None))
        if not all(isinstance(t, HashTower) for t in towers):
            return (
                model.embed(self.texts, side="doc", batch_size=batch_size),
                model.embed(self.queries, side="query", batch_size=batch_size),
            )
        q_tower, d_tower = towers
        if self._hashed is None:
            if self.corpus is not None:  # rows of the corpus table: the probe's docs
                docs = (self.corpus, self.docs)
            else:
                docs = (d_tower.bucket_table(self.texts), np.arange(len(self.texts)))
            self._hashed = (*docs, q_tower.bucket_table(self.queries))
        doc_table, doc_rows, query_table = self._hashed
        was_training = model.training
        model.eval()
        try:
            return (
                _embed_hashed(d_tower, doc_table, doc_rows, batch_size),
                _embed_hashed(q_tower, query_table, np.arange(len(self.queries)), batch_size),
            )
        finally:
            model.train(was_training)

    def recall(self, model, batch_size: int = 512, block: int = 256) -> float:
        """Mean recall@k over the held-out queries (the model is left in its training mode).

        A positive is found when fewer than k docs rank above it: docs with a higher score,
        and docs with the same score at an earlier corpus position (ties broken by position,
        the same on every run; `argpartition` over the scores broke them arbitrarily).
        Scores are computed `block` queries at a time, so memory stays at block x corpus.
        """
        if not self.queries:
            raise ValueError("no held-out queries to evaluate")
        import torch

        with torch.no_grad():
            docs, queries = self._embed(model, batch_size)
        k = min(self.k, len(docs))
        hits = np.zeros(len(self.queries))
        for start in range(0, len(self.queries), block):
            scores = queries[start : start + block] @ docs.T
            rows, cols = [], []
            for i, pos in enumerate(self.positives[start : start + block]):
                rows += [i] * len(pos)
                cols += sorted(pos)
            if not cols:
                continue
            rows_a, cols_a = np.array(rows), np.array(cols)
            mine = scores[rows_a]  # (positives of the block) x corpus
            own = scores[rows_a, cols_a][:, None]
            earlier = np.arange(scores.shape[1])[None, :] < cols_a[:, None]
            above = np.count_nonzero((mine > own) | ((mine == own) & earlier), axis=1)
            np.add.at(hits, start + rows_a, above < k)
        return float(np.mean(hits / np.array([len(p) for p in self.positives])))


def stop_options(
    max_steps: int | None,
    patience: int | None,
    eval_every: int | None = None,
    val_fraction: float | None = None,
) -> dict:
    """A `StopRule` from command-line style options: only those given, the rest keep the
    rule's defaults; patience 0 turns early stopping off (train `max_steps` steps)."""
    given = {"max_steps": max_steps, "eval_every": eval_every, "val_fraction": val_fraction}
    rule = {k: v for k, v in given.items() if v is not None}
    if patience is not None:
        rule["patience"] = patience or None
    return rule


class EarlyStopping(BaseModel):
    """The state of a `StopRule` over a run: the curve, the best score and why it stopped.
    Serialisable, so a resumed run continues the same patience count."""

    model_config = ConfigDict(extra="forbid")

    rule: StopRule
    curve: list[dict] = Field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    mark: float | None = Field(None, description="the score of the last gain above min_delta")
    stale: int = 0
    stopped: StopReason | None = None

    def update(self, step: int, recall: float, loss: float | None = None) -> bool:
        """Record an evaluation; True when it is the new best (the model to keep).

        The kept model is the curve's highest point. Patience counts the evaluations since the
        last gain of more than `min_delta` over the previous such gain (the mark), so a curve
        still climbing in small steps that add up keeps training, and small wobbles near the
        top neither reset the patience nor lose the best model.
        """
        self.curve.append({"step": step, "recall": recall, "loss": loss})
        if self.mark is None or recall > self.mark + self.rule.min_delta:
            self.mark, self.stale = recall, 0
        else:
            self.stale += 1
        best = self.best
        improved = best is None or recall > best
        if improved:
            self.best, self.best_step = recall, step
        if self.rule.patience is not None and self.stale >= self.rule.patience:
            self.stopped = "converged"
        elif step >= self.rule.max_steps:
            self.stopped = "max_steps"
        return improved

    def cap(self, step: int) -> None:
        """Mark the run stopped at the cap (a run without evaluations)."""
        if self.stopped is None and step >= self.rule.max_steps:
            self.stopped = "max_steps"

    def why(self) -> str:
        """One line for the summary: why training stopped, and where the best model is."""
        r = self.rule
        if self.stopped == "converged":
            return (
                f"converged: no recall@{r.val_k} gain above {r.min_delta} in {r.patience}"
                f" evaluations ({r.patience * r.eval_every} steps);"
                f" best {self.best:.4f} at step {self.best_step}"
            )
        if self.stopped == "max_steps":
            best = "" if self.best is None else f"; best {self.best:.4f} at step {self.best_step}"
            return f"reached the cap of {r.max_steps} steps{best}"
        return "running"
