"""Training data and batches: groups by query, no video in two groups, deterministic, sharded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crops.model.collective import global_labels
from crops.model.data import BM25Negatives, GroupBatcher, load_training_data


def test_every_sample_is_loaded_with_its_text(training_data, mined_fast) -> None:
    import polars as pl

    out, _ = mined_fast
    samples = pl.read_parquet(out / "samples.parquet")
    assert training_data.n_samples == samples.height
    assert training_data.quarantined == 0
    assert len(training_data.queries) == samples["query"].n_unique()
    assert all(t for t in training_data.texts)


def test_batches_hold_query_groups_without_shared_videos(training_data) -> None:
    batcher = GroupBatcher(training_data, queries_per_batch=16, group_size=6, seed=3)
    n = 0
    for batch in batcher.epoch(0):
        n += 1
        assert len(set(batch.doc_index.tolist())) == len(batch.doc_index)  # no video twice
        assert len(set(batch.query_index.tolist())) == len(batch.query_index)
        for i, q in enumerate(batch.query_index):
            own = batch.owner == i
            assert 2 <= own.sum() <= 6
            docs, labels = training_data.groups[q]
            truth = dict(zip(docs.tolist(), labels.tolist(), strict=True))
            assert batch.labels[i, own].tolist() == [truth[d] for d in batch.doc_index[own]]
            # other groups' docs: label 0, or the query's own label when it is one of its
            # known samples too (never a known positive posing as a negative)
            others = batch.doc_index[~own]
            want = [truth.get(int(d), 0) for d in others]
            assert batch.labels[i, ~own].tolist() == want
            # the best sample not taken by an earlier group of the batch is always in
            earlier = set(batch.doc_index[batch.owner < i].tolist())
            free = [lab for d, lab in truth.items() if d not in earlier]
            assert batch.labels[i, own].max() == max(free)
    assert n == batcher.batches_per_epoch


def test_batches_are_a_function_of_seed_and_epoch(training_data) -> None:
    a = list(GroupBatcher(training_data, seed=1).epoch(2))
    b = list(GroupBatcher(training_data, seed=1).epoch(2))
    c = list(GroupBatcher(training_data, seed=1).epoch(3))
    assert [x.doc_index.tolist() for x in a] == [x.doc_index.tolist() for x in b]
    assert [x.doc_index.tolist() for x in a] != [x.doc_index.tolist() for x in c]


def test_shards_partition_the_batch_and_global_labels_match(training_data) -> None:
    batch = next(GroupBatcher(training_data, queries_per_batch=7, seed=0).epoch(0))
    shards = [batch.shard(r, 3) for r in range(3)]
    assert sorted(sum((s.query_index.tolist() for s in shards), [])) == sorted(
        batch.query_index.tolist()
    )
    assert sum(len(s.docs) for s in shards) == len(batch.docs)
    q_pad = max(len(s.queries) for s in shards)
    d_pad = max(len(s.docs) for s in shards)
    g = global_labels(batch, 3, q_pad, d_pad)
    # undo the padding and compare with the batch's own label matrix (in shard order)
    rows = [r * q_pad + i for r, s in enumerate(shards) for i in range(len(s.queries))]
    cols = [c * d_pad + j for c, s in enumerate(shards) for j in range(len(s.docs))]
    order_q = [q for s in shards for q in s.query_index]
    order_d = [d for s in shards for d in s.doc_index]
    qpos = {q: i for i, q in enumerate(batch.query_index)}
    dpos = {d: j for j, d in enumerate(batch.doc_index)}
    expected = batch.labels[np.ix_([qpos[q] for q in order_q], [dpos[d] for d in order_d])]
    assert (g[np.ix_(rows, cols)] == expected).all()
    pad_rows = sorted(set(range(3 * q_pad)) - set(rows))
    assert (g[pad_rows] == -1).all()


def test_bm25_hard_negatives_are_not_the_querys_samples(training_data) -> None:
    hard = BM25Negatives(training_data, depth=30)
    rng = np.random.default_rng(0)
    for q in range(0, len(training_data.queries), 37):
        neg = hard.negatives(q, 5, rng)
        assert not set(neg.tolist()) & set(training_data.groups[q][0].tolist())
    batcher = GroupBatcher(training_data, group_size=4, hard_negatives=hard, n_hard=3)
    batch = next(batcher.epoch(0))
    assert (batch.labels == 0).sum() > 0


def test_bad_batch_settings_are_refused(training_data) -> None:
    with pytest.raises(ValueError, match="group_size"):
        GroupBatcher(training_data, group_size=1)


def test_samples_without_their_videos_are_counted(mined_fast, tmp_path: Path) -> None:
    out, world = mined_fast
    data = load_training_data(out / "samples.parquet", [world / "videos.parquet"])
    assert data.quarantined > 0  # the llm samples' synthetic videos were not given


def test_model_hard_negatives_come_from_the_models_own_index(training_data) -> None:
    from crops.model.data import ModelNegatives
    from crops.model.encoders import DualEncoder, HashTower

    model = DualEncoder(HashTower(dim=16, buckets=1024, hidden=16))
    hard = ModelNegatives(model, training_data, depth=20)
    docs = model.embed(training_data.texts, side="doc")
    rng = np.random.default_rng(0)
    for q in range(0, len(training_data.queries), 41):
        neg = hard.negatives(q, 3, rng)
        assert not set(neg.tolist()) & set(training_data.groups[q][0].tolist())
        # every negative scores at least as high as the 21st-best document overall
        qv = model.embed([training_data.queries[q]], side="query")[0]
        scores = docs @ qv
        assert scores[neg].min() >= np.sort(scores)[-21] - 1e-5


def _crowded_data(seed: int = 0):
    """Queries that share most of their videos: the batcher's groups conflict often."""
    from crops.model.data import TrainingData

    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(30):
        docs = rng.choice(40, size=int(rng.integers(3, 20)), replace=False)
        labels = rng.integers(0, 6, size=len(docs))
        order = np.lexsort((docs, -labels))
        groups.append((docs[order].astype(np.int64), labels[order].astype(np.int64)))
    return TrainingData(
        queries=[f"q{i}" for i in range(30)],
        groups=groups,
        texts=[f"video {d}" for d in range(40)],
        video_ids=np.arange(40),
    )


