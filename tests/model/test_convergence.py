"""The validation split, its recall probe and the patience rule of `crops train`."""

from __future__ import annotations

import numpy as np
import pytest

from crops.model.convergence import EarlyStopping, RecallProbe, StopRule, split_by_query
from crops.model.data import TrainingData


def _data(n_queries: int = 20, docs_per_query: int = 4) -> TrainingData:
    texts = [f"video {i}" for i in range(n_queries * docs_per_query)]
    groups = []
    for q in range(n_queries):
        docs = np.arange(q * docs_per_query, (q + 1) * docs_per_query)
        labels = np.array([5, 4, 2, 1] if q % 5 else [3, 2, 1, 1])  # every 5th: no positive
        groups.append((docs, labels))
    return TrainingData(
        queries=[f"query {q}" for q in range(n_queries)],
        groups=groups,
        texts=texts,
        video_ids=np.arange(len(texts)),
    )


def test_split_holds_out_only_queries_with_a_positive_and_is_order_free():
    data = _data()
    train, held = split_by_query(data, 0.2, seed=3, min_label=4)
    assert len(held) == 4
    assert all(data.groups[q][1].max() >= 4 for q in held)
    assert set(train.queries).isdisjoint(data.queries[q] for q in held)
    assert len(train.queries) + len(held) == len(data.queries)
    # the same queries whatever the order of the samples
    order = list(reversed(range(len(data.queries))))
    shuffled = TrainingData(
        queries=[data.queries[q] for q in order],
        groups=[data.groups[q] for q in order],
        texts=data.texts,
        video_ids=data.video_ids,
    )
    _, held2 = split_by_query(shuffled, 0.2, seed=3, min_label=4)
    assert {shuffled.queries[q] for q in held2} == {data.queries[q] for q in held}
    _, other_seed = split_by_query(data, 0.2, seed=4, min_label=4)
    assert len(other_seed) == 4


def test_split_keeps_a_training_query_and_refuses_a_bad_fraction():
    data = _data(n_queries=2)
    train, held = split_by_query(data, 0.9, seed=0, min_label=4)
    assert len(train.queries) == 1 and len(held) == 1
    assert split_by_query(data, 0.0, seed=0, min_label=4) == (data, [])
    with pytest.raises(ValueError, match="validation fraction"):
        split_by_query(data, 1.0, seed=0, min_label=4)


class _TableModel:
    """A model given as embedding tables: the probe's arithmetic, checked by hand."""

    def __init__(self, queries: dict[str, np.ndarray], docs: dict[str, np.ndarray]) -> None:
        self.table = {"query": queries, "doc": docs}

    def embed(self, texts, side, batch_size=0):
        return np.stack([self.table[side][t] for t in texts]).astype(np.float32)


def test_recall_probe_counts_positives_in_the_top_k():
    data = _data(n_queries=5)
    held = [1, 2]  # positives: docs 4, 5 (query 1) and 8, 9 (query 2)
    probe = RecallProbe(data, held, k=2, min_label=4)
    dim = len(data.texts)
    eye = np.eye(dim)
    docs = {t: eye[i] for i, t in enumerate(data.texts)}
    # query 1 points at both its positives; query 2 at one positive and one other video
    queries = {"query 1": eye[4] + eye[5], "query 2": eye[8] + eye[0] * 2}
    assert probe.recall(_TableModel(queries, docs)) == pytest.approx((1.0 + 0.5) / 2)


def test_recall_probe_cap_keeps_every_positive():
    data = _data(n_queries=10)
    probe = RecallProbe(data, [1, 2, 3], k=5, min_label=4, max_docs=8, seed=0)
    assert len(probe.docs) == 8
    kept = set(probe.docs.tolist())
    assert {4, 5, 8, 9, 12, 13} <= kept


