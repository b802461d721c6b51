"""The row-sparse hash-encoder step (crops.model.sparse): RowAdam's arithmetic, the loss curve
against the dense AdamW update, two gloo workers against one process, and resuming its state."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crops.model.data import GroupBatcher
from crops.model.encoders import DualEncoder, HashTower, build_dual_encoder
from crops.model.losses import HInfoNCELoss
from crops.model.sparse import DenseStep, RowAdam, SparseStep, make_step, touched_rows


@pytest.fixture(autouse=True)
def one_thread():
    """Small steps: a second intra-op thread only spins against the other tests' processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_touched_rows_remaps_ids() -> None:
    ids = np.array([7, 3, 7, 0, 9, 3])
    rows, position = touched_rows(ids, 10)
    assert rows.tolist() == [0, 3, 7, 9]
    assert (rows[position] == ids).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_row_adam_is_adamw_when_every_row_is_touched(weight_decay: float, fused: bool) -> None:
    torch.manual_seed(0)
    ours = torch.randn(6, 4)
    theirs = torch.nn.Parameter(ours.clone())
    row_adam = RowAdam(ours, lr=1e-2, weight_decay=weight_decay)
    row_adam.fused = fused and row_adam.fused  # torch's fused kernel, or the same arithmetic
    adamw = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=weight_decay)
    for _ in range(5):
        grad = torch.randn(6, 4)
        perm = torch.randperm(6)  # any row order
        row_adam.step(perm, grad[perm])
        theirs.grad = grad
        adamw.step()
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-7)


def test_row_adam_leaves_untouched_rows_alone() -> None:
    weight = torch.randn(5, 3)
    before = weight.clone()
    adam = RowAdam(weight, lr=0.1, weight_decay=0.1)
    adam.step(torch.tensor([1, 3]), torch.ones(2, 3))
    assert torch.equal(weight[[0, 2, 4]], before[[0, 2, 4]])
    assert not torch.equal(weight[[1, 3]], before[[1, 3]])
    assert adam.exp_avg[[0, 2, 4]].abs().sum() == 0


def _steps(data, update: str, seed: int, steps: int, **options) -> tuple[np.ndarray, object]:
    torch.manual_seed(0)
    model = DualEncoder(HashTower(dim=32, buckets=2**14, hidden=64, seed=seed))
    runner = make_step(model, HInfoNCELoss(), data, lr=1e-3, weight_decay=1e-4, update=update)
    batcher = GroupBatcher(data, queries_per_batch=16, group_size=4, seed=0)
    batcher.batches_per_epoch = steps
    return np.array([runner.step(b) for b in batcher.epoch(0)]), runner


def test_sparse_update_follows_the_dense_loss_curve(training_data) -> None:
    """Fixed seed, the same 60 batches: the row-sparse update's loss curve matches the dense
    AdamW update's within noise (closer than two dense runs that differ in the model seed)."""
    steps, window = 60, 10
    dense, dense_runner = _steps(training_data, "dense", seed=0, steps=steps)
    sparse, sparse_runner = _steps(training_data, "sparse", seed=0, steps=steps)
    other, _ = _steps(training_data, "dense", seed=1, steps=steps)
    assert isinstance(dense_runner, DenseStep) and isinstance(sparse_runner, SparseStep)
    assert dense[0] == pytest.approx(sparse[0], rel=1e-6)  # the same first step

    def means(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, window).mean(axis=1)

    gap = np.abs(means(sparse) - means(dense)).max()
    noise = np.abs(means(other) - means(dense)).max()
    assert gap <= noise, (gap, noise)
    assert means(sparse)[-1] < means(sparse)[0] - 3  # it learns, as the dense update does


def _small() -> DualEncoder:
    return DualEncoder(HashTower(dim=16, buckets=4096, hidden=16))


def test_the_sparse_step_resumes_from_its_state(training_data, tmp_path: Path) -> None:
    batches = list(GroupBatcher(training_data, queries_per_batch=8, group_size=4).epoch(0))[:6]

    def runner(model):
        loss_fn = HInfoNCELoss()
        return make_step(model, loss_fn, training_data, lr=1e-2, weight_decay=1e-4)

    straight = runner(_small())
    for b in batches:
        straight.step(b)

    first = runner(_small())
    for b in batches[:3]:
        first.step(b)
    first.module.save(tmp_path / "model")
    torch.save(
        {"optimizer": first.state_dict(), "loss": first.loss_fn.state_dict()}, tmp_path / "t.pt"
    )
    state = torch.load(tmp_path / "t.pt", weights_only=False)
    resumed = runner(DualEncoder.load(tmp_path / "model"))
    resumed.loss_fn.load_state_dict(state["loss"])
    resumed.load_state_dict(state["optimizer"])
    for b in batches[3:]:
        resumed.step(b)
    for (name, a), (_, b) in zip(
        straight.module.state_dict().items(), resumed.module.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_separate_towers_train_their_own_tables(training_data) -> None:
    model = build_dual_encoder("hash", dim=16, shared=False)
    before = copy.deepcopy(model.state_dict())
    runner = make_step(model, HInfoNCELoss(), training_data, lr=1e-2, weight_decay=0.0)
    assert isinstance(runner, SparseStep) and len(runner.rows) == 2
    batch = next(GroupBatcher(training_data, queries_per_batch=8, group_size=4).epoch(0))
    runner.step(batch)
    after = model.state_dict()
    for name in ("query.embedding.weight", "doc.embedding.weight"):
        changed = (after[name] != before[name]).any(dim=1)
        assert 0 < int(changed.sum()) < len(changed)  # some rows, not the whole table


def _sparse_worker(rank: int, world: int, port: int, data, batches, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = DualEncoder(HashTower(dim=16, buckets=512, hidden=16, seed=7))
    runner = make_step(
        model, HInfoNCELoss(), data, lr=1e-2, weight_decay=1e-4, rank=rank, world=world
    )
    losses = [runner.step(b) for b in batches]
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    np.savez(f"{out}.{rank}.npz", losses=np.array(losses), **params)
    dist.destroy_process_group()


def test_two_sparse_workers_train_as_one_process(training_data, tmp_path: Path) -> None:
    """Two gloo workers, each encoding half of every batch and exchanging only touched rows,
    make the single-process updates, and their replicas stay identical."""
    batches = list(GroupBatcher(training_data, queries_per_batch=6, group_size=4, seed=2).epoch(0))
    batches = batches[:4]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "w")
    mp.spawn(_sparse_worker, args=(2, port, training_data, batches, out), nprocs=2, join=True)
    got = [dict(np.load(f"{out}.{r}.npz")) for r in range(2)]
    for name in got[0]:
        np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)

    model = DualEncoder(HashTower(dim=16, buckets=512, hidden=16, seed=7))
    runner = make_step(model, HInfoNCELoss(), training_data, lr=1e-2, weight_decay=1e-4)
    losses = [runner.step(b) for b in batches]
    np.testing.assert_allclose(got[0]["losses"], losses, rtol=1e-5)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(got[0][name], p.detach().numpy(), rtol=1e-4, atol=1e-5)