def _sequential_groups(batcher: GroupBatcher, cands: np.ndarray, keys: np.ndarray):
    """The documented rule, one query and one sample at a time: the reference."""
    used: set[int] = set()
    out: list[tuple[int, list[int]]] = []
    k = 0
    for q in cands:
        s, e = batcher.starts[q], batcher.starts[q + 1]
        docs, labels = batcher.docs[s:e], batcher.labels[s:e]
        key = keys[k : k + e - s] / batcher.level_weight[s:e]
        k += e - s
        if len(out) == batcher.qpb:
            continue
        free = [int(i) for i in np.argsort(key, kind="stable") if int(docs[i]) not in used]
        if not free or max(labels[i] for i in free) <= 0:
            continue
        best = max(labels[i] for i in free)
        first = next(i for i in free if labels[i] == best)
        group = [first] + [i for i in free if i != first][: batcher.group_size - 1]
        used.update(int(docs[i]) for i in group)
        out.append((int(q), [int(docs[i]) for i in group]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_groups_follow_the_sequential_rule(seed: int) -> None:
    """The fixed point over all candidates at once gives the one-query-at-a-time groups."""
    data = _crowded_data(seed)
    batcher = GroupBatcher(data, queries_per_batch=8, group_size=4, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        cands = rng.permutation(30)[:20]
        keys = rng.exponential(size=batcher._n_samples(cands))
        kept, take, first, docs, labels, pos = batcher._groups(cands, keys)
        got = []
        for c in np.flatnonzero(kept):
            mine = np.flatnonzero(take & (pos == c))
            mine = mine[np.argsort(~first[mine], kind="stable")]  # best first, then by key
            got.append((int(cands[c]), docs[mine].tolist()))
        assert got == _sequential_groups(batcher, cands, keys)


def test_crowded_batches_keep_their_invariants() -> None:
    data = _crowded_data(1)
    batcher = GroupBatcher(data, queries_per_batch=8, group_size=4, seed=5)
    for batch in batcher.epoch(0):
        assert len(set(batch.doc_index.tolist())) == len(batch.doc_index)
        assert (np.diff(batch.owner) >= 0).all()  # docs grouped by query, in query order
        for i, q in enumerate(batch.query_index):
            truth = dict(zip(*(a.tolist() for a in data.groups[q]), strict=True))
            own = batch.owner == i
            labels = batch.labels[i, own]
            assert labels[0] == labels.max() > 0  # the best sample first, a positive
            want = [truth.get(int(d), 0) for d in batch.doc_index]
            assert batch.labels[i].tolist() == want  # own and known labels, else 0


def test_hard_negatives_never_repeat_a_doc(training_data) -> None:
    hard = BM25Negatives(training_data, depth=30)
    batcher = GroupBatcher(
        training_data, queries_per_batch=12, group_size=4, hard_negatives=hard, n_hard=3
    )
    for batch in list(batcher.epoch(0))[:5]:
        assert len(set(batch.doc_index.tolist())) == len(batch.doc_index)
        assert (np.diff(batch.owner) >= 0).all()
        for i, q in enumerate(batch.query_index):
            own = training_data.groups[q][0].tolist()
            extra = [d for d in batch.doc_index[batch.owner == i] if d not in own]
            assert len(extra) <= 3 and all(
                batch.labels[i, batch.doc_index == d] == 0 for d in extra
            )
