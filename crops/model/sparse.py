"""One training step of the dual encoder, and the row-sparse update of hash-tower tables.

A hash tower's parameters are mostly its embedding table (65,537 x 128 = 8.4 M floats); the
MLP on top has 33 k. A step of 32 queries x 8 docs looks up about 70,000 bucket ids, which
touch about 5,300 distinct rows. Updating the table densely (AdamW over every row, zeroing a
dense gradient, and with several workers a DDP all-reduce of that 33 MB gradient) made the
step about ten times the work the batch needs. Measured on the README's mined data (one
core, one step of 256 docs): dense AdamW 90 ms; ``EmbeddingBag(sparse=True)`` + torch's
``SparseAdam`` 47 ms, because its sparse gradient holds one 128-float row per *lookup*
(70,000 rows, 36 MB) that backward writes and SparseAdam then coalesces; the touched-rows
step of this module 17-20 ms (bench/bench_train.py part c has the figures).

:class:`SparseStep`, for models whose towers are all hash towers:

1. Inputs are pre-hashed (:class:`HashFeatures`: every video text and query hashed once per
   worker into a CSR :class:`~crops.model.encoders.BucketTable`, gathered per batch).
2. Per tower, the distinct rows the batch touches are found without sorting (a mark over the
   bucket range and a cumulative sum), and the ids are remapped into them. Those rows, copied
   into a leaf tensor, are the table the forward uses (``BucketIds.weight``): backward yields
   their dense gradient, rows x dim, and nothing the size of the table.
3. Across workers (no DDP): each worker all-gathers every worker's (rows, gradient) and adds
   them, in rank order, into the union of the rows: the bytes of the touched rows, never the
   table's; the other encoder parameters' gradients (the MLP) ride in the same all-gather and
   are summed the same way (two collectives a step: row counts, then that buffer; plus one
   all-gather of the embeddings for the loss). DDP was not used: with a dense table it all-reduces
   the whole table every step, and with ``sparse=True`` its gradient is the one-row-per-lookup
   tensor above, which costs more than this whole step before anything is sent. Gradients
   are sums over the workers of the global-batch loss's gradient through their own shard:
   the full-batch gradient, the same on every worker. The loss's temperature sees the whole
   global batch on every worker already, so it needs no reduction. Every worker applies the
   same update to the same rows, so the replicas stay identical (they start identical: the
   same seed or checkpoint, and rank 0's parameters are broadcast once).
4. :class:`RowAdam` updates those rows only (AdamW's arithmetic, lazily: a row's moments decay
   on the steps that touch it, as torch's ``SparseAdam``; the decoupled weight decay applies
   to the touched rows). The other parameters and the temperature use AdamW.

Every worker still builds the whole batch and updates the union of the touched rows, so a
second worker on a 2-core machine adds much less than a core's worth of speed (the plain
one-process step is the bound; bench/bench_train.py part c measures both).

:class:`DenseStep` is the same step with DDP and one AdamW over every parameter: the path for
Hugging Face towers, and for hash towers the dense reference (``update="dense"`` of
:func:`make_step`) that the sparse update is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from crops.model.collective import gather, global_labels, pad_rows, sync_loss_grads
from crops.model.data import Batch, TrainingData
from crops.model.encoders import BucketIds, BucketTable, DualEncoder, HashTower

Update = Literal["sparse", "dense"]
STATE_FORMAT = "crops-sparse-step/v1"


class HashFeatures:
    """Bucket-id tables of the training corpus (video texts) and queries, per hash tower
    (one pair when the towers share hashing settings), built once per worker."""

    def __init__(self, model: DualEncoder, data: TrainingData) -> None:
        towers = (model.query_tower, model.doc_tower)
        if not all(isinstance(t, HashTower) for t in towers):
            raise TypeError("HashFeatures needs hash towers on both sides")
        q_tower, d_tower = towers
        self.docs: BucketTable = d_tower.bucket_table(data.texts)
        self.queries: BucketTable = q_tower.bucket_table(data.queries)

    def inputs(self, shard: Batch) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """((query ids, offsets), (doc ids, offsets)) of a shard, as int64 numpy arrays."""
        return self.queries.take(shard.query_index), self.docs.take(shard.doc_index)


def touched_rows(ids: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in ascending order, each id's position among them): the ids remapped
    into the rows, in O(len(ids) + n_rows), no sort."""
    mark = np.zeros(n_rows, dtype=bool)
    mark[ids] = True
    rows = np.flatnonzero(mark)
    position = np.cumsum(mark, dtype=np.int64) - 1
    return rows, position[ids]