@pytest.mark.parametrize(("k", "expected"), [(2, 0.0), (5, 0.5), (6, 1.0)])
def test_recall_probe_breaks_ties_by_corpus_position(k, expected):
    data = _data(n_queries=5)
    probe = RecallProbe(data, [1], k=k, min_label=4)  # positives: docs 4 and 5
    same = np.ones(3)  # every doc scores the same: the first k positions are the top k
    docs = {t: same for t in data.texts}
    assert probe.recall(_TableModel({"query 1": same}, docs)) == pytest.approx(expected)


def _by_hand(probe: RecallProbe, model) -> float:
    """Recall@k from text embeddings and a full stable sort (ties by position)."""
    docs = model.embed(probe.texts, side="doc")
    queries = model.embed(probe.queries, side="query")
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, : probe.k]
    return float(
        np.mean(
            [len(p & set(r.tolist())) / len(p) for p, r in zip(probe.positives, order, strict=True)]
        )
    )


def test_recall_probe_hashes_hash_tower_texts_once(monkeypatch):
    import crops.model.encoders as encoders

    data = _data(n_queries=20)
    _, held = split_by_query(data, 0.3, seed=0, min_label=4)
    model = encoders.build_dual_encoder("hash", dim=16, seed=1)
    expected = _by_hand(RecallProbe(data, held, k=3, min_label=4), model)
    corpus = model.doc_tower.bucket_table(data.texts)  # what the trainer hands over
    probes = [
        RecallProbe(data, held, k=3, min_label=4),
        RecallProbe(data, held, k=3, min_label=4, corpus=corpus),
        RecallProbe(data, held, k=3, min_label=4, corpus=corpus, max_docs=30, seed=2),
    ]
    capped = _by_hand(probes[2], model)

    def no_text_hashing(*args):
        raise AssertionError("a text was hashed n-gram by n-gram again")

    model.train()
    monkeypatch.setattr(encoders, "_bucket_ids", no_text_hashing)
    for probe, want in zip(probes, (expected, expected, capped), strict=True):
        for _ in range(2):  # the tables are made once, at the first evaluation
            assert probe.recall(model) == pytest.approx(want, abs=1e-12)
    assert model.training  # left in its training mode
    assert 0 < expected < 1  # an untrained model: neither all found nor none
    with pytest.raises(ValueError, match="corpus table has 3 texts"):
        RecallProbe(data, held, corpus=model.doc_tower.bucket_table(data.texts[:3]))


def test_early_stopping_patience_and_cap():
    stop = EarlyStopping(rule=StopRule(patience=2, min_delta=0.01, max_steps=1000))
    assert stop.update(100, 0.30)
    assert stop.update(200, 0.40)
    assert stop.update(300, 0.405)  # the new best, kept, but within min_delta: no gain
    assert stop.stopped is None and stop.stale == 1
    assert not stop.update(400, 0.39)
    assert stop.stopped == "converged"
    assert (stop.best, stop.best_step) == (0.405, 300)
    assert "best 0.4050 at step 300" in stop.why()

    # small steps that add up: each under min_delta, but past the mark together
    creeping = EarlyStopping(rule=StopRule(patience=2, min_delta=0.01, max_steps=1000))
    for step, recall in ((100, 0.30), (200, 0.306), (300, 0.312), (400, 0.318), (500, 0.324)):
        creeping.update(step, recall)
    assert creeping.stopped is None and creeping.best_step == 500
    restored = EarlyStopping(**stop.model_dump())
    assert restored == stop

    capped = EarlyStopping(rule=StopRule(patience=5, max_steps=200))
    capped.update(100, 0.1)
    capped.update(200, 0.2)
    assert capped.stopped == "max_steps"
    assert "cap of 200 steps" in capped.why()

    fixed = EarlyStopping(rule=StopRule(patience=None, val_fraction=0, max_steps=50))
    fixed.cap(49)
    assert fixed.stopped is None
    fixed.cap(50)
    assert fixed.stopped == "max_steps"


def test_stop_rule_refuses_patience_without_validation():
    with pytest.raises(ValueError, match="patience needs a validation split"):
        StopRule(patience=3, val_fraction=0)