class RowAdam:
    """AdamW on given rows of one table per step (lazy: untouched rows keep their moments).

    ``step(rows, grad)``: ``rows`` distinct int64 row indices, ``grad`` their (len(rows), dim)
    gradient. The arithmetic is torch's AdamW (bias corrections by this table's step count),
    done by its fused kernel on the gathered rows where torch has one (about 20 % faster than
    the same arithmetic in separate ops; the gathers and scatters of the rows are the rest).
    """

    def __init__(
        self,
        weight: Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.weight, self.lr, self.betas, self.eps = weight, lr, betas, eps
        self.weight_decay = weight_decay
        self.steps = torch.zeros((), dtype=torch.float32, device=weight.device)
        self.exp_avg = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        self.fused = hasattr(torch, "_fused_adamw_")

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor) -> None:
        weight = self.weight.detach()
        p = weight.index_select(0, rows)
        m = self.exp_avg.index_select(0, rows)  # contiguous copies: the kernel needs them
        v = self.exp_avg_sq.index_select(0, rows)
        self.steps += 1
        beta1, beta2 = self.betas
        if self.fused:
            torch._fused_adamw_(
                [p],
                [grad],
                [m],
                [v],
                [],
                [self.steps],
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
        else:  # torch without the fused kernel: the same arithmetic
            t = float(self.steps)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p.mul_(1 - self.lr * self.weight_decay)
            denom = v.sqrt().div_((1 - beta2**t) ** 0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - beta1**t))
        weight.index_copy_(0, rows, p)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)

    def state_dict(self) -> dict[str, Any]:
        return {"step": int(self.steps), "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.fill_(int(state["step"]))
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])


def _ddp(model: nn.Module) -> nn.Module:
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _pads(batch: Batch, world: int) -> tuple[int, int]:
    """Rows per worker of the gathered queries and docs: the largest shard's counts."""
    q_pad = -(-len(batch.queries) // world)
    d_pad = int(np.bincount(batch.owner % world, minlength=world).max())
    return q_pad, d_pad


def _shard_loss(q: Tensor, d: Tensor, loss_fn: nn.Module, batch: Batch, rank, world, device):
    """The global batch's loss from this worker's shard embeddings (others' gathered)."""
    q_pad, d_pad = _pads(batch, world)
    if world == 1:
        q_all, d_all = q, d
    else:  # one all-gather for both sides: [worker][q_pad + d_pad rows]
        both = gather(torch.cat([pad_rows(q, q_pad), pad_rows(d, d_pad)]), rank, world)
        both = both.view(world, q_pad + d_pad, -1)
        q_all = both[:, :q_pad].reshape(world * q_pad, -1)
        d_all = both[:, q_pad:].reshape(world * d_pad, -1)
    labels = torch.as_tensor(global_labels(batch, world, q_pad, d_pad), device=device)
    return loss_fn(q_all, d_all, labels)


def _batch_loss(model: Callable, loss_fn: nn.Module, batch: Batch, inputs, rank, world, device):
    """The global batch's loss from this worker's shard, encoded by `model`."""
    local = batch.shard(rank, world) if world > 1 else batch
    q, d = model(*inputs(local))
    return _shard_loss(q, d, loss_fn, batch, rank, world, device)


class DenseStep:
    """DDP (when world > 1) and one AdamW over every parameter: today's update for Hugging
    Face towers, and the dense reference for hash towers (pre-hashed inputs when given)."""

    def __init__(
        self,
        model: DualEncoder,
        loss_fn: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        rank: int = 0,
        world: int = 1,
        device: str | torch.device = "cpu",
        features: HashFeatures | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.loss_fn, self.rank, self.world, self.device = loss_fn, rank, world, device
        self.features = features
        if wrap is None and world > 1:
            wrap = _ddp
        model = model.to(device)
        self.ddp = wrap(model) if wrap is not None else model
        self.module: DualEncoder = getattr(self.ddp, "module", self.ddp)
        params = [*self.ddp.parameters(), *loss_fn.parameters()]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def _inputs(self, shard: Batch):
        if self.features is None:
            return shard.queries, shard.docs
        (qi, qo), (di, do) = self.features.inputs(shard)
        dev = self.device
        q = BucketIds(torch.from_numpy(qi).to(dev), torch.from_numpy(qo).to(dev))
        return q, BucketIds(torch.from_numpy(di).to(dev), torch.from_numpy(do).to(dev))

    def step(self, batch: Batch) -> float:
        """One optimizer step on the global batch; returns its loss."""
        loss = _batch_loss(
            self.ddp, self.loss_fn, batch, self._inputs, self.rank, self.world, self.device
        )
        self.opt.zero_grad(set_to_none=True)
        (loss * self.world).backward()  # DDP averages over the workers: undo it
        sync_loss_grads(self.loss_fn, self.world)
        self.opt.step()
        return float(loss.detach())

    def train(self, mode: bool = True) -> None:
        self.ddp.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


class SparseStep:
    """Hash towers: pre-hashed inputs, the touched rows of each table trained by
    :class:`RowAdam`, the rest by AdamW, gradients summed across workers without DDP."""

    def __init__(
        self,
        model: DualEncoder,
        loss_fn: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        rank: int = 0,
        world: int = 1,
        device: str | torch.device = "cpu",
        features: HashFeatures,
    ) -> None:
        self.module = model.to(device)
        self.loss_fn, self.rank, self.world, self.device = loss_fn, rank, world, device
        self.shared = model.shared
        self.features = features
        self.towers: list[HashTower] = [model.query_tower]  # type: ignore[list-item]
        if not self.shared:
            self.towers.append(model.doc_tower)  # type: ignore[arg-type]
        tables = {id(t.embedding.weight) for t in self.towers}
        self.dense = [p for p in model.parameters() if id(p) not in tables]
        if world > 1:  # replicas start identical, as DDP makes them
            with torch.no_grad():
                for p in model.parameters():
                    dist.broadcast(p.data, src=0)
        self.rows = [
            RowAdam(t.embedding.weight, lr=lr, weight_decay=weight_decay) for t in self.towers
        ]
        params = [*self.dense, *loss_fn.parameters()]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self._leaves: list[tuple[Tensor, Tensor]] = []

    def _inputs(self, shard: Batch) -> tuple[BucketIds, BucketIds]:
        (qi, qo), (di, do) = self.features.inputs(shard)
        dev = self.device
        self._leaves = []

        def leaf(tower: HashTower, ids: np.ndarray) -> tuple[Tensor, Tensor]:
            rows, position = touched_rows(ids, tower.buckets + 1)
            rows_t = torch.from_numpy(rows).to(dev)
            sub = tower.embedding.weight.detach().index_select(0, rows_t).requires_grad_()
            self._leaves.append((rows_t, sub))
            return sub, torch.from_numpy(position).to(dev)

        qo_t, do_t = torch.from_numpy(qo).to(dev), torch.from_numpy(do).to(dev)
        if self.shared:
            sub, position = leaf(self.towers[0], np.concatenate([qi, di]))
            return (
                BucketIds(position[: len(qi)], qo_t, sub),
                BucketIds(position[len(qi) :], do_t, sub),
            )
        q_sub, q_pos = leaf(self.towers[0], qi)
        d_sub, d_pos = leaf(self.towers[1], di)
        return BucketIds(q_pos, qo_t, q_sub), BucketIds(d_pos, do_t, d_sub)

    def step(self, batch: Batch) -> float:
        """One optimizer step on the global batch; returns its loss."""
        if self.world > 1:
            return self._step_with_workers(batch)
        q_ids, d_ids = self._inputs(batch)
        loss = _shard_loss(
            *self.module(q_ids, d_ids), self.loss_fn, batch, self.rank, self.world, self.device
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._step_rows()
        return float(loss.detach())

    def _step_with_workers(self, batch: Batch) -> float:
        """The step with several workers: each runs the MLP heads on its shard; the workers
        all-gather, in one collective, the heads' parameter gradients and the gradients of
        their shard's pooled rows (texts x dim, a few hundred KB); every worker then runs the
        embedding-bag backward over the whole batch and the same row update."""
        world, rank, dev = self.world, self.rank, self.device
        q_tower, d_tower = self.module.query_tower, self.module.doc_tower
        q_ids, d_ids = self._inputs(batch)  # the whole batch's rows: every worker updates them
        pooled = (
            q_tower.pool(q_ids.ids, q_ids.offsets, q_ids.weight),
            d_tower.pool(d_ids.ids, d_ids.offsets, d_ids.weight),
        )
        keep = batch.shard_index(rank, world)
        mine = [
            p.detach()[torch.from_numpy(k).to(dev)].requires_grad_()
            for p, k in zip(pooled, keep, strict=True)
        ]
        loss = _shard_loss(
            q_tower.head(mine[0]), d_tower.head(mine[1]), self.loss_fn, batch, rank, world, dev
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        pads = _pads(batch, world)
        parts = [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=dev)
            for p in self.dense
        ]
        for m, pad in zip(mine, pads, strict=True):
            grad = m.grad if m.grad is not None else torch.zeros_like(m)
            parts.append(pad_rows(grad, pad).reshape(-1))
        flat = torch.cat(parts)
        bufs = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(bufs, flat)
        n_dense = sum(p.numel() for p in self.dense)
        total = torch.stack([b[:n_dense] for b in bufs]).sum(0)  # rank order everywhere
        offset = 0
        for p in self.dense:
            p.grad = total[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        grads = [torch.zeros_like(p) for p in pooled]
        for src, b in enumerate(bufs):
            offset = n_dense
            for side, (k, pad) in enumerate(zip(batch.shard_index(src, world), pads, strict=True)):
                dim = grads[side].shape[1]
                rows = b[offset : offset + pad * dim].view(pad, dim)[: len(k)]
                grads[side][torch.from_numpy(k).to(dev)] = rows
                offset += pad * dim
        torch.autograd.backward(list(pooled), grads)  # into the touched rows' leaves
        self.opt.step()
        self._step_rows()
        return float(loss.detach())

    def _step_rows(self) -> None:
        """RowAdam on each table's touched rows, with their gradient from backward."""
        for table, (rows, sub) in zip(self.rows, self._leaves, strict=True):
            table.step(rows, sub.grad if sub.grad is not None else torch.zeros_like(sub))
        self._leaves = []

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "adamw": self.opt.state_dict(),
            "rows": [r.state_dict() for r in self.rows],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"optimizer state is not {STATE_FORMAT}: a checkpoint of another update"
            )
        self.opt.load_state_dict(state["adamw"])
        for r, s in zip(self.rows, state["rows"], strict=True):
            r.load_state_dict(s)


def is_hash_model(model: DualEncoder) -> bool:
    return isinstance(model.query_tower, HashTower) and isinstance(model.doc_tower, HashTower)


def make_step(
    model: DualEncoder,
    loss_fn: nn.Module,
    data: TrainingData,
    *,
    lr: float,
    weight_decay: float,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    update: Update = "sparse",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> DenseStep | SparseStep:
    """The training step for `model`: :class:`SparseStep` for hash towers (``update="dense"``:
    the DDP + AdamW reference on the same pre-hashed inputs), :class:`DenseStep` with texts
    for Hugging Face towers. ``wrap`` wraps a dense model for data parallelism (DDP)."""
    if update not in ("sparse", "dense"):
        raise ValueError(f"update must be 'sparse' or 'dense', got {update!r}")
    options: dict[str, Any] = dict(
        lr=lr, weight_decay=weight_decay, rank=rank, world=world, device=device
    )
    if not is_hash_model(model):
        return DenseStep(model, loss_fn, wrap=wrap, **options)
    features = HashFeatures(model, data)
    if update == "dense":
        return DenseStep(model, loss_fn, wrap=wrap, features=features, **options)
    return SparseStep(model, loss_fn, features=features, **options)
